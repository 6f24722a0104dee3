"""``ScriptedExpert``: waypoint demonstrations for all 34 tasks, acting exactly like a policy.

The expert reads only what a policy sees about the state (``robot_obs``, ``scene_obs``) plus the scene
geometry from the scene YAML, plans a short list of TCP waypoints for the task when a subtask starts
(``reset()``), and emits CALVIN's 7-d relative actions towards them. It integrates its own actions
into the same target pose the simulator accumulates (``use_target_pose``), so it never overshoots a
waypoint because the arm lags behind the target.

Conventions: the TCP points down with euler ``(pi, 0, yaw)``; the fingers close along world
``(sin yaw, -cos yaw)``, so a block with yaw ``theta`` is grasped across its width with
``yaw = theta (mod pi)``. Yaws are kept within ``3pi/4`` of the neutral yaw so joint 7 stays in range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from roboflamingo.robots import calvin as T
from roboflamingo.sim.instructions import task_for_instruction
from roboflamingo.sim.scene import BLOCK_NAMES, Scene, load_scene, workspace_bounds

OPEN, CLOSE = T.GRIPPER_OPEN, T.GRIPPER_CLOSE
GRASP_DEPTH = 0.003  # TCP below the block centre when grasping (fingertips end ~8 mm above the surface)
ROTATE_BY = np.radians(80)  # the oracle needs 60 deg; 80 leaves room for slip and finishes sooner
PUSH_BY = 0.14  # the oracle needs 0.10 m
FINGER_HALF = 0.012  # half thickness of a finger across its thin side
FINGERS_HALF_WIDTH = 0.024  # half extent of the two closed fingers side by side
HOME_TOL = 0.02  # a subtask starting this close to the neutral TCP position needs no homing


class PlaceOn(Enum):
    """Where a held block is put down."""

    SHELF = "slider"  # the free side of the shelf behind the sliding door
    DRAWER = "drawer"
    BLOCK = "stack"  # on the nearest block on the table


FREE_SPACE_TOL = 0.02  # m: a waypoint this loose is a way point in free space, not a contact


@dataclass
class Waypoint:
    pos: np.ndarray
    yaw: float
    grip: float
    speed: float = 0.02  # largest target displacement per step (m); 0.02 = a full-scale action
    tol: float = 0.012  # how close the measured TCP must come before moving on (m)
    settle: int = 0  # extra steps to stay once reached (gripper closing, objects settling)
    max_steps: int = 0  # 0: derived from the distance


class ScriptedExpert:
    """Satisfies the ``Policy`` protocol: ``reset()``, ``step(obs, instruction) -> action``."""

    def __init__(self, scene: str | Scene = "D", task: str | None = None, noise: float = 0.0, seed: int | None = None,
                 home: bool = False):
        """home: begin every subtask by returning to the neutral pose (open hand, travel height first)
        unless already there or holding a block, then plan the task as from a neutral start."""
        self.scene = load_scene(scene) if isinstance(scene, str) else scene
        self.ws_low, self.ws_high = workspace_bounds(self.scene)
        self.neutral_yaw = float(self.scene.raw["robot"]["neutral_tcp"][T.TCP_ORN][2])
        self.T = self.scene.table_height
        self.z_up = self.T + 0.14
        self.noise = float(noise)
        self.home = bool(home)
        self.neutral_pos = np.array(self.scene.raw["robot"]["neutral_tcp"][T.TCP_POS], dtype=float)
        self.rng = np.random.default_rng(seed)
        self._fixed_task = None
        if task is not None:
            self.set_task(task)
        self.reset()

    # ------------------------------------------------------------------ Policy protocol
    def set_task(self, name: str) -> None:
        from roboflamingo.sim.tasks import TaskOracle

        TaskOracle.default().check_names([name], source="ScriptedExpert.set_task")
        self._fixed_task = name
        self.reset()

    def reset(self) -> None:
        self._plan: list[Waypoint] | None = None
        self._task: str | None = None
        self._homing = False
        self._i = 0
        self._count = 0
        self._reached = 0

    @property
    def done(self) -> bool:
        """True once every waypoint of the current plan has been reached."""
        return self._plan is not None and self._i >= len(self._plan)

    def step(self, obs: T.Observation, instruction: str) -> np.ndarray:
        robot_obs = np.asarray(obs[T.ROBOT_OBS], dtype=float)
        scene_obs = np.asarray(obs[T.SCENE_OBS], dtype=float)
        task = self._fixed_task or task_for_instruction(instruction)
        if self._plan is None or task != self._task:
            self._task = task
            self._homing = (self.home and np.linalg.norm(robot_obs[T.TCP_POS] - self.neutral_pos) > HOME_TOL
                            and self._held_block(robot_obs, scene_obs) is None)
            self._plan = self._home_plan(robot_obs) if self._homing else self.plan(task, robot_obs, scene_obs)
            self._i = self._count = self._reached = 0
            self.target_pos = robot_obs[T.TCP_POS].copy()
            self.target_euler = robot_obs[T.TCP_ORN].copy()
            self._grip = self._hand(robot_obs)
        elif self._homing and self.done:
            # planned only now, from the neutral pose, so the rest is exactly a neutral start's plan
            self._homing = False
            self._plan = self.plan(task, robot_obs, scene_obs)
            self._i = self._count = self._reached = 0
        return self._act(robot_obs)

    def _home_plan(self, robot_obs: np.ndarray) -> list[Waypoint]:
        # settle: come to rest there, as a neutral start does, before the task's plan begins
        return [*self._up(robot_obs, grip=OPEN),
                self._wp(self.neutral_pos, self.neutral_yaw, OPEN, tol=HOME_TOL / 2, settle=3)]

    # ------------------------------------------------------------------ waypoint following
    @property
    def in_free_space(self) -> bool:
        """Heading for a free-space waypoint (loose tolerance), where a deviation costs nothing but
        the way back; near contact (a handle, a block) the waypoints are tight."""
        return self._plan is not None and self._i < len(self._plan) and self._plan[self._i].tol >= FREE_SPACE_TOL

    def executed(self, action: np.ndarray) -> None:
        """The robot was sent ``action`` instead of the action ``step`` just returned (DART's noise):
        integrate that one into the target pose, as the simulator does, so that the next actions lead
        the arm back to the plan from where it went."""
        pos, euler = self._before
        self.target_pos, self.target_euler = T.integrate_action(
            pos, euler, np.asarray(action, dtype=float)[:6], self.ws_low, self.ws_high)

    def _act(self, robot_obs: np.ndarray) -> np.ndarray:
        self._before = (self.target_pos.copy(), self.target_euler.copy())
        action = np.zeros(T.ACTION_DIM, dtype=np.float32)
        if self._i >= len(self._plan):
            action[T.GRIPPER_INDEX] = self._grip
            return action
        wp = self._plan[self._i]
        delta = wp.pos - self.target_pos
        dist = np.linalg.norm(delta)
        if dist > wp.speed:
            delta = delta * (wp.speed / dist)
        a_pos = np.clip(delta / T.MAX_REL_POS, -1, 1)
        d_orn = np.array([
            T.wrap_angle(np.pi - self.target_euler[0]),
            T.wrap_angle(0.0 - self.target_euler[1]),
            T.wrap_angle(wp.yaw - self.neutral_yaw) - T.wrap_angle(self.target_euler[2] - self.neutral_yaw),
        ])
        a_orn = np.clip(d_orn / T.MAX_REL_ORN, -1, 1)
        self.target_pos, self.target_euler = T.integrate_action(
            self.target_pos, self.target_euler, np.concatenate([a_pos, a_orn]), self.ws_low, self.ws_high)
        self._grip = wp.grip
        action[T.ACTION_POS], action[T.ACTION_ORN], action[T.GRIPPER_INDEX] = a_pos, a_orn, wp.grip
        self._count += 1
        at_target = np.linalg.norm(wp.pos - self.target_pos) < 1e-6 and np.all(np.abs(d_orn - a_orn * T.MAX_REL_ORN) < 1e-6)
        if at_target and np.linalg.norm(robot_obs[T.TCP_POS] - wp.pos) < wp.tol:
            self._reached += 1
        limit = wp.max_steps or int(np.ceil(dist / wp.speed)) + 20
        if self._reached > wp.settle or self._count > limit + wp.settle:
            self._i += 1
            self._count = self._reached = 0
        return action

    # ------------------------------------------------------------------ scene reading
    @staticmethod
    def _hand(robot_obs: np.ndarray) -> float:
        """The gripper as last commanded (what keeping the hand as it is means)."""
        return OPEN if robot_obs[T.GRIPPER_ACTION] >= 0 else CLOSE

    @staticmethod
    def _yaw(robot_obs: np.ndarray) -> float:
        return robot_obs[T.TCP_ORN][2]

    def _block(self, scene_obs: np.ndarray, name: str) -> tuple[np.ndarray, float, tuple]:
        k = BLOCK_NAMES.index(name)
        return scene_obs[T.block_pos(k)].copy(), float(scene_obs[T.block_yaw(k)]), self.scene.blocks[name].size

    def _grasp_yaw(self, block_yaw: float, size, rot: float = 0.0, prefer: float | None = None) -> float:
        """Gripper yaw closing across the block's width, nearest the neutral yaw (also after ``rot``)."""
        period = np.pi / 2 if abs(size[0] - size[1]) < 0.005 else np.pi
        best, best_cost = 0.0, np.inf
        for k in range(-4, 5):
            psi = block_yaw + k * period
            rel = T.wrap_angle(psi - self.neutral_yaw)
            cost = max(abs(rel), abs(rel + rot))
            if prefer is not None:
                cost = abs(T.wrap_angle(psi - prefer))
            if cost < best_cost - 1e-9:
                best, best_cost = self.neutral_yaw + rel, cost
        return float(best)

    def _held_block(self, robot_obs, scene_obs) -> str | None:
        if robot_obs[T.GRIPPER_ACTION] >= 0 or robot_obs[T.GRIPPER_WIDTH] < 0.01:
            return None
        dists = {n: np.linalg.norm(self._block(scene_obs, n)[0] - robot_obs[T.TCP_POS]) for n in BLOCK_NAMES}
        name = min(dists, key=dists.get)
        return name if dists[name] < 0.06 else None

    def _on_table(self, scene_obs, name) -> bool:
        pos, _, size = self._block(scene_obs, name)
        (x0, x1), y0 = self.scene.raw["table"]["x"], self.scene.raw["table"]["y"][0]
        plank_y0 = self.scene.raw["plank"]["y"][0]
        return bool(x0 < pos[0] < x1 and y0 < pos[1] < plank_y0 and abs(pos[2] - self.T - size[2] / 2) < 0.01)

    def _free_spot(self, scene_obs, exclude: str, near: np.ndarray) -> np.ndarray:
        """A table position far from the other blocks (and from the pushing lanes), near ``near``."""
        (x0, x1), (y0, y1) = self.scene.region("table")
        others = [self._block(scene_obs, n)[0][:2] for n in BLOCK_NAMES if n != exclude]
        best, best_score = None, -np.inf
        for x in np.linspace(x0, x1, 7):
            for y in np.linspace(y0, y1, 3):
                p = np.array([x, y])
                clearance = min([np.linalg.norm(p - o) for o in others] + [0.2])
                score = min(clearance, 0.14) - 0.05 * np.linalg.norm(p - near[:2])
                if score > best_score:
                    best, best_score = p, score
        return best

    # ------------------------------------------------------------------ plans
    def _wp(self, pos, yaw, grip, **kw) -> Waypoint:
        return Waypoint(np.asarray(pos, dtype=float), float(yaw), float(grip), **kw)

    def _up(self, robot_obs, yaw=None, grip=None) -> list[Waypoint]:
        """Rise to the travel height first when low, so lateral moves clear the furniture."""
        pos = robot_obs[T.TCP_POS]
        yaw = self._yaw(robot_obs) if yaw is None else yaw
        grip = self._hand(robot_obs) if grip is None else grip
        if pos[2] >= self.z_up - 0.03:
            return []
        return [self._wp([pos[0], pos[1], self.z_up], self._near_neutral(yaw), grip, tol=0.03)]

    def _near_neutral(self, yaw: float) -> float:
        return float(self.neutral_yaw + np.clip(T.wrap_angle(yaw - self.neutral_yaw), -2.3, 2.3))

    def _pick(self, pos, yaw, lift_to: float, speed_down: float = 0.012) -> list[Waypoint]:
        above = [pos[0], pos[1], max(pos[2] + 0.09, self.z_up)]
        grasp = [pos[0], pos[1], pos[2] - GRASP_DEPTH]
        return [
            self._wp(above, yaw, OPEN, tol=0.02),
            self._wp(grasp, yaw, OPEN, speed=speed_down, tol=0.006, settle=2),
            self._wp(grasp, yaw, CLOSE, settle=5),
            self._wp([pos[0], pos[1], lift_to], yaw, CLOSE, speed=0.015, tol=0.02),
        ]

    def _place(self, xy, z_tcp, yaw, rise: float = 0.08) -> list[Waypoint]:
        return [
            self._wp([xy[0], xy[1], self.z_up], yaw, CLOSE, tol=0.02),
            self._wp([xy[0], xy[1], z_tcp], yaw, CLOSE, speed=0.012, tol=0.008, settle=1),
            self._wp([xy[0], xy[1], z_tcp], yaw, OPEN, settle=4),
            self._wp([xy[0], xy[1], z_tcp + rise], yaw, OPEN, speed=0.015, tol=0.03),
        ]

    def _release_prelude(self, task, robot_obs, scene_obs) -> list[Waypoint]:
        """A block left in the hand by a previous subtask is put down on the table first."""
        holding = TASK_PLANS[task].holding if task in TASK_PLANS else False
        held = self._held_block(robot_obs, scene_obs)
        if holding or robot_obs[T.GRIPPER_ACTION] >= 0:
            return []
        yaw = self._near_neutral(self._yaw(robot_obs))
        resting = held is not None and abs(self._block(scene_obs, held)[0][2] - self.T
                                           - self.scene.blocks[held].size[2] / 2) < 0.01
        if held is None or resting:  # let go where it is, then rise
            return [self._wp(robot_obs[T.TCP_POS], yaw, OPEN, settle=3)] + self._up(robot_obs, yaw, OPEN)
        spot = self._free_spot(scene_obs, held, robot_obs[T.TCP_POS])
        size = self.scene.blocks[held].size
        return self._up(robot_obs, yaw, CLOSE) + self._place(spot, self.T + size[2] / 2 - GRASP_DEPTH + 0.004, yaw)

    def plan(self, task: str, robot_obs: np.ndarray, scene_obs: np.ndarray) -> list[Waypoint]:
        pre = self._release_prelude(task, robot_obs, scene_obs)
        if not pre:
            pre = self._up(robot_obs)
        body = self._plan_task(task, robot_obs, scene_obs)
        here = pre[-1].pos if pre else robot_obs[T.TCP_POS]
        if body and np.linalg.norm(body[0].pos[:2] - here[:2]) > 0.4:
            # a long move (say from the switch to the drawer) passes over the neutral pose, where
            # IK's null space brings the arm back to its usual configuration; without it the arm
            # can arrive folded the other way and fall short of low targets near its base
            home = self.neutral_pos.copy()
            home[2] = self.z_up
            pre = pre + [self._wp(home, body[0].yaw, body[0].grip, tol=0.04)]
        plan = pre + body
        if self.noise > 0:
            for wp in plan[:-1]:
                if wp.tol >= FREE_SPACE_TOL:  # perturb only free-space waypoints, never contact-critical ones
                    wp.pos = wp.pos + self.rng.normal(0, self.noise, 3) * np.array([1, 1, 0.5])
        return plan

    def _plan_task(self, task: str, robot_obs, scene_obs) -> list[Waypoint]:
        if task not in TASK_PLANS:
            raise ValueError(f"ScriptedExpert: no plan for task {task!r} (planned: {', '.join(TASK_PLANS)})")
        entry = TASK_PLANS[task]
        return entry.plan(self, robot_obs, scene_obs, **entry.params)

    def _lift(self, robot_obs, scene_obs, block: str, prefer: float | None) -> list[Waypoint]:
        pos, yaw, size = self._block(scene_obs, block)
        return self._pick(pos, self._grasp_yaw(yaw, size, prefer=prefer), self.z_up)

    def _rotate(self, robot_obs, scene_obs, block: str, rot: float) -> list[Waypoint]:
        pos, yaw, size = self._block(scene_obs, block)
        psi = self._grasp_yaw(yaw, size, rot=rot)
        grasp_z = pos[2] - GRASP_DEPTH
        plan = self._pick(pos, psi, grasp_z + 0.02)
        plan += [
            self._wp([pos[0], pos[1], grasp_z + 0.02], psi + rot, CLOSE, tol=0.02),
            self._wp([pos[0], pos[1], grasp_z + 0.003], psi + rot, CLOSE, speed=0.01, tol=0.01),
            self._wp([pos[0], pos[1], grasp_z + 0.003], psi + rot, OPEN, settle=3),
            self._wp([pos[0], pos[1], grasp_z + 0.08], psi + rot, OPEN, speed=0.015, tol=0.03),
        ]
        return plan

    def _push(self, robot_obs, scene_obs, block: str, direction: float) -> list[Waypoint]:
        pos, yaw, size = self._block(scene_obs, block)
        half_x = abs(np.cos(yaw)) * size[0] / 2 + abs(np.sin(yaw)) * size[1] / 2
        psi = self._grasp_yaw(0.0, (1.0, 0.0, 0.0))  # fingers side by side along y: a wide pusher
        z = self.T + 0.022
        start = pos[0] - direction * (half_x + FINGER_HALF + 0.02)
        end = start + direction * (PUSH_BY + 0.02)
        return [
            self._wp([start, pos[1], self.z_up], psi, CLOSE, tol=0.02),
            self._wp([start, pos[1], z], psi, CLOSE, speed=0.015, tol=0.008),
            self._wp([end, pos[1], z], psi, CLOSE, speed=0.012, tol=0.01),
            self._wp([end, pos[1], z + 0.08], psi, CLOSE, speed=0.015, tol=0.03),
        ]

    def _slider(self, robot_obs, scene_obs, left: bool) -> list[Waypoint]:
        g = self.scene.door_geometry()
        q = scene_obs[T.SLIDING_DOOR]
        knob_x = g["x"] - q
        psi = self._grasp_yaw(np.pi / 2, (1.0, 0.0, 0.0), prefer=np.pi / 2)  # fingers side by side along x
        offset = 0.015 + FINGERS_HALF_WIDTH
        z = g["knob_z"]
        if left:  # push the knob towards -x, from its +x side
            start, end = knob_x + offset + 0.02, g["x"] - g["travel"] + offset - 0.01
        else:
            start, end = knob_x - offset - 0.02, g["x"] - offset + 0.01
        return [
            self._wp([start, g["y"], z + 0.08], psi, CLOSE, tol=0.02),
            self._wp([start, g["y"], z], psi, CLOSE, speed=0.015, tol=0.01),
            self._wp([end, g["y"], z], psi, CLOSE, speed=0.015, tol=0.015),
            self._wp([end, g["y"], z + 0.08], psi, CLOSE, speed=0.015, tol=0.03),
        ]

    def _drawer(self, robot_obs, scene_obs, opening: bool) -> list[Waypoint]:
        g = self.scene.drawer_geometry()
        q = scene_obs[T.DRAWER]
        psi = self._grasp_yaw(np.pi / 2, (1.0, 0.0, 0.0), prefer=np.pi / 2)  # thin side of the fingers along y
        z = g["handle_z"] + 0.006
        # the fingers go into the gap between the drawer front and its handle bar: pulling hooks the
        # bar, pushing presses on the front (the hand stops short of the desk edge: the drawer ends
        # about 2 cm from fully closed)
        gap_y = (g["handle_y"] + 0.006 + g["front_y"]) / 2 - 0.008
        y = gap_y - q
        end = gap_y - g["travel"] - 0.01 if opening else gap_y + 0.012
        above = self.T + 0.06
        return [
            self._wp([g["x"], y, above], psi, CLOSE, tol=0.02),
            self._wp([g["x"], y, z], psi, CLOSE, speed=0.015, tol=0.008),
            self._wp([g["x"], end, z], psi, CLOSE, speed=0.015, tol=0.015),
            self._wp([g["x"], end, above], psi, CLOSE, speed=0.015, tol=0.03),
        ]

    def _switch(self, robot_obs, scene_obs, on: bool) -> list[Waypoint]:
        g = self.scene.switch_geometry()
        q = scene_obs[T.SWITCH]
        psi = self._grasp_yaw(np.pi / 2, (1.0, 0.0, 0.0), prefer=np.pi / 2)
        offset = 0.01 + FINGER_HALF
        knob_y = g["y"] + q
        z = g["knob_z"] - 0.008
        if on:  # push towards +y from the -y side
            start, end = knob_y - offset - 0.02, g["y"] + g["travel"] - offset + 0.008
        else:
            start, end = knob_y + offset + 0.02, g["y"] + offset - 0.008
        return [
            self._wp([g["x"], start, z + 0.08], psi, CLOSE, tol=0.02),
            self._wp([g["x"], start, z], psi, CLOSE, speed=0.015, tol=0.008),
            self._wp([g["x"], end, z], psi, CLOSE, speed=0.012, tol=0.012),
            self._wp([g["x"], end, z + 0.08], psi, CLOSE, speed=0.015, tol=0.03),
        ]

    def _button(self, robot_obs, scene_obs) -> list[Waypoint]:
        g = self.scene.button_geometry()
        psi = self.neutral_yaw
        press = g["top"] - g["travel"] - 0.004 + 0.011  # fingertips 11 mm below the TCP
        return [
            self._wp([g["x"], g["y"], g["top"] + 0.06], psi, CLOSE, tol=0.015),
            self._wp([g["x"], g["y"], press], psi, CLOSE, speed=0.012, tol=0.006, settle=1),
            self._wp([g["x"], g["y"], g["top"] + 0.06], psi, CLOSE, speed=0.015, tol=0.02),
        ]

    def _place_task(self, robot_obs, scene_obs, dest: PlaceOn) -> list[Waypoint]:
        held = self._held_block(robot_obs, scene_obs)
        if held is None:
            return []
        pos, _, size = self._block(scene_obs, held)
        # keep the block's offset in the hand: place the block, not the TCP
        offset_z = robot_obs[T.TCP_POS][2] - pos[2]
        yaw = self._near_neutral(self._yaw(robot_obs))
        if dest is PlaceOn.SHELF:
            side = "slider_right" if scene_obs[T.SLIDING_DOOR] < self.scene.raw["door"]["travel"] / 2 else "slider_left"
            xy = self._shelf_spot(scene_obs, held, side)
            yaw = self._grasp_yaw(np.pi / 2, (1.0, 0.0, 0.0))
            z = self.scene.plank_top + size[2] / 2 + 0.006 + offset_z
            return self._up(robot_obs, yaw, CLOSE) + self._place(xy, z, yaw)
        if dest is PlaceOn.DRAWER:
            g = self.scene.drawer_geometry()
            xy = self._drawer_spot(scene_obs)
            yaw = self._grasp_yaw(np.pi / 2, (1.0, 0.0, 0.0))
            z = g["bottom"] + 0.01 + size[2] / 2 + 0.01 + offset_z
            return self._up(robot_obs, yaw, CLOSE) + self._place(xy, z, yaw)
        targets = [n for n in BLOCK_NAMES if n != held and self._on_table(scene_obs, n)]
        if not targets:
            return []
        target = min(targets, key=lambda n: np.linalg.norm(self._block(scene_obs, n)[0][:2] - pos[:2]))
        tpos, tyaw, tsize = self._block(scene_obs, target)
        z = tpos[2] + tsize[2] / 2 + size[2] / 2 + 0.006 + offset_z
        return self._up(robot_obs, yaw, CLOSE) + self._place(tpos[:2], z, yaw, rise=0.06)

    def _shelf_spot(self, scene_obs, held, side) -> np.ndarray:
        (x0, x1), (y0, y1) = self.scene.region(side)
        others = [self._block(scene_obs, n)[0][:2] for n in BLOCK_NAMES if n != held]
        cands = [np.array([x, (y0 + y1) / 2]) for x in np.linspace(x0, x1, 5)]
        return max(cands, key=lambda p: min([np.linalg.norm(p - o) for o in others] + [0.3]))

    def _drawer_spot(self, scene_obs) -> list[float]:
        """Middle of the drawer, but in its part outside the desk when it is only partly open."""
        g = self.scene.drawer_geometry()
        return [g["x"], min(g["front_y"] - scene_obs[T.DRAWER] + g["depth"] / 2 + 0.01, g["front_y"] - 0.075)]

    def _push_into_drawer(self, robot_obs, scene_obs) -> list[Waypoint]:
        # the block on the table is carried low over the desk edge and let go above the open drawer
        name = next((n for n in BLOCK_NAMES if self._on_table(scene_obs, n)), None)
        if name is None:
            return []
        pos, yaw, size = self._block(scene_obs, name)
        psi = self._grasp_yaw(yaw, size)
        g = self.scene.drawer_geometry()
        xy = self._drawer_spot(scene_obs)
        drop = g["bottom"] + 0.01 + size[2] / 2 + 0.02
        carry = self.T + size[2] / 2 + 0.02
        plan = self._pick(pos, psi, carry)
        # turned on the way so the hand's long side runs along the desk edge above the drawer
        turn = self._grasp_yaw(np.pi / 2, (1.0, 0.0, 0.0))
        plan += [
            self._wp([xy[0], xy[1], carry], turn, CLOSE, tol=0.02),
            self._wp([xy[0], xy[1], drop], turn, CLOSE, speed=0.012, tol=0.01),
            self._wp([xy[0], xy[1], drop], turn, OPEN, settle=4),
            self._wp([xy[0], xy[1], self.T + 0.08], turn, OPEN, speed=0.015, tol=0.03),
        ]
        return plan

    def _unstack(self, robot_obs, scene_obs) -> list[Waypoint]:
        tops = [n for n in BLOCK_NAMES if self._block(scene_obs, n)[0][2] > self.T + 0.045
                and self._block(scene_obs, n)[0][1] < self.scene.raw["plank"]["y"][0]]
        if not tops:
            return []
        name = max(tops, key=lambda n: self._block(scene_obs, n)[0][2])
        pos, yaw, size = self._block(scene_obs, name)
        psi = self._grasp_yaw(yaw, size)
        spot = self._free_spot(scene_obs, name, pos)
        plan = self._pick(pos, psi, pos[2] + 0.06)
        return plan + self._place(spot, self.T + size[2] / 2 - GRASP_DEPTH + 0.004, psi)


@dataclass(frozen=True)
class TaskPlan:
    """How the expert plans one task: ``plan(expert, robot_obs, scene_obs, **params)``.

    ``holding``: the task starts with a block in the hand (so a held block is not put down first).
    """

    plan: Callable[..., list[Waypoint]]
    params: dict[str, Any] = field(default_factory=dict)
    holding: bool = False


E = ScriptedExpert
# Every task of envs/tasks.yaml (a test checks the two agree), with what its plan needs to know.
TASK_PLANS: dict[str, TaskPlan] = {
    **{f"rotate_{c}_block_{side}": TaskPlan(E._rotate, {"block": f"{c}_block", "rot": rot})
       for c in T.BLOCK_COLORS for side, rot in (("right", -ROTATE_BY), ("left", ROTATE_BY))},
    **{f"push_{c}_block_{side}": TaskPlan(E._push, {"block": f"{c}_block", "direction": direction})
       for c in T.BLOCK_COLORS for side, direction in (("right", 1.0), ("left", -1.0))},
    "move_slider_left": TaskPlan(E._slider, {"left": True}),
    "move_slider_right": TaskPlan(E._slider, {"left": False}),
    "open_drawer": TaskPlan(E._drawer, {"opening": True}),
    "close_drawer": TaskPlan(E._drawer, {"opening": False}),
    # a block on the shelf or in the drawer is grasped across the hand's long side, along x
    **{f"lift_{c}_block_{where}": TaskPlan(E._lift, {"block": f"{c}_block", "prefer": prefer})
       for c in T.BLOCK_COLORS for where, prefer in (("table", None), ("slider", np.pi / 2), ("drawer", np.pi / 2))},
    "place_in_slider": TaskPlan(E._place_task, {"dest": PlaceOn.SHELF}, holding=True),
    "place_in_drawer": TaskPlan(E._place_task, {"dest": PlaceOn.DRAWER}, holding=True),
    "push_into_drawer": TaskPlan(E._push_into_drawer),
    "stack_block": TaskPlan(E._place_task, {"dest": PlaceOn.BLOCK}, holding=True),
    "unstack_block": TaskPlan(E._unstack),
    "turn_on_lightbulb": TaskPlan(E._switch, {"on": True}),
    "turn_off_lightbulb": TaskPlan(E._switch, {"on": False}),
    "turn_on_led": TaskPlan(E._button),
    "turn_off_led": TaskPlan(E._button),
}
del E
