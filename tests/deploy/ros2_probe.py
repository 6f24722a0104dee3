"""A plain rclpy node that the ROS 2 tests steer over stdin: it records what arrives on the graph and
publishes what it is told, as an independent observer of the sim robot, rosbridge and the control node.

Run under the ROS 2 venv: ``python tests/deploy/ros2_probe.py '<json: {"subscribe": [[topic, type], ...]}>'``.
It prints ``PROBE READY`` once subscribed, then answers each stdin line (a JSON request with an
``id``) with one ``PROBE {"id": ..., ...}`` line:

* ``{"op": "publish", "topic", "type", "msg"}``: publish once; ``header.stamp`` (when the message has a
  header) is set to now plus ``stamp_offset_s`` (default 0). Answers the wall time it was published.
* ``{"op": "stream", "name", "period_s", "messages": [{"topic", "type", "msg", "stamp_offset_s"}]}``:
  publish the set every ``period_s`` (each stamped now + its offset); ``{"op": "offset", "name",
  "topic", "stamp_offset_s"}`` changes one offset and answers when the first set with it went out;
  ``{"op": "stop", "name"}`` ends a stream.
* ``{"op": "dump", "topic"}``: what arrived: per message the rclpy type (``pkg/msg/Type``), header
  frame and stamp, receive time, and the fields (``uint8[]`` as its length).
* ``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import rclpy
from rclpy.duration import Duration
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from roboflamingo.deploy.rclpy_bridge import from_dict, message_class, to_dict, type_string


def stamp_msg(msg, offset_s: float) -> None:
    if hasattr(msg, "header"):
        t = time.time() + offset_s
        msg.header.stamp.sec = int(t)
        msg.header.stamp.nanosec = int((t - int(t)) * 1e9)


def summarize(value):
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: summarize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [summarize(v) for v in value]
    return value


DISCOVERY_WAIT_S = 10.0


class Probe:
    def __init__(self, subscribe: list[list[str]]) -> None:
        self.node = rclpy.create_node("roboflamingo_test_probe")
        self.lock = threading.Lock()
        self.received: dict[str, list[dict]] = {}
        self.publishers: dict[str, object] = {}
        self.streams: dict[str, dict] = {}
        # Reliable + volatile: matches every publisher we test (rosbridge's are reliable + transient local).
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        for topic, type_str in subscribe:
            self.received[topic] = []
            self.node.create_subscription(message_class(type_str), topic, self._recorder(topic), qos)

    def _recorder(self, topic: str):
        def record(msg) -> None:
            now = time.time()
            header = getattr(msg, "header", None)
            entry = {
                "type": type_string(type(msg)),
                "recv": now,
                "frame_id": header.frame_id if header is not None else None,
                "stamp": header.stamp.sec + header.stamp.nanosec * 1e-9 if header is not None else None,
                "msg": summarize(to_dict(msg)),
            }
            with self.lock:
                self.received[topic].append(entry)

        return record

    def publisher(self, topic: str, type_str: str):
        if topic not in self.publishers:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
            self.publishers[topic] = self.node.create_publisher(message_class(type_str), topic, qos)
        return self.publishers[topic]

    def publish(self, topic: str, type_str: str, fields: dict, offset_s: float = 0.0, matched: bool = False) -> float:
        """``matched``: wait (bounded) until a subscriber is matched, and after publishing until it has
        acknowledged the message. A volatile message sent while discovery is still half done is lost,
        and two topics' messages can arrive in either order, so a test's gripper command could miss the
        step its target pose makes (seen in CI). Streams repeat, and may start before anyone listens."""
        msg = from_dict(message_class(type_str), fields, topic)
        stamp_msg(msg, offset_s)
        publisher = self.publisher(topic, type_str)
        deadline = time.time() + DISCOVERY_WAIT_S
        while matched and publisher.get_subscription_count() == 0 and time.time() < deadline:
            time.sleep(0.01)
        publisher.publish(msg)
        if matched:
            publisher.wait_for_all_acked(Duration(seconds=DISCOVERY_WAIT_S))
        return time.time()

    def tick(self, name: str) -> None:
        with self.lock:
            stream = self.streams.get(name)
            if stream is None:
                return
            items = list(stream["messages"])
            waiting = stream.pop("waiting", None)
        for m in items:
            self.publish(m["topic"], m["type"], m["msg"], m.get("stamp_offset_s", 0.0))
        if waiting is not None:
            reply(waiting, published=time.time())

    def handle(self, req: dict) -> bool:
        op = req["op"]
        if op == "publish":
            reply(req["id"], published=self.publish(req["topic"], req["type"], req["msg"], req.get("stamp_offset_s", 0.0),
                                                   matched=True))
        elif op == "stream":
            for m in req["messages"]:
                self.publisher(m["topic"], m["type"])
            with self.lock:
                self.streams[req["name"]] = {"messages": req["messages"]}
            timer = self.node.create_timer(req["period_s"], lambda n=req["name"]: self.tick(n))
            self.streams[req["name"]]["timer"] = timer
            reply(req["id"], started=time.time())
        elif op == "offset":
            with self.lock:
                stream = self.streams[req["name"]]
                for m in stream["messages"]:
                    if m["topic"] == req["topic"]:
                        m["stamp_offset_s"] = req["stamp_offset_s"]
                stream["waiting"] = req["id"]  # answered by the next tick, once the new stamps are out
        elif op == "stop":
            with self.lock:
                stream = self.streams.pop(req["name"])
            self.node.destroy_timer(stream["timer"])
            reply(req["id"], stopped=time.time())
        elif op == "dump":
            with self.lock:
                reply(req["id"], messages=list(self.received[req["topic"]]))
        elif op == "quit":
            reply(req["id"])
            return False
        else:
            reply(req["id"], error=f"unknown op {op}")
        return True


_out = threading.Lock()


def reply(req_id, **fields) -> None:
    with _out:
        sys.stdout.write("PROBE " + json.dumps({"id": req_id, **fields}) + "\n")
        sys.stdout.flush()


def main() -> None:
    spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    rclpy.init()
    probe = Probe(spec.get("subscribe", []))
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(probe.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    print("PROBE READY", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() and not probe.handle(json.loads(line)):
                break
    finally:
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
