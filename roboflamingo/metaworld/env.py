"""Meta-World as a Gymnasium environment with LeRobot's conventions and our observation keys.

One ``MetaWorldEnv`` runs one task at a time (``reset(options={"task": ...})`` switches) and follows
LeRobot's ``lerobot/envs/metaworld.py``, which fixes the conventions the field's published numbers
use: the task's parameters from ``metaworld.MT1(task, seed=42).train_tasks[0]``, object and goal
positions drawn anew at every reset, camera ``corner2`` moved to ``(0.75, 0.075, 0.7)`` and its image
flipped on both axes, the state as the first 4 of Meta-World's 39 observation entries (hand xyz,
gripper opening), episodes of ``max_path_length`` (500) steps and success from ``info["success"]``.

Observation (the Sawyer's description, ``roboflamingo/robots/metaworld_sawyer.yaml``)::

    <camera>        uint8 (size, size, 3)  ``corner2`` unless configured otherwise
    state           float64 (4,)           hand x, y, z (m), gripper opening in [0, 1]
    metaworld_obs   float64 (39,)          Meta-World's full observation (object poses, goal):
                                           privileged, for the scripted experts, and the policy's
                                           state with ``env.state=full``

Seeding: Meta-World's own ``reset(seed=...)`` ignores the seed and draws positions from the global
NumPy RNG. Here ``reset(seed=s)`` seeds the task's own generator (Meta-World's ``seed(s)`` with
``seeded_rand_vec``, as LeRobot's env does), so the same seed gives the same episode in any process,
whatever else used NumPy, and the global RNG is never touched; ``reset()`` without a seed continues
that generator.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np

from roboflamingo.metaworld.config import MetaWorldConfig
from roboflamingo.robot import Camera, RobotDescription, StateSpec

FULL_OBS = "metaworld_obs"
FULL_OBS_DIM = 39
STATE_DIM = 4
ACTION_DIM = 4
ROBOT_NAME = "metaworld_sawyer"
# LeRobot's corner2: its env moves camera index 2 (corner2 in every v3 model) here.
CORNER2 = "corner2"
CORNER2_POS = (0.75, 0.075, 0.7)
INSTALL_HINT = "Meta-World is not installed: pip install -e '.[metaworld]' (with -c constraints.txt)"


def sawyer_robot(cfg: MetaWorldConfig | None = None) -> RobotDescription:
    """The Sawyer's description with the configured camera, image size and state (``env.state``)."""
    from roboflamingo.robots import load_robot

    cfg = cfg or MetaWorldConfig()
    robot = load_robot(ROBOT_NAME)
    state = full_state(robot.state) if cfg.state == "full" else robot.state
    return replace(robot, cameras=(Camera(cfg.camera, cfg.size, cfg.size),), state=state)


def full_state(hand: StateSpec) -> StateSpec:
    """Meta-World's 39-d observation as a state: this step's hand and gripper (bounded as ``hand``)
    and two object poses (position, MuJoCo's w-first quaternion; zeros where a task has one object),
    the same 18 entries of the previous step, then the goal position (unbounded: each task has its own
    range)."""
    def pose(obj: str) -> list[str]:
        return [f"{obj}.{c}" for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]

    now = [*hand.names, *pose("obj1"), *pose("obj2")]
    free = [None] * (len(now) - hand.dim)
    low, high = [*hand.low, *free], [*hand.high, *free]
    names = [*now, *(f"prev.{n}" for n in now), "goal.x", "goal.y", "goal.z"]
    if len(names) != FULL_OBS_DIM:
        raise AssertionError(f"full state names {len(names)} entries, Meta-World observes {FULL_OBS_DIM}")
    return StateSpec(names=tuple(names), key=FULL_OBS, low=(*low, *low, None, None, None),
                     high=(*high, *high, None, None, None))


def import_metaworld():
    """``metaworld``, with MuJoCo rendering offscreen through EGL unless ``MUJOCO_GL`` says otherwise."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import metaworld
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return metaworld


@cache
def benchmark_task(task: str, seed: int) -> Any:
    """``MT1(task, seed).train_tasks[0]``: the task's parameters as LeRobot's env sets them (building
    MT1 resets a scratch env 50 times, ~1 s, so once per process and task)."""
    metaworld = import_metaworld()
    return metaworld.MT1(task, seed=seed).train_tasks[0]


def expert_policy(task: str) -> Any:
    """A fresh instance of Meta-World's scripted policy for ``task`` (``metaworld.policies``)."""
    import_metaworld()
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


class MetaWorldEnv(gym.Env):
    """One Meta-World task at a time; see the module docstring for observations and seeding.

    ``step`` returns ``terminated`` on success (``info["success"]``, also as LeRobot's
    ``info["is_success"]``) and ``truncated`` after ``max_path_length`` steps, after which the
    episode must be reset. Actions outside [-1, 1] are clipped (Meta-World clips them too); a
    non-finite or misshapen action is refused before anything moves.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task: str | None = None, cfg: MetaWorldConfig | None = None, **overrides: Any):
        from roboflamingo.metaworld.tasks import resolve_tasks

        cfg = cfg or MetaWorldConfig()
        if overrides:
            cfg = MetaWorldConfig(**{**cfg.__dict__, **overrides})
        self.cfg = cfg
        self.robot = sawyer_robot(cfg)
        self.render_mode = "rgb_array"
        self.task: str | None = None
        self.seed_used: int | None = None
        self._env: Any = None
        self._flags_set = False
        self._obs: dict[str, np.ndarray] | None = None
        self._done = False
        self._resolve = lambda name: resolve_tasks([name], source="metaworld task")
        size, cam = cfg.size, cfg.camera
        self.observation_space = gym.spaces.Dict({
            cam: gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
            self.robot.state.key: gym.spaces.Box(np.array(self.robot.state.low), np.array(self.robot.state.high),
                                                 dtype=np.float64),
            FULL_OBS: gym.spaces.Box(-np.inf, np.inf, (FULL_OBS_DIM,), np.float64),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        import_metaworld()
        if task is not None:
            self.set_task(task)

    # -- tasks ----------------------------------------------------------------------------------------

    @property
    def max_path_length(self) -> int:
        self._require_task()
        return int(self._env.max_path_length)

    def set_task(self, task: str) -> None:
        """Switch to ``task`` (a name as ``tasks.resolve_tasks`` accepts it); the next reset starts it."""
        (name,) = self._resolve(task)
        if name == self.task:
            return
        if self._env is not None:
            self._env.close()
            self._env = None
        metaworld = import_metaworld()
        if self.cfg.render != "off":
            from roboflamingo.sim.egl import prepare_egl

            prepare_egl()  # triton's LLVM before Mesa's, as for the tabletop's EGL (sim/egl.py)
        cls = metaworld.env_dict.ALL_V3_ENVIRONMENTS[name]
        env = cls(render_mode="rgb_array", camera_name=self.cfg.camera, width=self.cfg.size, height=self.cfg.size)
        cameras = [env.model.camera(i).name for i in range(env.model.ncam)]
        if self.cfg.camera not in cameras:
            env.close()
            raise ValueError(f"env.camera: '{self.cfg.camera}' is not a camera of {name} (cameras: {cameras})")
        env.set_task(benchmark_task(name, self.cfg.benchmark_seed))
        if self.cfg.camera == CORNER2:
            env.model.cam_pos[env.model.camera(CORNER2).id] = CORNER2_POS
        if self.cfg.render == "fast" or self.cfg.render == "off":
            # Read when the offscreen buffer is made, i.e. at the first render: set it before.
            env.model.vis.quality.offsamples = 0
        env.reset()
        env._freeze_rand_vec = False  # LeRobot's env: positions are drawn anew at every reset ...
        env.seeded_rand_vec = True  # ... from the task's generator (seed()), not the global NumPy RNG
        self._env, self.task, self._done, self._obs = env, name, False, None
        self._flags_set = False

    def _require_task(self) -> None:
        if self._env is None:
            raise RuntimeError("MetaWorldEnv has no task: pass task= or reset(options={'task': name})")

    # -- stepping -------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        if "task" in options:
            self.set_task(options.pop("task"))
        if options:
            raise ValueError(f"MetaWorldEnv.reset: unknown options {sorted(options)} (only 'task')")
        self._require_task()
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(int(seed))
            self.seed_used = int(seed)
        raw, _ = self._env.reset()
        self._done = False
        obs = self._observe(raw)
        return obs, {"task": self.task, "seed": self.seed_used, "success": False, "is_success": False}

    def step(self, action: Any):
        self._require_task()
        if self._done:
            raise RuntimeError(f"{self.task}: the episode reached max_path_length "
                               f"({self._env.max_path_length} steps); reset before stepping again")
        a = self.robot.check_action(action, where=f"{self.task} action")
        raw, reward, _terminated, truncated, info = self._env.step(np.clip(a, -1.0, 1.0))
        success = bool(info.get("success", 0.0))
        self._done = bool(truncated) or self._env.curr_path_length >= self._env.max_path_length
        info = {**info, "task": self.task, "success": success, "is_success": success}
        return self._observe(raw), float(reward), success, self._done, info

    def _observe(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        raw = np.asarray(raw, dtype=np.float64)
        self._obs = {
            self.cfg.camera: self._image() if self.cfg.render != "off" else
            np.zeros((self.cfg.size, self.cfg.size, 3), np.uint8),
            self.robot.state.key: raw[:STATE_DIM].copy(),
            FULL_OBS: raw,
        }
        return self._obs

    # -- rendering ------------------------------------------------------------------------------------

    def _image(self) -> np.ndarray:
        viewer = self._env.mujoco_renderer._get_viewer("rgb_array")
        if not self._flags_set:
            self._flags_set = True
            if self.cfg.render != "lerobot":
                import mujoco

                for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                    viewer.scn.flags[flag] = 0
        # Gymnasium makes a viewer's GL context current only when it was created; with a second
        # environment in the process, this one would draw into the other's context.
        viewer.make_context_current()
        image = self._env.render()
        if self.cfg.camera == CORNER2:
            image = np.flip(image, (0, 1))  # LeRobot: corner2's image is upside down and mirrored
        return np.ascontiguousarray(image)

    def render(self) -> np.ndarray:
        """The current camera image (drawn with the fast settings when ``render=off``)."""
        self._require_task()
        return self._image()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            self.task = None
