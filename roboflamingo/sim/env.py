"""``TabletopEnv``: a CALVIN-like PyBullet tabletop with CALVIN's observations and action semantics.

## Description
A Franka Panda (``pybullet_data/franka_panda/panda.urdf``) in front of a desk with a shelf ("slider"
surfaces) behind a sliding door, a drawer, a button that toggles a green LED, a switch that turns a
light bulb on, and three blocks (red, blue, pink). The furniture layout, colours and block sizes come
from a scene file ``envs/scenes/<A|B|C|D>.yaml`` (see ``roboflamingo.sim.scene``).

## Action Space
``Box(-1, 1, (7,), float32)``: CALVIN's relative action. ``[0:3]`` moves an internal *target* TCP
position by ``a * 0.02`` m, ``[3:6]`` moves the target euler-xyz orientation by ``a * 0.05`` rad, and
``[6]`` drives the gripper (``>= 0`` opens, ``< 0`` closes). The target accumulates the deltas (it is
not the measured TCP; CALVIN's ``use_target_pose``), is clipped to the workspace, and is reached
through inverse kinematics on the TCP. One step = 8 physics steps of 1/240 s (30 Hz control).

## Observation Space
``Dict`` with CALVIN's keys:

| key | dtype, shape | meaning |
|---|---|---|
| rgb_static | uint8 (S, S, 3) | static camera (S = ``static_size``, 200) |
| rgb_gripper | uint8 (G, G, 3) | wrist camera (G = ``gripper_size``, 84) |
| robot_obs | float64 (15,) | TCP xyz, TCP euler xyz, gripper width, 7 arm joints, last gripper action |
| scene_obs | float64 (24,) | door, drawer, button, switch joints, lightbulb, LED, red/blue/pink pose (6 each) |

With ``render=False`` both images are zeros (scripted rollouts read state only).

## Rewards and Episode End
With ``reset(options={"task": name})`` the reward is 1 and ``terminated`` is True once the task
oracle reports ``name`` completed since the reset; otherwise the reward is 0 and the episode never
terminates. ``truncated`` becomes True after ``max_episode_steps`` steps (360).

## Starting State
``reset(seed=...)`` samples one of CALVIN's 192 symbolic initial states and places the blocks with
jitter; ``reset(options={"robot_obs": ..., "scene_obs": ...})`` restores that exact state (the
robot from its joint angles, as CALVIN does; the TCP fields are ignored).

## Info
``info`` is ``get_info()``: a snapshot of robot and scene state (joints, lights, block poses,
velocities and contacts) that ``TaskOracle`` compares between a subtask's start and now.

## Version History
- v0: initial version.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pkgutil
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet
import pybullet_data
from gymnasium import spaces
from pybullet_utils.bullet_client import BulletClient

from roboflamingo.robots import calvin as T
from roboflamingo.sim.config import EnvConfig
from roboflamingo.sim.egl import prepare_egl
from roboflamingo.sim.scene import (
    BLOCK_NAMES,
    block_urdf,
    desk_urdf,
    load_scene,
    workspace_bounds,
    write_urdf,
)

ARM_JOINTS = list(range(7))
FINGER_JOINTS = [9, 10]
HAND_LINK = 8
TCP_LINK = 11
PANDA_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
PANDA_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
ARM_FORCE = 200.0
ARM_MAX_VEL = 2.0
GRIPPER_OPEN_FORCE = 20.0
GRIPPER_CLOSE_FORCE = 60.0
DOOR_FRICTION = 4.0  # velocity-controlled joints hold where they are put (calvin_env doors)
BUTTON_SPRING = 4.0
TABLE_JOINTS = ("base__slide", "base__drawer", "base__button", "base__switch")
LED_ON, LED_OFF = [0.1, 0.9, 0.1, 1.0], [0.95, 0.95, 0.95, 1.0]
BULB_ON, BULB_OFF = [1.0, 0.9, 0.2, 1.0], [0.95, 0.95, 0.95, 1.0]


def panda_urdf() -> str:
    """pybullet_data's Panda drawn with its collision meshes.

    The visual meshes have ~130k triangles, which dominates software rendering (Mesa's llvmpipe
    under EGL, or the TinyRenderer); the collision hulls (~3.5k) look simpler and draw many times
    faster. Dynamics and collisions are those of the original file.
    """
    meshes = os.path.join(pybullet_data.getDataPath(), "franka_panda", "meshes")
    with open(os.path.join(pybullet_data.getDataPath(), "franka_panda", "panda.urdf")) as f:
        text = f.read()
    return (text.replace("package://meshes/visual/", meshes + "/collision/")
            .replace("package://meshes/collision/", meshes + "/collision/"))


GL_SCISSOR_TEST = 0x0C11


def _gl_library() -> ctypes.CDLL | None:
    """The process's OpenGL entry points (glvnd's libOpenGL, else libGL), or None where neither loads."""
    for name in ("libOpenGL.so.0", "libGL.so.1"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@contextlib.contextmanager
def _quiet_stdout():
    """PyBullet's EGL plugin prints from C; keep it off stdout so a command's last JSON line stays last."""
    try:
        fd = os.dup(1)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(fd, 1)
    finally:
        os.close(fd)


class TabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, cfg: EnvConfig | None = None, render_mode: str | None = "rgb_array", **overrides: Any):
        if cfg is None:
            cfg = EnvConfig(**overrides)
        elif overrides:
            cfg = EnvConfig(**{**cfg.__dict__, **overrides})
        self.cfg = cfg
        self.render_mode = render_mode
        self.scene = load_scene(cfg.scene)
        self.action_repeat = cfg.physics_freq // cfg.control_freq
        s, g = cfg.static_size, cfg.gripper_size
        self.observation_space = spaces.Dict({
            T.RGB_STATIC: spaces.Box(0, 255, (s, s, 3), np.uint8),
            T.RGB_GRIPPER: spaces.Box(0, 255, (g, g, 3), np.uint8),
            # finite bounds: positions are metres near the desk, angles radians, joints within limits
            T.ROBOT_OBS: spaces.Box(-10.0, 10.0, (T.ROBOT_OBS_DIM,), np.float64),
            T.SCENE_OBS: spaces.Box(-10.0, 10.0, (T.SCENE_OBS_DIM,), np.float64),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (T.ACTION_DIM,), np.float32)
        self.ws_low, self.ws_high = workspace_bounds(self.scene)
        self._p: BulletClient | None = None
        self.renderer_used = "none"
        self._build()
        self._task: str | None = None
        self._start_info: dict | None = None
        self._steps = 0

    # ------------------------------------------------------------------ world construction
    def _build(self) -> None:
        p = BulletClient(connection_mode=pybullet.DIRECT)
        self._p = p
        p.setAdditionalSearchPath(pybullet_data.getDataPath())
        p.setGravity(0, 0, -9.8)
        p.setTimeStep(1.0 / self.cfg.physics_freq)
        p.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
        self._egl_plugin = -1
        if self.cfg.render and self.cfg.renderer in ("auto", "egl"):
            self._egl_plugin = self._load_egl()
            if self._egl_plugin < 0 and self.cfg.renderer == "egl":
                p.disconnect()
                raise RuntimeError("env.renderer=egl: PyBullet's eglRenderer plugin did not load on this machine "
                                   "(use renderer=tiny or renderer=auto)")
        self.renderer_used = ("egl" if self._egl_plugin >= 0 else "tiny") if self.cfg.render else "none"
        self._camera_args = self._renderer_args()
        # The EGL plugin clears its whole 1024x768 window before every image, however small: 1-2 ms per
        # image on llvmpipe here. Its GL context is current on this thread once loaded, so a scissor box
        # (set per image in _camera) confines the clear to the image; the image itself is drawn and
        # read back from the same bottom-left corner, so it is unchanged.
        self._gl = _gl_library() if self._egl_plugin >= 0 else None
        if self._gl is not None:
            self._gl.glEnable(GL_SCISSOR_TEST)
        sc, t = self.scene, self.scene.table_height

        floor_vis = p.createVisualShape(pybullet.GEOM_BOX, halfExtents=[2, 2, 0.005], rgbaColor=sc.raw["floor_color"])
        floor_col = p.createCollisionShape(pybullet.GEOM_BOX, halfExtents=[2, 2, 0.005])
        self.floor = p.createMultiBody(0, floor_col, floor_vis, basePosition=[0, 0, -0.005])
        base = sc.robot_base
        ped_h = base[2]
        ped_vis = p.createVisualShape(pybullet.GEOM_BOX, halfExtents=[0.1, 0.1, ped_h / 2], rgbaColor=[0.3, 0.3, 0.32, 1])
        ped_col = p.createCollisionShape(pybullet.GEOM_BOX, halfExtents=[0.1, 0.1, ped_h / 2])
        self.pedestal = p.createMultiBody(0, ped_col, ped_vis, basePosition=[base[0], base[1], ped_h / 2])

        self.table = p.loadURDF(write_urdf(desk_urdf(sc)), useFixedBase=True)
        self.table_links = {"base_link": -1}
        self.table_joints = {}
        for j in range(p.getNumJoints(self.table)):
            info = p.getJointInfo(self.table, j)
            self.table_links[info[12].decode()] = j
            self.table_joints[info[1].decode()] = j
        self._apply_texture()

        self._robot_orn = p.getQuaternionFromEuler([0, 0, math.pi / 2])
        self.robot = p.loadURDF(write_urdf(panda_urdf()), basePosition=base.tolist(),
                                baseOrientation=self._robot_orn, useFixedBase=True)
        # PyBullet resets a base by its inertial frame, which is not panda_link0's origin
        self._robot_base_pose = p.getBasePositionAndOrientation(self.robot)
        for j in FINGER_JOINTS:
            p.changeDynamics(self.robot, j, lateralFriction=1.5, spinningFriction=0.001)
        for link in (HAND_LINK, *FINGER_JOINTS):  # a dark hand stands out in the wrist camera
            p.changeVisualShape(self.robot, link, rgbaColor=[0.25, 0.25, 0.28, 1.0])
        # keeps the two fingers symmetric, like the gear constraint of calvin_env's Panda
        gear = p.createConstraint(self.robot, 9, self.robot, 10, pybullet.JOINT_GEAR, [1, 0, 0], [0, 0, 0], [0, 0, 0])
        p.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=50)

        self.blocks = {}
        for name, spec in sc.blocks.items():
            self.blocks[name] = p.loadURDF(write_urdf(block_urdf(spec)), basePosition=[0, 0, t + 0.5])
        self.body_names = {self.floor: "floor", self.pedestal: "pedestal", self.table: "table", self.robot: "robot"}
        self.body_names.update({uid: name for name, uid in self.blocks.items()})
        self._link_names = {self.table: {v: k for k, v in self.table_links.items()}}

        cam = sc.raw["cameras"]["static"]
        self._static_view = p.computeViewMatrix(cam["look_from"], cam["look_at"], cam["up"])
        self._static_proj = p.computeProjectionMatrixFOV(cam["fov"], 1.0, 0.01, 10.0)
        self._gripper_proj = p.computeProjectionMatrixFOV(75, 1.0, 0.01, 2.0)
        self._clean_state = p.saveState()

    def _renderer_args(self) -> dict[str, Any]:
        """``getCameraImage`` arguments shared by both cameras for the renderer in use."""
        if self._egl_plugin < 0:
            return {"renderer": pybullet.ER_TINY_RENDERER, "flags": pybullet.ER_NO_SEGMENTATION_MASK}
        # The EGL plugin's default pass first draws a 4096x4096 shadow map on every call: on Mesa's
        # llvmpipe, clearing it alone costs ~20 ms per image whatever the image size. The projective
        # texture pass draws no shadow map, so no cast shadows, under the same light otherwise. It
        # looks textures up by world position through (view, proj), which we make a top-down map of
        # the desk top so that a scene's desk texture covers it once, fixed to the desk in every camera.
        (x0, x1), (y0, y1) = self.scene.raw["table"]["x"], self.scene.raw["table"]["y"]
        sx, sy = 1.0 / (x1 - x0), 1.0 / (y1 - y0)
        world_to_uv = [sx, 0, 0, 0, 0, sy, 0, 0, 0, 0, 0, 0, -x0 * sx, -y0 * sy, 0, 1]  # column-major, as GL
        identity = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
        return {"renderer": pybullet.ER_BULLET_HARDWARE_OPENGL,
                "flags": pybullet.ER_NO_SEGMENTATION_MASK | pybullet.ER_USE_PROJECTIVE_TEXTURE,
                "projectiveTextureView": identity, "projectiveTextureProj": world_to_uv}

    def _load_egl(self) -> int:
        loader = pkgutil.get_loader("eglRenderer")
        if loader is None:
            return -1
        prepare_egl()
        with _quiet_stdout():
            return self._p.loadPlugin(loader.get_filename(), "_eglRendererPlugin")

    def _apply_texture(self) -> None:
        kind = self.scene.raw["table"]["texture"]
        if kind == "none":
            return
        from roboflamingo.sim.scene import write_texture

        tex = self._p.loadTexture(write_texture(kind, self.scene.raw["table"]["color"]))
        # white, so the texture shows its own two shades rather than being multiplied by the colour
        self._p.changeVisualShape(self.table, -1, textureUniqueId=tex, rgbaColor=[1, 1, 1, 1])

    # ------------------------------------------------------------------ state
    def _set_lights(self, lightbulb: int, led: int) -> None:
        self.lightbulb, self.led = int(lightbulb), int(led)
        p = self._p
        p.changeVisualShape(self.table, self.table_links["light_link"], rgbaColor=BULB_ON if self.lightbulb else BULB_OFF)
        p.changeVisualShape(self.table, self.table_links["led_link"], rgbaColor=LED_ON if self.led else LED_OFF)

    def _table_q(self, joint: str) -> float:
        return float(self._p.getJointState(self.table, self.table_joints[joint])[0])

    def _set_state(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> None:
        p = self._p
        p.restoreState(self._clean_state)
        # Contact manifolds (with their warm-start impulses) survive restoreState and would make a
        # reset depend on the previous episode; separating every body once drops them all.
        for k, uid in enumerate(self.blocks.values()):
            p.resetBasePositionAndOrientation(uid, [20.0 + 2 * k, 20.0, 0.0], [0, 0, 0, 1])
        p.resetBasePositionAndOrientation(self.robot, [-20.0, -20.0, 0.0], [0, 0, 0, 1])
        p.performCollisionDetection()
        p.resetBasePositionAndOrientation(self.robot, *self._robot_base_pose)
        for joint, q in zip(TABLE_JOINTS, scene_obs[T.TABLE_JOINTS]):
            p.resetJointState(self.table, self.table_joints[joint], float(q))
        for joint in ("base__slide", "base__drawer", "base__switch"):
            p.setJointMotorControl2(self.table, self.table_joints[joint], pybullet.VELOCITY_CONTROL,
                                    targetVelocity=0, force=DOOR_FRICTION)
        p.setJointMotorControl2(self.table, self.table_joints["base__button"], pybullet.POSITION_CONTROL,
                                targetPosition=0, force=BUTTON_SPRING)
        self._set_lights(round(float(scene_obs[T.LIGHTBULB])), round(float(scene_obs[T.GREEN_LIGHT])))
        self._button_pressed = self._table_q("base__button") > self.scene.button_geometry()["travel"] / 2
        for k, name in enumerate(BLOCK_NAMES):
            pose = scene_obs[T.block_pose(k)]
            p.resetBasePositionAndOrientation(self.blocks[name], pose[:3].tolist(), p.getQuaternionFromEuler(pose[3:6]))
            p.resetBaseVelocity(self.blocks[name], [0, 0, 0], [0, 0, 0])
        joints = np.asarray(robot_obs[T.ARM_JOINT_STATES], dtype=float)
        for j, q in zip(ARM_JOINTS, joints):
            p.resetJointState(self.robot, j, float(q))
        half = float(np.clip(robot_obs[T.GRIPPER_WIDTH], 0.0, 0.08)) / 2
        for j in FINGER_JOINTS:
            p.resetJointState(self.robot, j, half)
        self.gripper_action = 1.0 if robot_obs[T.GRIPPER_ACTION] >= 0 else -1.0
        self._command_arm(joints)
        self._command_gripper(self.gripper_action)
        pos, orn = self._tcp_pose()
        self.target_pos = np.array(pos)
        self.target_euler = np.array(p.getEulerFromQuaternion(orn))
        # contacts for get_info() without moving anything (CALVIN steps once; we keep the state exact)
        p.performCollisionDetection()

    def _command_arm(self, q: np.ndarray) -> None:
        for j, target in zip(ARM_JOINTS, q):
            self._p.setJointMotorControl2(self.robot, j, pybullet.POSITION_CONTROL, targetPosition=float(target),
                                          force=ARM_FORCE, maxVelocity=ARM_MAX_VEL)

    def _command_gripper(self, g: float) -> None:
        width, force = (0.04, GRIPPER_OPEN_FORCE) if g >= 0 else (0.0, GRIPPER_CLOSE_FORCE)
        for j in FINGER_JOINTS:
            self._p.setJointMotorControl2(self.robot, j, pybullet.POSITION_CONTROL, targetPosition=width, force=force)

    def _tcp_pose(self) -> tuple[tuple, tuple]:
        ls = self._p.getLinkState(self.robot, TCP_LINK, computeForwardKinematics=True)
        return ls[4], ls[5]

    def _ik(self, pos: np.ndarray, euler: np.ndarray) -> np.ndarray:
        p = self._p
        rest = self.scene.neutral_joints.tolist() + [0.02, 0.02]
        q = p.calculateInverseKinematics(self.robot, TCP_LINK, pos.tolist(), p.getQuaternionFromEuler(euler.tolist()),
                                         lowerLimits=[-7] * 9, upperLimits=[7] * 9, jointRanges=[7] * 9,
                                         restPoses=rest, maxNumIterations=50, residualThreshold=1e-4)
        return np.clip(np.array(q[:7]), PANDA_LOWER, PANDA_UPPER)

    def _update_scene_logic(self) -> None:
        # lightbulb: on exactly while the switch is past its midpoint; LED: toggled on each press
        sw = self._table_q("base__switch") > self.scene.switch_geometry()["travel"] / 2
        pressed = self._table_q("base__button") > self.scene.button_geometry()["travel"] / 2
        led = self.led ^ int(pressed and not self._button_pressed)
        self._button_pressed = pressed
        if int(sw) != self.lightbulb or led != self.led:
            self._set_lights(int(sw), led)

    # ------------------------------------------------------------------ observations
    def robot_obs(self) -> np.ndarray:
        p = self._p
        pos, orn = self._tcp_pose()
        q = [s[0] for s in p.getJointStates(self.robot, ARM_JOINTS + FINGER_JOINTS)]
        return np.array([*pos, *p.getEulerFromQuaternion(orn), q[7] + q[8], *q[:7], self.gripper_action], dtype=np.float64)

    def scene_obs(self) -> np.ndarray:
        p = self._p
        obs = [self._table_q(j) for j in TABLE_JOINTS] + [float(self.lightbulb), float(self.led)]
        for name in BLOCK_NAMES:
            pos, orn = p.getBasePositionAndOrientation(self.blocks[name])
            obs += [*pos, *p.getEulerFromQuaternion(orn)]
        return np.array(obs, dtype=np.float64)

    def _camera(self, view, proj, size: int) -> np.ndarray:
        if self._gl is not None:
            self._gl.glScissor(0, 0, size, size)
        _, _, rgba, _, _ = self._p.getCameraImage(size, size, view, proj, **self._camera_args)
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3].copy()

    def gripper_view(self) -> list[float]:
        p = self._p
        ls = p.getLinkState(self.robot, HAND_LINK, computeForwardKinematics=True)
        rot = np.array(p.getMatrixFromQuaternion(ls[5])).reshape(3, 3)
        hand = np.array(ls[4])
        # a wrist camera beside the hand, looking along the fingers (hand z) at the grasp point
        eye = hand + rot @ np.array([0.07, 0.0, 0.02])
        target = hand + rot @ np.array([0.0, 0.0, 0.16])
        return p.computeViewMatrix(eye.tolist(), target.tolist(), (rot @ np.array([-1.0, 0.0, 0.0])).tolist())

    def render_static(self, size: int | None = None) -> np.ndarray:
        return self._camera(self._static_view, self._static_proj, size or self.cfg.static_size)

    def render_gripper(self, size: int | None = None) -> np.ndarray:
        return self._camera(self.gripper_view(), self._gripper_proj, size or self.cfg.gripper_size)

    def get_obs(self) -> dict[str, np.ndarray]:
        s, g = self.cfg.static_size, self.cfg.gripper_size
        if self.cfg.render:
            static, gripper = self.render_static(), self.render_gripper()
        else:
            static, gripper = np.zeros((s, s, 3), np.uint8), np.zeros((g, g, 3), np.uint8)
        return {T.RGB_STATIC: static, T.RGB_GRIPPER: gripper, T.ROBOT_OBS: self.robot_obs(), T.SCENE_OBS: self.scene_obs()}

    def _contacts(self, uid: int) -> set[tuple[str, str]]:
        out = set()
        for c in self._p.getContactPoints(bodyA=uid):
            other = c[2]
            name = self.body_names.get(other, str(other))
            link = self._link_names.get(other, {}).get(c[4], "base_link" if c[4] == -1 else f"link{c[4]}")
            out.add((name, link))
        return out

    def get_info(self) -> dict[str, Any]:
        """Robot and scene state in CALVIN's ``info`` layout, with names instead of PyBullet ids."""
        p = self._p
        pos, orn = self._tcp_pose()
        movable = {}
        for name, uid in self.blocks.items():
            bpos, born = p.getBasePositionAndOrientation(uid)
            lin, ang = p.getBaseVelocity(uid)
            movable[name] = {"current_pos": tuple(bpos), "current_orn": tuple(born), "lin_vel": tuple(lin),
                             "ang_vel": tuple(ang), "contacts": self._contacts(uid)}
        return {
            "robot_info": {"tcp_pos": tuple(pos), "tcp_orn": tuple(orn), "gripper_action": self.gripper_action,
                           "contacts": self._contacts(self.robot)},
            "scene_info": {
                "doors": {j: self._table_q(j) for j in TABLE_JOINTS},
                "lights": {"lightbulb": self.lightbulb, "led": self.led},
                "movable_objects": movable,
            },
        }

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        robot_obs, scene_obs = options.get("robot_obs"), options.get("scene_obs")
        if robot_obs is None or scene_obs is None:
            from roboflamingo.sim.chains import initial_state_to_obs, sample_initial_state

            state = sample_initial_state(self.np_random)
            rand_robot, rand_scene = initial_state_to_obs(state, self.scene, rng=self.np_random)
            robot_obs = rand_robot if robot_obs is None else robot_obs
            scene_obs = rand_scene if scene_obs is None else scene_obs
        robot_obs = np.asarray(robot_obs, dtype=np.float64)
        scene_obs = np.asarray(scene_obs, dtype=np.float64)
        if robot_obs.shape != (T.ROBOT_OBS_DIM,) or scene_obs.shape != (T.SCENE_OBS_DIM,):
            raise ValueError(f"reset options: robot_obs must have shape (15,) and scene_obs (24,), "
                             f"got {robot_obs.shape} and {scene_obs.shape}")
        self._set_state(robot_obs, scene_obs)
        self._task = options.get("task")
        if self._task is not None:
            from roboflamingo.sim.tasks import TaskOracle

            self._oracle = TaskOracle.default()
            self._oracle.check_names([self._task], source="reset options['task']")
        self._steps = 0
        info = self.get_info()
        self._start_info = info
        return self.get_obs(), info

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(T.ACTION_DIM), -1.0, 1.0)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {action}")
        self.target_pos, self.target_euler = T.integrate_action(self.target_pos, self.target_euler, a,
                                                                self.ws_low, self.ws_high)
        self.gripper_action = T.GRIPPER_OPEN if a[T.GRIPPER_INDEX] >= 0 else T.GRIPPER_CLOSE
        self._command_arm(self._ik(self.target_pos, self.target_euler))
        self._command_gripper(self.gripper_action)
        for _ in range(self.action_repeat):
            self._p.stepSimulation()
        self._update_scene_logic()
        self._steps += 1
        info = self.get_info()
        reward, terminated = 0.0, False
        if self._task is not None and self._oracle.successful(self._start_info, info, {self._task}):
            reward, terminated = 1.0, True
        truncated = self._steps >= self.cfg.max_episode_steps
        return self.get_obs(), reward, terminated, truncated, info

    def render(self):
        return self.render_static()

    def close(self):
        if self._p is not None:
            with _quiet_stdout():
                if self._egl_plugin >= 0:
                    self._p.unloadPlugin(self._egl_plugin)
                self._p.disconnect()
            self._p = None
