"""A thin roslibpy wrapper: connect, subscribe and publish by ``TopicConfig``, never queue when offline.

roslibpy reconnects by itself after the bridge drops (exponential backoff from
``deploy.reconnect_delay_s``) and re-sends its subscribe/advertise messages. What it also does is queue
``publish`` calls made while offline and flush them on reconnect (``send_on_ready``); for robot
commands that would replay stale targets, so ``publish`` here refuses when the link is down.
Subscriber callbacks run on roslibpy's network thread and must stay short.

With a rosauth secret (``deploy.rosauth_secret_file`` or ``$ROBOFLAMINGO_ROSAUTH_SECRET``) every
(re)connection starts with a fresh rosbridge ``auth`` op (``deploy.auth``), before any subscription.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from roboflamingo.deploy.auth import ROSAUTH_ENV, read_secret, rosauth_message
from roboflamingo.deploy.config import BridgeConfig, TopicConfig
from roboflamingo.deploy.messages import type_name

LOG = logging.getLogger("roboflamingo.bridge")


def make_bridge(cfg: BridgeConfig, node_name: str) -> Any:
    """The link ``deploy.link`` names: ``RosBridge`` (rosbridge) or ``RclpyBridge`` (a native ROS 2
    node called ``deploy.node_name``, else ``node_name``)."""
    if cfg.link == "rclpy":
        from roboflamingo.deploy.rclpy_bridge import RclpyBridge

        return RclpyBridge(cfg, cfg.node_name or node_name)
    return RosBridge(cfg)


class RosBridge:
    def __init__(self, cfg: BridgeConfig) -> None:
        import roslibpy
        from roslibpy.comm import select_factory

        self.cfg = cfg
        factory = select_factory(cfg.transport)
        # Class-level knobs in roslibpy: they apply to every connection of this transport in the process.
        factory.set_initial_delay(cfg.reconnect_delay_s)
        factory.set_max_delay(cfg.max_reconnect_delay_s)
        self._roslibpy = roslibpy
        self.ros = roslibpy.Ros(cfg.host, cfg.port, transport=cfg.transport)
        self._subscribed: list[Any] = []
        self._publishers: dict[str, Any] = {}
        self.drops = 0
        # Publishes the bridge refused (a rosbridge ``status`` error naming the publish's id), per
        # topic, and the first refusal's text: another session owns the command topics, or the topic
        # has another type. rosbridge has no acknowledgement, so this arrives a moment after the
        # publish that caused it; ``publish`` refuses everything after it.
        self.refusals: Counter[str] = Counter()
        self.refused = ""
        self._closing = False
        self.ros.on("close", self._on_close)
        # roslibpy has no handler for rosbridge's "status" op (it logs "No handler registered"), so
        # each connection gets ours.
        self.ros.on("ready", self._handle_status)
        self.ros.factory.on_ready(self._handle_status)
        secret = read_secret("", cfg.rosauth_secret_file, ROSAUTH_ENV, what="rosauth secret")
        if secret and cfg.ros_version == 2:
            LOG.warning(
                "deploy.rosauth: rosbridge for ROS 2 (rosbridge_suite 2.x) has no `authenticate` mode, so the "
                "secret is sent but not checked there (only ROS 1's rosbridge and our relay verify it); "
                "protect the robot's rosbridge by its address (bind to loopback or a private network)"
            )
        if secret:
            # The auth op must be the first frame of every connection (rosbridge drops whatever an
            # unauthenticated client sends first). roslibpy.Ros() starts dialling in its constructor, so
            # the first connection may open before the "ready" listener below exists: on_ready covers
            # that one, and the lock sends at most one auth per connection, before anyone else can send.
            lock, authenticated = threading.Lock(), [None]

            def authenticate(proto: Any) -> None:
                with lock:
                    if authenticated[0] is proto:
                        return
                    authenticated[0] = proto
                    msg = rosauth_message(
                        secret, client=cfg.rosauth_client, dest=cfg.host, level=cfg.rosauth_level
                    )
                    proto.send_ros_message(roslibpy.Message(msg))

            self.ros.on("ready", authenticate)  # every reconnection
            self.ros.factory.on_ready(authenticate)  # this connection, if it is already open

    def _handle_status(self, proto: Any) -> None:
        handlers = getattr(proto, "_message_handlers", None)
        if isinstance(handlers, dict):
            handlers["status"] = self._on_status

    def _on_status(self, message: Any) -> None:
        level, text, msg_id = message.get("level"), str(message.get("msg", ""))[:300], str(message.get("id") or "")
        if level != "error" or not msg_id.startswith("publish:"):
            LOG.info("rosbridge status (%s): %s", level, text)
            return
        topic = msg_id[len("publish:"):].rpartition(":")[0]  # roslibpy's ids: publish:<topic>:<n>
        if topic not in self._publishers:
            return
        self.refusals[topic] += 1
        if not self.refused:
            self.refused = f"a publish on {topic} was refused by the bridge: {text}"
            LOG.error("%s; no further commands are sent", self.refused)

    def _on_close(self, *_: Any) -> None:
        if self._closing:
            return
        self.drops += 1
        LOG.warning("bridge connection to %s:%d lost; roslibpy will reconnect", self.cfg.host, self.cfg.port)

    def connect(self) -> RosBridge:
        self.ros.run(timeout=self.cfg.connect_timeout_s)
        return self

    @property
    def connected(self) -> bool:
        return bool(self.ros.is_connected)

    def subscribe(
        self, topic: TopicConfig, callback: Callable[[dict], None], queue_length: int | None = None
    ) -> None:
        t = self._roslibpy.Topic(
            self.ros,
            topic.name,
            type_name(topic.type, self.cfg.ros_version),
            throttle_rate=self.cfg.throttle_rate_ms,
            queue_length=self.cfg.queue_length if queue_length is None else queue_length,
        )
        t.subscribe(callback)
        self._subscribed.append(t)

    def advertise(self, topic: TopicConfig, latch: bool = False) -> None:
        if topic.name in self._publishers:
            return
        t = self._roslibpy.Topic(
            self.ros, topic.name, type_name(topic.type, self.cfg.ros_version), latch=latch
        )
        t.advertise()
        self._publishers[topic.name] = t

    def publish(self, topic: TopicConfig, msg: dict) -> bool:
        """Send now or not at all; returns False while disconnected or once a publish was refused."""
        if not self.connected or self.refused:
            return False
        if topic.name not in self._publishers:
            self.advertise(topic)
        self._publishers[topic.name].publish(self._roslibpy.Message(msg))
        return True

    def close(self) -> None:
        self._closing = True
        try:
            if self.connected:
                for t in self._subscribed:
                    t.unsubscribe()
                for t in self._publishers.values():
                    t.unadvertise()
            self.ros.close()
        except Exception as e:  # closing a half-dead link must not mask the caller's result
            LOG.warning("closing the bridge connection failed: %s", e)
        # Without this the factory keeps redialling a bridge that never came up, for the process's life.
        stop_trying = getattr(self.ros.factory, "stopTrying", None)  # twisted's reconnecting factory
        if stop_trying is not None:
            stop_trying()
        else:
            self.ros.factory._stop = True  # the asyncio factory has no public switch
