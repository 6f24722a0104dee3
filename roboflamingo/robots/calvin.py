"""CALVIN's Franka: the built-in robot description and the layout of its vectors.

Everything that is CALVIN's (its observation keys, the 15-d ``robot_obs`` and 24-d ``scene_obs``
layouts, the 7-d relative action and its scales, the camera sizes) lives here and nowhere else. The
tabletop simulator, the scripted expert, the calvin_env adapter and the CALVIN data layout read it;
generic code reads a :class:`~roboflamingo.robot.RobotDescription` instead.

Observation (calvin_env's)::

    rgb_static   uint8 (200, 200, 3)  static camera
    rgb_gripper  uint8 (84, 84, 3)    wrist camera
    robot_obs    float (15,)          tcp xyz (3), tcp euler xyz (3), gripper width (1),
                                      arm joints (7), last gripper action +-1 (1)
    scene_obs    float (24,)          door, drawer, button, switch, lightbulb, led,
                                      red/blue/pink block pose (6 each); privileged, never a policy input

Code reads these fields by name (``robot_obs[TCP_POS]``, ``scene_obs[DRAWER]``, ``block_pose(k)``),
never by position; the names are calvin_env's fields, checked against calvin_env's own observation
code in tests/eval/test_calvin_env_real.py.

Action: CALVIN's 7-d *relative* ``rel_actions``::

    [0:3]  tcp position delta / 0.02 m, clipped to [-1, 1]
    [3:6]  tcp euler-xyz delta / 0.05 rad, clipped to [-1, 1]
    [6]    gripper: -1 close, +1 open
"""

from __future__ import annotations

import numpy as np

from roboflamingo.robot import ActionSpec, Camera, RobotDescription, StateSpec

# The CALVIN layout's absolute-action key and angle wrapping, re-exported for simulator code that
# reads everything CALVIN through this module.
from roboflamingo.types import ACTIONS, Observation, wrap_angle  # noqa: F401

RGB_STATIC = "rgb_static"
RGB_GRIPPER = "rgb_gripper"
ROBOT_OBS = "robot_obs"
SCENE_OBS = "scene_obs"
CAMERAS = (RGB_STATIC, RGB_GRIPPER)
OBS_KEYS = (RGB_STATIC, RGB_GRIPPER, ROBOT_OBS, SCENE_OBS)

REL_ACTIONS = "rel_actions"

ROBOT_OBS_DIM = 15
SCENE_OBS_DIM = 24
ACTION_DIM = 7
POSE_DIM = 6
GRIPPER_INDEX = 6  # in an action: -1 close, +1 open

# robot_obs, field by field (calvin_env ``Robot.get_observation`` with euler angles).
TCP_POS = slice(0, 3)
TCP_ORN = slice(3, 6)  # euler xyz
TCP_POSE = slice(0, 6)  # TCP_POS then TCP_ORN
GRIPPER_WIDTH = 6  # the sum of the two finger joints (m)
ARM_JOINT_STATES = slice(7, 14)
GRIPPER_ACTION = 14  # the last gripper command, -1 or +1

# scene_obs, field by field (calvin_env ``PlayTableScene.get_obs``: doors, buttons, switches, lights,
# then each movable object's position and euler orientation).
SLIDING_DOOR = 0
DRAWER = 1
BUTTON = 2
SWITCH = 3
LIGHTBULB = 4
GREEN_LIGHT = 5  # the LED the button toggles
TABLE_JOINTS = slice(0, 4)  # sliding door, drawer, button, switch: the desk's joint positions
DOORS = slice(0, 2)  # sliding door, drawer
BLOCKS_START = 6
BLOCK_COLORS = ("red", "blue", "pink")
BLOCK_NAMES = tuple(f"{c}_block" for c in BLOCK_COLORS)  # in scene_obs order


def block_pose(k: int) -> slice:
    """The pose (xyz, euler xyz) of block ``k`` of ``BLOCK_NAMES`` in scene_obs."""
    start = BLOCKS_START + POSE_DIM * k
    return slice(start, start + POSE_DIM)


def block_pos(k: int) -> slice:
    """The position (xyz) of block ``k`` of ``BLOCK_NAMES`` in scene_obs."""
    start = BLOCKS_START + POSE_DIM * k
    return slice(start, start + 3)


def block_yaw(k: int) -> int:
    """The yaw (euler z) of block ``k`` of ``BLOCK_NAMES`` in scene_obs."""
    return BLOCKS_START + POSE_DIM * k + 5


# an action, field by field
ACTION_POS = slice(0, 3)  # tcp position delta / MAX_REL_POS
ACTION_ORN = slice(3, 6)  # tcp euler delta / MAX_REL_ORN

STATIC_RES = 200
GRIPPER_RES = 84

# A relative action of 1.0 moves the target pose by this much (calvin_env robot.py).
MAX_REL_POS = 0.02  # m
MAX_REL_ORN = 0.05  # rad

GRIPPER_OPEN = 1.0
GRIPPER_CLOSE = -1.0



def action_deltas(action: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The target-pose change a relative action asks for: (position delta (m), euler delta (rad))."""
    return action[ACTION_POS] * MAX_REL_POS * scale, action[ACTION_ORN] * MAX_REL_ORN * scale


def integrate_action(pos: np.ndarray, euler: np.ndarray, action: np.ndarray, low: np.ndarray, high: np.ndarray,
                     scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """CALVIN's ``use_target_pose``: the target pose after a relative action, position clipped to the
    workspace box [low, high], euler angles wrapped (the simulator, the scripted expert and the safety
    filter all accumulate their target this way)."""
    d_pos, d_orn = action_deltas(action, scale)
    return np.clip(pos + d_pos, low, high), wrap_angle(euler + d_orn)


def relative_action(target_pose: np.ndarray, current_target: np.ndarray, gripper: float) -> np.ndarray:
    """The relative action that moves the accumulated target pose ``current_target`` to the absolute
    ``target_pose`` (both xyz then euler xyz, as ``robot_obs[TCP_POSE]``), clipped to [-1, 1]: the
    inverse of ``integrate_action``, for a robot commanded by absolute targets (``sim-robot``)."""
    rel = np.empty(ACTION_DIM)
    rel[ACTION_POS] = (target_pose[TCP_POS] - current_target[TCP_POS]) / MAX_REL_POS
    rel[ACTION_ORN] = wrap_angle(target_pose[TCP_ORN] - current_target[TCP_ORN]) / MAX_REL_ORN
    rel[GRIPPER_INDEX] = GRIPPER_OPEN if gripper >= 0 else GRIPPER_CLOSE
    return np.clip(rel, -1.0, 1.0)


# calvin_env ``Robot.get_observation`` with euler angles: the declared meaning of robot_obs.
ROBOT_OBS_NAMES = (
    "tcp_pos.x", "tcp_pos.y", "tcp_pos.z", "tcp_orn.x", "tcp_orn.y", "tcp_orn.z", "gripper_opening_width",
    "arm_joint_0", "arm_joint_1", "arm_joint_2", "arm_joint_3", "arm_joint_4", "arm_joint_5", "arm_joint_6",
    "gripper_action",
)
# The 7-d relative action (calvin_env: scaled TCP position and orientation deltas, gripper +-1).
REL_ACTION_NAMES = ("rel_pos.x", "rel_pos.y", "rel_pos.z", "rel_orn.x", "rel_orn.y", "rel_orn.z", "gripper")

CALVIN = RobotDescription(
    name="calvin",
    description="CALVIN's simulated Franka Emika Panda (calvin_env), and our tabletop that mirrors it",
    cameras=(Camera(RGB_STATIC, STATIC_RES, STATIC_RES), Camera(RGB_GRIPPER, GRIPPER_RES, GRIPPER_RES)),
    # The TCP's euler angles wrap: the roll of a gripper pointing down sits at +-pi.
    state=StateSpec(names=ROBOT_OBS_NAMES, key=ROBOT_OBS, angles=tuple(range(TCP_ORN.start, TCP_ORN.stop))),
    action=ActionSpec(
        names=REL_ACTION_NAMES, key=REL_ACTIONS, grippers=(GRIPPER_INDEX,), close=GRIPPER_CLOSE, open=GRIPPER_OPEN,
        mode="relative", space="end_effector", rate_hz=30.0,
        low=(-1.0,) * POSE_DIM + (GRIPPER_CLOSE,), high=(1.0,) * POSE_DIM + (GRIPPER_OPEN,),
    ),
)


def check_observation(obs: object, keys: tuple[str, ...] = (RGB_STATIC, RGB_GRIPPER, ROBOT_OBS)) -> None:
    """CALVIN's observation check: the description's, plus the privileged ``scene_obs`` (24-d)."""
    CALVIN.check_observation(obs, tuple(k for k in keys if k != SCENE_OBS))
    if SCENE_OBS in keys:
        if SCENE_OBS not in obs:  # type: ignore[operator]
            raise ValueError(f"observation is missing key '{SCENE_OBS}' (expected keys: {list(keys)})")
        value = np.asarray(obs[SCENE_OBS])  # type: ignore[index]
        if value.shape != (SCENE_OBS_DIM,):
            raise ValueError(f"observation['{SCENE_OBS}'] must have shape ({SCENE_OBS_DIM},), got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"observation['{SCENE_OBS}'] contains NaN or inf")
