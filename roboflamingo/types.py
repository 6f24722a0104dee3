"""The shared vocabulary: observation keys, the action layout, and the training batch.

Every layer (simulator, dataset, policy, evaluator, ROS bridge) speaks CALVIN's terms, so a policy
moves between our tabletop, the real ``calvin_env`` and a real arm without change.

Observation (one control step, numpy, as the simulator and the robot bridge produce it)::

    rgb_static   uint8 (H_s, W_s, 3)   static camera, 200x200 in CALVIN
    rgb_gripper  uint8 (H_g, W_g, 3)   wrist camera, 84x84 in CALVIN
    robot_obs    float (15,)           tcp xyz (3), tcp euler xyz (3), gripper width (1),
                                       arm joints (7), last gripper action +-1 (1)
    scene_obs    float (24,)           door, drawer, button, switch, lightbulb, led,
                                       red/blue/pink block pose (6 each)

Code reads these fields by name (``robot_obs[TCP_POS]``, ``scene_obs[DRAWER]``, ``block_pose(k)``),
never by position; the names below are calvin_env's fields, checked against calvin_env's own
observation code in tests/eval/test_calvin_env_real.py.

Action: 7-d *relative* action, CALVIN's ``rel_actions``::

    [0:3]  tcp position delta / 0.02 m, clipped to [-1, 1]
    [3:6]  tcp euler-xyz delta / 0.05 rad, clipped to [-1, 1]
    [6]    gripper: -1 close, +1 open

Training batch (one dict of tensors; B windows of T frames, A = act_steps future actions)::

    rgb_static    uint8 (B, T, 3, H_s, W_s)  or float (B, T, 3, S, S) already preprocessed
    rgb_gripper   uint8 (B, T, 3, H_g, W_g)  or float (B, T, 3, S, S)
    robot_obs     float32 (B, T, 15)
    actions       float32 (B, T, A, 7)   the next A relative actions from each frame
    action_mask   bool (B, T, A)         False where a future step falls outside the segment
    instruction   list[str] of length B
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

RGB_STATIC = "rgb_static"
RGB_GRIPPER = "rgb_gripper"
ROBOT_OBS = "robot_obs"
SCENE_OBS = "scene_obs"
CAMERAS = (RGB_STATIC, RGB_GRIPPER)
OBS_KEYS = (RGB_STATIC, RGB_GRIPPER, ROBOT_OBS, SCENE_OBS)

ACTIONS = "actions"
REL_ACTIONS = "rel_actions"
ACTION_MASK = "action_mask"
INSTRUCTION = "instruction"

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

Observation = dict[str, np.ndarray]


def wrap_angle(x: np.ndarray | float) -> np.ndarray:
    """Angles to [-pi, pi)."""
    return (np.asarray(x, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


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


@runtime_checkable
class Policy(Protocol):
    """What the evaluator, the policy server and the ROS node need from a policy."""

    def reset(self) -> None:
        """Forget the history; called at the start of every subtask."""

    def step(self, obs: Observation, instruction: str) -> np.ndarray:
        """Return one 7-d relative action (float, gripper exactly -1 or 1)."""


def check_observation(obs: Any, keys: tuple[str, ...] = (RGB_STATIC, RGB_GRIPPER, ROBOT_OBS)) -> None:
    """Raise a ValueError naming the key and what was expected when ``obs`` is malformed."""
    if not isinstance(obs, dict):
        raise ValueError(f"observation must be a dict with keys {list(keys)}, got {type(obs).__name__}")
    for key in keys:
        if key not in obs:
            raise ValueError(f"observation is missing key '{key}' (expected keys: {list(keys)})")
        value = np.asarray(obs[key])
        if key in CAMERAS:
            if value.ndim != 3 or value.shape[-1] != 3:
                raise ValueError(f"observation['{key}'] must be an (H, W, 3) image, got shape {value.shape}")
            if value.dtype != np.uint8:
                raise ValueError(f"observation['{key}'] must be uint8, got {value.dtype}")
        elif key == ROBOT_OBS and value.shape != (ROBOT_OBS_DIM,):
            raise ValueError(f"observation['{key}'] must have shape ({ROBOT_OBS_DIM},), got {value.shape}")
        elif key == SCENE_OBS and value.shape != (SCENE_OBS_DIM,):
            raise ValueError(f"observation['{key}'] must have shape ({SCENE_OBS_DIM},), got {value.shape}")
        if key not in CAMERAS and not np.all(np.isfinite(value)):
            raise ValueError(f"observation['{key}'] contains NaN or inf")
