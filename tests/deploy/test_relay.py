"""The loopback rosbridge speaks enough of rosbridge v2 for roslibpy: topics, latching, services."""

import json
import threading

import roslibpy
from websockets.sync.client import connect

from roboflamingo.deploy.bridge import RosBridge
from roboflamingo.deploy.config import BridgeConfig, TopicConfig

from .rosbridge_mock import RosbridgeRelay, wait_for

CHATTER = TopicConfig("/chatter", "std_msgs/String")


def test_publish_subscribe_unsubscribe_and_latch():
    with RosbridgeRelay() as relay:
        cfg = BridgeConfig(port=relay.port)
        a, b = RosBridge(cfg).connect(), RosBridge(cfg).connect()
        try:
            got = []
            b.subscribe(CHATTER, lambda m: got.append(m["data"]))
            assert wait_for(lambda: relay.counts["subscribe"] >= 1)
            a.advertise(CHATTER)
            a.publish(CHATTER, {"data": "one"})
            assert wait_for(lambda: got == ["one"])
            b._subscribed[0].unsubscribe()
            assert wait_for(lambda: relay.counts["unsubscribe"] >= 1)
            a.publish(CHATTER, {"data": "two"})
            assert wait_for(lambda: len(relay.published("/chatter")) == 2)
            assert got == ["one"]
            # a latched topic reaches a subscriber that arrives later
            latched = TopicConfig("/latched", "std_msgs/String")
            a.advertise(latched, latch=True)
            a.publish(latched, {"data": "hello"})
            assert wait_for(lambda: relay.latched.get("/latched") == {"data": "hello"})
            late = []
            b.subscribe(latched, lambda m: late.append(m["data"]))
            assert wait_for(lambda: late == ["hello"])
            assert relay.counts["advertise"] >= 2
        finally:
            a.close()
            b.close()
        assert wait_for(lambda: relay.counts["unadvertise"] >= 2)


def test_services_are_routed_between_clients_and_get_time_is_built_in():
    with RosbridgeRelay() as relay:
        server = roslibpy.Ros("127.0.0.1", relay.port, transport="asyncio")
        client = roslibpy.Ros("127.0.0.1", relay.port, transport="asyncio")
        server.run(5)
        client.run(5)
        try:
            service = roslibpy.Service(server, "/add", "rospy_tutorials/AddTwoInts")

            def add(request, response):
                response["sum"] = request["a"] + request["b"]
                return True

            service.advertise(add)
            assert wait_for(lambda: "/add" in relay.services)
            caller = roslibpy.Service(client, "/add", "rospy_tutorials/AddTwoInts")
            assert caller.call(roslibpy.ServiceRequest({"a": 2, "b": 3}), timeout=5)["sum"] == 5
            assert client.get_time()["secs"] > 1_600_000_000
            failed = threading.Event()
            roslibpy.Service(client, "/missing", "std_srvs/Trigger").call(
                roslibpy.ServiceRequest(), callback=lambda r: None, errback=lambda e: failed.set()
            )
            assert failed.wait(5)
            service.unadvertise()
            assert wait_for(lambda: "/add" not in relay.services)
        finally:
            server.close()
            client.close()


def test_bad_frames_get_a_status_message_and_the_relay_keeps_serving():
    with RosbridgeRelay() as relay:
        with connect(f"ws://127.0.0.1:{relay.port}") as ws:
            for frame in (
                "not json",
                json.dumps([1]),
                json.dumps({"op": "teleport"}),
                json.dumps({"op": "publish"}),
            ):
                ws.send(frame)
                reply = json.loads(ws.recv(timeout=5))
                assert reply["op"] == "status" and reply["level"] == "error" and reply["msg"]
            ws.send(json.dumps({"op": "subscribe", "topic": "/t", "id": "s1"}))
            ws.send(json.dumps({"op": "publish", "topic": "/t", "msg": {"data": 1}}))
            assert json.loads(ws.recv(timeout=5)) == {"op": "publish", "topic": "/t", "msg": {"data": 1}}
        assert relay.counts["errors"] == 4
