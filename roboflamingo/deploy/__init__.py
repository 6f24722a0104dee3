"""Deployment: a policy server, a ROS control node with a safety layer, and the tabletop as a robot.

Modules:
    server      ``roboflamingo serve``: websocket + msgpack policy server, one session per client
    client      ``PolicyClient``: a remote policy that satisfies the ``Policy`` protocol
    codec       msgpack with a numpy codec that never unpickles, with bounded decode work
    auth        the server's bearer token and rosbridge's rosauth MAC
    ros_node    ``roboflamingo ros``: rosbridge in, safety-filtered end-effector targets out
    safety      workspace clamp, step caps, action scale, stale/e-stop/time-limit gate, latency log
    messages    ROS 1 / ROS 2 message dicts (images, poses, joint states) as rosbridge carries them
    bridge      roslibpy wrapper that never queues commands while offline (``deploy.link=rosbridge``)
    rclpy_bridge  the same interface as a native ROS 2 node (``deploy.link=rclpy``); message conversion
    sim_robot   ``roboflamingo sim-robot``: the tabletop simulator behind rosbridge or as a ROS 2 node
    relay       a minimal rosbridge v2 relay (no ROS needed) for one-machine runs and tests; rosauth,
                and command topics only from the control node's session
    ros2_graph  a private ROS 2 graph (domain, loopback discovery, rosbridge_server) driven from the
                project venv, for the tests and benches

Where a policy comes from (checkpoint, expert, random, remote) is ``roboflamingo.policies``, shared
with evaluation.

The whole ROS path on one machine, in three terminals::

    roboflamingo serve policy=expert                # or checkpoint=runs/train/checkpoints/last
    roboflamingo sim-robot serve_bridge=true        # the tabletop + an in-process rosbridge relay
    roboflamingo ros deploy=sim                     # the control node

and on a real ROS 2 graph (``make ros2``), README's "Deployment: a real ROS 2 graph".
"""
