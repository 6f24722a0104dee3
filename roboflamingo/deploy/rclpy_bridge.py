"""The native ROS 2 link (``deploy.link=rclpy``): the bridge interface of ``RosBridge`` on an rclpy node.

The control loop, the safety filter and the message code (``messages.py``) work on rosbridge's JSON
form of a message (dicts, ``{sec, nanosec}`` stamps). This module converts between that form and
rclpy's message objects, so one control node runs over either link: rosbridge when the policy host
has no ROS, or a node of its own on the robot's ROS 2 graph (rclpy from ``.venv-ros2`` or a ROS
install). The conversion follows rosbridge's ``message_conversion`` where it matters here:
``uint8[]`` fields accept base64 text or bytes on the way in; on the way out they are ``bytes``
(rosbridge sends base64; ``messages.decode_image`` reads both) so a camera frame is not encoded
just to be decoded again.

Quality of service follows what a subscription asks for, in rosbridge's terms: ``queue_length=0``
(the e-stop, the instruction, a robot's command topics) is RELIABLE with a queue of 10, nothing
dropped; a positive ``queue_length`` (camera frames and robot state) is BEST_EFFORT keeping the
newest ``queue_length`` messages, which matches publishers of either reliability (camera drivers
often publish best effort). Publishers are RELIABLE, depth 1, VOLATILE (``latch``: TRANSIENT_LOCAL),
so a robot driver that joins late never receives an old target. A QoS mismatch that stops delivery
(e.g. a best-effort e-stop publisher and our reliable subscription) is logged as an error.

The node spins on its own thread in its own rclpy context, so several links (the tests' sim robot
and control node) can share a process.
"""

from __future__ import annotations

import array
import base64
import binascii
import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from roboflamingo.deploy.config import BridgeConfig, TopicConfig
from roboflamingo.deploy.messages import MessageError

LOG = logging.getLogger("roboflamingo.rclpy")

_INTS = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "char", "octet"}
_FLOATS = {"float", "double", "long double"}


def message_class(type_str: str) -> type:
    """``sensor_msgs/msg/Image`` (or ``sensor_msgs/Image``) -> the rclpy message class."""
    parts = type_str.split("/")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] != "msg") or not all(parts):
        raise ValueError(f"'{type_str}' is not a ROS 2 message type (pkg/msg/Type or pkg/Type)")
    pkg, name = parts[0], parts[-1]
    try:
        module = importlib.import_module(f"{pkg}.msg")
        cls = getattr(module, name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"message type '{type_str}' is not installed in this environment ({e})") from e
    return cls


def _nested_class(slot: Any) -> type:
    return getattr(importlib.import_module(".".join(slot.namespaces)), slot.name)


def _uint8_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise MessageError(f"{where} is not valid base64") from e
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)) and all(type(v) is int and 0 <= v < 256 for v in value):
        return bytes(value)
    raise MessageError(f"{where} must be base64 text, bytes or a list of 0..255, got {type(value).__name__}")


def _basic(typename: str, value: Any, where: str) -> Any:
    if typename == "boolean":
        if not isinstance(value, (bool, int)) or isinstance(value, float):
            raise MessageError(f"{where} must be a boolean, got {value!r}"[:200])
        return bool(value)
    if typename in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MessageError(f"{where} must be a number, got {value!r}"[:200])
        return float(value)
    if typename in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(f"{where} must be an integer, got {value!r}"[:200])
        return value
    return value


def _from_json(slot: Any, value: Any, where: str) -> Any:
    from rosidl_parser import definition as d

    if isinstance(slot, d.NamespacedType):
        return from_dict(_nested_class(slot), value, where)
    if isinstance(slot, (d.AbstractString, d.AbstractWString)):
        if not isinstance(value, str):
            raise MessageError(f"{where} must be a string, got {type(value).__name__}")
        return value
    if isinstance(slot, d.AbstractNestedType):
        vt = slot.value_type
        if isinstance(vt, d.BasicType) and vt.typename == "uint8":
            raw = _uint8_bytes(value, where)
            if isinstance(slot, d.Array):
                return np.frombuffer(raw, dtype=np.uint8).copy()
            return array.array("B", raw)
        if not isinstance(value, (list, tuple)):
            raise MessageError(f"{where} must be a list, got {type(value).__name__}")
        return [_from_json(vt, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(slot, d.BasicType):
        return _basic(slot.typename, value, where)
    return value


def from_dict(cls: type, fields: Any, where: str = "") -> Any:
    """A rosbridge-style dict -> an instance of ``cls``; missing fields keep their defaults.

    An unknown field is an error (as in rosbridge): a ROS 1 ``seq`` or a typo would otherwise vanish.
    """
    where = where or cls.__name__
    if not isinstance(fields, dict):
        raise MessageError(f"{where} must be an object, got {type(fields).__name__}")
    msg = cls()
    names = list(cls.get_fields_and_field_types())
    slots = dict(zip(names, cls.SLOT_TYPES))
    for key, value in fields.items():
        if key not in slots:
            raise MessageError(f"{where} has no field '{key}' (fields: {names})")
        setattr(msg, key, _from_json(slots[key], value, f"{where}.{key}"))
    return msg


def _to_json(value: Any) -> Any:
    if hasattr(value, "get_fields_and_field_types"):
        return to_dict(value)
    if isinstance(value, array.array):
        return value.tobytes() if value.typecode == "B" else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tobytes() if value.dtype == np.uint8 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def to_dict(msg: Any) -> dict[str, Any]:
    """An rclpy message -> rosbridge's dict form (``uint8[]`` as bytes)."""
    return {name: _to_json(getattr(msg, name)) for name in msg.get_fields_and_field_types()}


def type_string(cls: type) -> str:
    """The ``pkg/msg/Type`` name of an rclpy message class."""
    module = cls.__module__.split(".")
    return f"{module[0]}/msg/{cls.__name__}"


class RclpyBridge:
    """``RosBridge``'s interface (connect, subscribe, advertise, publish, close, ``connected``,
    ``drops``) on a native rclpy node named ``node_name``."""

    def __init__(self, cfg: BridgeConfig, node_name: str) -> None:
        try:
            import rclpy
        except ImportError as e:
            raise ImportError(
                "deploy.link=rclpy needs rclpy: run under .venv-ros2/bin/python (`make ros2`) or in a "
                f"sourced ROS 2 environment ({e})"
            ) from e
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.cfg = cfg
        self.drops = 0  # DDS has no connection to drop; kept for the summary's shape
        self._rclpy = rclpy
        self.context = rclpy.Context()
        # No signal handlers of rclpy's own: the command's KeyboardInterrupt handling stays in charge.
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(node_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._publishers: dict[str, tuple[Any, type]] = {}
        self._subscriptions: list[Any] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------
    def connect(self) -> RclpyBridge:
        if self._thread is None:
            self._thread = threading.Thread(target=self._spin, name=f"rclpy-{self.node.get_name()}", daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok() and not self._closed:
                self.executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass

    @property
    def connected(self) -> bool:
        return not self._closed and self.context.ok()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            self._thread.join(5.0)
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            if self.context.ok():
                self._rclpy.shutdown(context=self.context)

    # -- topics ------------------------------------------------------------------------------------
    def _qos(self, queue_length: int, reliable: bool, latch: bool = False) -> Any:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=max(1, queue_length),
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latch else DurabilityPolicy.VOLATILE,
        )

    def _incompatible(self, topic: str, what: str) -> Callable[[Any], None]:
        def report(event: Any) -> None:
            LOG.error("%s on %s: QoS incompatible with the other side (policy %s); no messages flow",
                      what, topic, getattr(event, "last_policy_kind", "?"))

        return report

    def subscribe(
        self, topic: TopicConfig, callback: Callable[[dict], None], queue_length: int | None = None
    ) -> None:
        from rclpy.event_handler import SubscriptionEventCallbacks

        cls = message_class(topic.type)
        q = self.cfg.queue_length if queue_length is None else queue_length
        qos = self._qos(10, reliable=True) if q == 0 else self._qos(q, reliable=False)

        def deliver(msg: Any) -> None:
            callback(to_dict(msg))

        events = SubscriptionEventCallbacks(incompatible_qos=self._incompatible(topic.name, "subscription"))
        self._subscriptions.append(
            self.node.create_subscription(cls, topic.name, deliver, qos, event_callbacks=events)
        )

    def advertise(self, topic: TopicConfig, latch: bool = False) -> None:
        from rclpy.event_handler import PublisherEventCallbacks

        if topic.name in self._publishers:
            return
        cls = message_class(topic.type)
        events = PublisherEventCallbacks(incompatible_qos=self._incompatible(topic.name, "publisher"))
        pub = self.node.create_publisher(cls, topic.name, self._qos(1, reliable=True, latch=latch),
                                         event_callbacks=events)
        self._publishers[topic.name] = (pub, cls)

    def publish(self, topic: TopicConfig, msg: dict) -> bool:
        """Send now or not at all; returns False once closed."""
        if not self.connected:
            return False
        if topic.name not in self._publishers:
            self.advertise(topic)
        pub, cls = self._publishers[topic.name]
        pub.publish(from_dict(cls, msg, topic.name))
        return True
