"""ROS messages as rosbridge JSON dicts: build and parse the few types the deployment uses.

ROS 1 and ROS 2 differ in two visible ways on the bridge: type names (``sensor_msgs/Image`` vs
``sensor_msgs/msg/Image``) and time (``{secs, nsecs}`` vs ``{sec, nanosec}``; ROS 1 headers also carry
``seq``). Outgoing messages follow the configured version; incoming ones are parsed in either form, as
rosbridge itself accepts both. ``uint8[]`` fields (image data) are base64 strings on the bridge (bytes
on the native rclpy link, ``rclpy_bridge``).
Euler angles follow pybullet's convention (CALVIN's ``robot_obs[3:6]``): roll-pitch-yaw with
R = Rz(yaw) Ry(pitch) Rx(roll).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class MessageError(ValueError):
    """An incoming message does not have the expected fields; the text names the field."""


def type_name(pkg_type: str, ros_version: int) -> str:
    """``sensor_msgs/Image`` in the configured version's spelling."""
    parts = pkg_type.split("/")
    pkg, name = parts[0], parts[-1]
    return f"{pkg}/msg/{name}" if ros_version == 2 else f"{pkg}/{name}"


def base_type(type_str: str) -> str:
    """``sensor_msgs/msg/CompressedImage`` -> ``CompressedImage``."""
    return type_str.split("/")[-1]


# -- time and headers --------------------------------------------------------------------------------
def stamp_to_msg(t: float, ros_version: int) -> dict[str, int]:
    secs = int(math.floor(t))
    nsecs = min(int(round((t - secs) * 1e9)), 999_999_999)
    return {"sec": secs, "nanosec": nsecs} if ros_version == 2 else {"secs": secs, "nsecs": nsecs}


def stamp_from_msg(stamp: Any) -> float | None:
    """Seconds, None when the message has no stamp or an unset (zero) one, NaN when it has one
    that is not a finite time (NaN, inf, a bool, a string, an int beyond float's range).

    The two cases differ on purpose: a missing stamp may be replaced by the receive time, but a
    broken one must never count as fresh (a NaN age passes every comparison; issue 31).
    """
    if not isinstance(stamp, dict):
        return None
    secs = stamp.get("sec", stamp.get("secs"))
    nsecs = stamp.get("nanosec", stamp.get("nsecs", 0))
    if secs is None:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (secs, nsecs)):
        return math.nan
    if secs == 0 and nsecs == 0:
        return None  # an unset stamp: rosbridge leaves it for the server to fill
    try:
        t = float(secs) + float(nsecs) * 1e-9
    except OverflowError:  # an int too large for a float
        return math.nan
    return t if math.isfinite(t) else math.nan


def header(t: float, frame_id: str, ros_version: int, seq: int = 0) -> dict[str, Any]:
    h: dict[str, Any] = {"stamp": stamp_to_msg(t, ros_version), "frame_id": frame_id}
    if ros_version == 1:
        h["seq"] = seq
    return h


def header_stamp(msg: dict) -> float | None:
    h = msg.get("header")
    return stamp_from_msg(h.get("stamp")) if isinstance(h, dict) else None


# -- rotations ---------------------------------------------------------------------------------------
def quat_from_euler(euler: Sequence[float]) -> np.ndarray:
    """(roll, pitch, yaw) -> quaternion (x, y, z, w), as pybullet's getQuaternionFromEuler."""
    r, p, y = (float(v) * 0.5 for v in euler)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array(
        [
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy,
        ]
    )


def euler_from_quat(q: Sequence[float]) -> np.ndarray:
    """Quaternion (x, y, z, w) -> (roll, pitch, yaw), as pybullet's getEulerFromQuaternion."""
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n == 0 or not math.isfinite(n):
        raise MessageError(f"orientation quaternion must be finite and non-zero, got {list(q)}")
    x, y, z, w = x / n, y / n, z / n, w / n
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.array([roll, pitch, yaw])


# -- images ------------------------------------------------------------------------------------------
def _bytes_field(msg: dict, what: str) -> bytes:
    data = msg.get("data")
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as e:
            raise MessageError(f"{what}.data is not valid base64") from e
    if isinstance(data, (bytes, bytearray, memoryview)):  # the native rclpy link (rclpy_bridge.to_dict)
        return bytes(data)
    if isinstance(data, list):  # some bridges send uint8[] as a JSON list
        return bytes(data)
    raise MessageError(f"{what}.data must be a base64 string, got {type(data).__name__}")


def encode_image(
    image: np.ndarray, t: float, frame_id: str, ros_version: int, compressed: bool, jpeg_quality: int = 90
) -> dict[str, Any]:
    """uint8 (H, W, 3) RGB -> ``sensor_msgs/CompressedImage`` (JPEG) or ``sensor_msgs/Image`` (rgb8)."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if compressed:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=jpeg_quality)
        data = buf.getvalue()
        return {
            "header": header(t, frame_id, ros_version),
            "format": "jpeg",
            "data": base64.b64encode(data).decode("ascii"),
        }
    h, w = img.shape[:2]
    return {
        "header": header(t, frame_id, ros_version),
        "height": h,
        "width": w,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": w * 3,
        "data": base64.b64encode(img.tobytes()).decode("ascii"),
    }


_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def decode_image(msg: dict, size: int | None = None) -> np.ndarray:
    """``CompressedImage`` or ``Image`` -> uint8 (H, W, 3) RGB, resized to ``size`` x ``size`` if given."""
    from PIL import Image

    if "format" in msg:
        try:
            pil = Image.open(io.BytesIO(_bytes_field(msg, "CompressedImage"))).convert("RGB")
        except MessageError:
            raise
        except Exception as e:  # PIL raises several types for corrupt data
            raise MessageError(f"CompressedImage.data could not be decoded ({e})") from e
    else:
        enc = msg.get("encoding")
        if enc not in _CHANNELS:
            raise MessageError(f"Image.encoding must be one of {sorted(_CHANNELS)}, got {enc!r}")
        h, w, step = msg.get("height"), msg.get("width"), msg.get("step")
        if not all(isinstance(v, int) and v > 0 for v in (h, w)):
            raise MessageError(f"Image.height/width must be positive ints, got {h}x{w}")
        c = _CHANNELS[enc]
        raw = np.frombuffer(_bytes_field(msg, "Image"), dtype=np.uint8)
        step = step if isinstance(step, int) and step >= w * c else w * c
        if raw.size < h * step:
            raise MessageError(f"Image.data has {raw.size} bytes, expected {h * step} for {h}x{w} {enc}")
        arr = raw[: h * step].reshape(h, step)[:, : w * c].reshape(h, w, c)
        if enc.startswith("bgr"):
            arr = arr[..., [2, 1, 0]]
        elif enc == "mono8":
            arr = np.repeat(arr, 3, axis=2)
        pil = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    if size is not None and pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return np.array(pil, dtype=np.uint8)  # a writable copy: torch.as_tensor warns on read-only arrays


# -- poses and joints --------------------------------------------------------------------------------
def encode_pose_stamped(
    position: Sequence[float], euler: Sequence[float], t: float, frame_id: str, ros_version: int
) -> dict[str, Any]:
    q = quat_from_euler(euler)
    return {
        "header": header(t, frame_id, ros_version),
        "pose": {
            "position": {"x": float(position[0]), "y": float(position[1]), "z": float(position[2])},
            "orientation": {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])},
        },
    }


def _finite_number(v: Any) -> bool:
    # bool is an int subclass, but True as a joint angle is a malformed message, not 1 rad.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _xyz(d: Any, keys: str, what: str) -> list[float]:
    if not isinstance(d, dict):
        raise MessageError(f"{what} must be an object with fields {list(keys)}")
    out = []
    for k in keys:
        v = d.get(k)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise MessageError(f"{what}.{k} must be a finite number, got {v!r}")
        out.append(float(v))
    return out


def decode_pose_stamped(msg: dict) -> tuple[np.ndarray, np.ndarray]:
    """``PoseStamped`` -> (position (3), euler xyz (3))."""
    pose = msg.get("pose")
    if not isinstance(pose, dict):
        raise MessageError("PoseStamped.pose is missing")
    position = _xyz(pose.get("position"), "xyz", "PoseStamped.pose.position")
    quat = _xyz(pose.get("orientation"), "xyzw", "PoseStamped.pose.orientation")
    return np.array(position), euler_from_quat(quat)


def encode_joint_state(
    names: Sequence[str], positions: Sequence[float], t: float, frame_id: str, ros_version: int
) -> dict[str, Any]:
    return {
        "header": header(t, frame_id, ros_version),
        "name": list(names),
        "position": [float(p) for p in positions],
        "velocity": [],
        "effort": [],
    }


def decode_joint_state(
    msg: dict, arm_joints: Sequence[str], finger_joints: Sequence[str]
) -> tuple[np.ndarray, float | None]:
    """``JointState`` -> (arm joint angles in ``arm_joints`` order, gripper width or None).

    The width is the sum of the finger joint positions (CALVIN's ``robot_obs[6]``), None when the
    message carries no finger joints.
    """
    names, positions = msg.get("name"), msg.get("position")
    if not isinstance(names, list) or not isinstance(positions, list) or len(names) != len(positions):
        raise MessageError("JointState.name and JointState.position must be lists of equal length")
    by_name = dict(zip(names, positions))
    missing = [j for j in arm_joints if j not in by_name]
    if missing:
        raise MessageError(f"JointState lacks arm joints {missing} (has {names})"[:300])
    used = [j for j in (*arm_joints, *finger_joints) if j in by_name]
    bad = {j: by_name[j] for j in used if not _finite_number(by_name[j])}
    if bad:
        raise MessageError(f"JointState.position must hold finite numbers, got {bad}"[:300])
    arm = np.array([float(by_name[j]) for j in arm_joints])
    fingers = [float(by_name[j]) for j in finger_joints if j in by_name]
    width = float(sum(fingers)) if fingers and len(fingers) == len(finger_joints) else None
    return arm, width


JOINT_FIELDS = ("position", "velocity", "effort")


def decode_joint_values(msg: dict, joints: Sequence[str], field: str = "position") -> np.ndarray:
    """One ``JointState`` field (position, velocity or effort) of ``joints``, in that order; a
    missing joint, a short field or a non-finite value is a ``MessageError`` naming it."""
    if field not in JOINT_FIELDS:
        raise ValueError(f"JointState has no field '{field}' (one of {list(JOINT_FIELDS)})")
    names, values = msg.get("name"), msg.get(field)
    if not isinstance(names, list) or not isinstance(values, list):
        raise MessageError(f"JointState.name and JointState.{field} must be lists")
    if len(values) != len(names):
        raise MessageError(f"JointState.{field} has {len(values)} values for {len(names)} names")
    by_name = dict(zip(names, values))
    missing = [j for j in joints if j not in by_name]
    if missing:
        raise MessageError(f"JointState lacks joints {missing} (has {names})"[:300])
    bad = {j: by_name[j] for j in joints if not _finite_number(by_name[j])}
    if bad:
        raise MessageError(f"JointState.{field} must hold finite numbers, got {bad}"[:300])
    return np.array([float(by_name[j]) for j in joints])


def encode_joint_trajectory(
    names: Sequence[str], positions: Sequence[float], t: float, frame_id: str, ros_version: int, duration_s: float
) -> dict[str, Any]:
    """``trajectory_msgs/JointTrajectory`` with one point reached ``duration_s`` after its stamp (a
    trajectory controller interpolates to it, so the duration bounds the joint speed it asks for)."""
    return {
        "header": header(t, frame_id, ros_version),
        "joint_names": list(names),
        "points": [{
            "positions": [float(p) for p in positions],
            "velocities": [],
            "accelerations": [],
            "effort": [],
            "time_from_start": stamp_to_msg(duration_s, ros_version),  # a Duration: {secs, nsecs} / {sec, nanosec}
        }],
    }


def encode_joint_command(
    names: Sequence[str], positions: Sequence[float], t: float, frame_id: str, ros_version: int, type_str: str,
    duration_s: float,
) -> dict[str, Any]:
    """Joint position targets as ``sensor_msgs/JointState`` or ``trajectory_msgs/JointTrajectory``."""
    kind = base_type(type_str)
    if kind == "JointTrajectory":
        return encode_joint_trajectory(names, positions, t, frame_id, ros_version, duration_s)
    if kind == "JointState":
        return encode_joint_state(names, positions, t, frame_id, ros_version)
    raise ValueError(f"a joint command is a JointState or a JointTrajectory, not '{type_str}'")


def decode_joint_command(msg: dict) -> tuple[list[str], np.ndarray]:
    """A joint command (``JointState``, or the last point of a ``JointTrajectory``) as (names, positions)."""
    if "joint_names" in msg:
        points = msg.get("points")
        if not isinstance(points, list) or not points or not isinstance(points[-1], dict):
            raise MessageError("JointTrajectory.points must be a non-empty list of points")
        names, positions = msg["joint_names"], points[-1].get("positions")
        what = "JointTrajectory.points[-1].positions"
    else:
        names, positions = msg.get("name"), msg.get("position")
        what = "JointState.position"
    if not isinstance(names, list) or not isinstance(positions, list) or len(names) != len(positions):
        raise MessageError(f"{what} must be a list as long as the joint names")
    if not all(_finite_number(v) for v in positions):
        raise MessageError(f"{what} must hold finite numbers")
    return [str(n) for n in names], np.asarray(positions, dtype=np.float64)


def decode_joint_trajectory(msg: dict, joints: Sequence[str]) -> np.ndarray:
    """``JointTrajectory`` -> the last point's positions in ``joints`` order."""
    names, points = msg.get("joint_names"), msg.get("points")
    if not isinstance(names, list) or not isinstance(points, list) or not points:
        raise MessageError("JointTrajectory needs joint_names and at least one point")
    positions = points[-1].get("positions") if isinstance(points[-1], dict) else None
    if not isinstance(positions, list) or len(positions) != len(names):
        raise MessageError("JointTrajectory.points[-1].positions must hold one value per joint name")
    by_name = dict(zip(names, positions))
    missing = [j for j in joints if j not in by_name]
    if missing:
        raise MessageError(f"JointTrajectory lacks joints {missing} (has {names})"[:300])
    bad = {j: by_name[j] for j in joints if not _finite_number(by_name[j])}
    if bad:
        raise MessageError(f"JointTrajectory positions must be finite numbers, got {bad}"[:300])
    return np.array([float(by_name[j]) for j in joints])


# -- std_msgs ----------------------------------------------------------------------------------------
def encode_float(value: float, type_str: str) -> dict[str, Any]:
    """``std_msgs/Float32``/``Float64`` or a one-element ``Float64MultiArray``/``Float32MultiArray``."""
    if "MultiArray" in base_type(type_str):
        return encode_float_array([value])
    return {"data": float(value)}


def encode_float_array(values: Sequence[float]) -> dict[str, Any]:
    return {"layout": {"dim": [], "data_offset": 0}, "data": [float(v) for v in values]}


def decode_float_array(msg: dict, length: int | None = None) -> np.ndarray:
    data = msg.get("data")
    if isinstance(data, (int, float)):
        data = [data]
    if not isinstance(data, list) or not all(_finite_number(v) for v in data):
        raise MessageError("the message's 'data' must be a finite number or a list of finite numbers")
    if length is not None and len(data) != length:
        raise MessageError(f"expected {length} values in 'data', got {len(data)}")
    return np.asarray(data, dtype=np.float64)
