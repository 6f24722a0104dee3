"""Bridge and topic configuration shared by the control node and the simulated robot.

The group ``configs/deploy/`` holds one file per ROS generation (``ros1.yaml``, ``ros2.yaml``); both
nodes compose the same group so their topic names always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roboflamingo.config import require_choice, require_positive
from roboflamingo.deploy.messages import base_type
from roboflamingo.robots.calvin import ARM_JOINT_STATES

IMAGE_TYPES = ("CompressedImage", "Image")
LINKS = ("rosbridge", "rclpy")
FLOAT_TYPES = ("Float32", "Float64", "Float32MultiArray", "Float64MultiArray")


@dataclass
class TopicConfig:
    """One ROS topic of the bridge.

    Args:
        name: the topic's name; empty: the topic is not used (optional inputs only).
        type: its message type: ``pkg/Type`` for ROS 1, ``pkg/msg/Type`` for ROS 2.
    """

    name: str = ""
    type: str = ""


@dataclass
class TopicsConfig:
    """The robot's topics: inputs the control node subscribes to, outputs it publishes.

    Args:
        rgb_static: input: the static camera's images (``CompressedImage`` or ``Image``).
        rgb_gripper: input: the gripper camera's images.
        tcp_pose: input: the end effector's pose in the base frame (``PoseStamped``).
        joint_state: input: the arm and finger joints (``JointState``), read for ``robot_obs``.
        gripper_width: input: a separate gripper opening width in m; empty: the sum of the finger
            joints in ``joint_state``.
        instruction: input: the language instruction (``String``), unless ``control.instruction`` is set.
        estop: input: the latching e-stop (``Bool``); any message but an explicit false stops the arm.
        scene_obs: input: CALVIN's privileged scene state (24 floats) for the scripted expert; sim only.
        target_pose: output: the end-effector target pose after the safety filter (``PoseStamped``).
        gripper_command: output: the gripper command, -1 close / 1 open (a float message).
    """

    rgb_static: TopicConfig = field(
        default_factory=lambda: TopicConfig("/camera/static/image/compressed", "sensor_msgs/CompressedImage")
    )
    rgb_gripper: TopicConfig = field(
        default_factory=lambda: TopicConfig("/camera/gripper/image/compressed", "sensor_msgs/CompressedImage")
    )
    tcp_pose: TopicConfig = field(default_factory=lambda: TopicConfig("/tcp_pose", "geometry_msgs/PoseStamped"))
    joint_state: TopicConfig = field(
        default_factory=lambda: TopicConfig("/joint_states", "sensor_msgs/JointState")
    )
    gripper_width: TopicConfig = field(default_factory=lambda: TopicConfig("", "std_msgs/Float32"))
    instruction: TopicConfig = field(default_factory=lambda: TopicConfig("/instruction", "std_msgs/String"))
    estop: TopicConfig = field(default_factory=lambda: TopicConfig("/estop", "std_msgs/Bool"))
    scene_obs: TopicConfig = field(default_factory=lambda: TopicConfig("", "std_msgs/Float64MultiArray"))
    target_pose: TopicConfig = field(
        default_factory=lambda: TopicConfig("/target_pose", "geometry_msgs/PoseStamped")
    )
    gripper_command: TopicConfig = field(
        default_factory=lambda: TopicConfig("/gripper_command", "std_msgs/Float32")
    )
    # A joint-space robot's position targets: sensor_msgs/JointState or trajectory_msgs/JointTrajectory.
    joint_command: TopicConfig = field(
        default_factory=lambda: TopicConfig("/joint_command", "sensor_msgs/JointState")
    )


JOINT_COMMAND_TYPES = ("JointState", "JointTrajectory")
DEFAULT_CAMERA_TYPE = "sensor_msgs/CompressedImage"


@dataclass
class BridgeConfig:
    """How the node reaches the robot's ROS graph and how the robot's topics are named (group
    ``configs/deploy/``). The robot's shapes come from the policy's description; ``robot``,
    ``cameras``, ``state_sources`` and ``command_joints`` say where a robot other than CALVIN's keeps
    them on ROS.

    Args:
        robot: the robot this node drives: a built-in name (``so101``, ...) or a YAML/JSON description
            file; a policy for another robot is refused, naming both. Empty: the policy's own description.
        cameras: the image topic of each of the robot's cameras, by camera name
            (``deploy.cameras.front.name=/cam/front/compressed``; type sensor_msgs/CompressedImage
            unless given, or sensor_msgs/Image). CALVIN's two cameras use topics.rgb_static and
            topics.rgb_gripper.
        state_sources: where each entry of a joint-space robot's state comes from, in the
            description's order: a JointState joint name (its position), ``velocity:<joint>``,
            ``effort:<joint>``, ``pose:x|y|z|roll|pitch|yaw|qx|qy|qz|qw`` (topics.tcp_pose) or
            ``gripper_width`` (topics.gripper_width). Empty: each state name is a joint name, a
            trailing ``.pos`` dropped (LeRobot's motor names).
        command_joints: the JointState/JointTrajectory joint each action dimension of a joint-space
            robot commands, in the description's order (a binary gripper's entry is unused: it goes
            to topics.gripper_command). Empty: each action name, a trailing ``.pos`` dropped.
        link: ``rosbridge``: JSON over a websocket to rosbridge_server at host:port (no ROS on this
            machine); ``rclpy``: a node of its own on this machine's ROS 2 graph, chosen by
            ``ROS_DOMAIN_ID`` (needs rclpy, e.g. ``make ros2``'s .venv-ros2, and ros_version 2; host,
            port, transport and rosauth are then unused).
        node_name: the ROS 2 node's name with link=rclpy; empty: the command's own default
            (``roboflamingo_control``, ``roboflamingo_sim_robot``).
        host: the rosbridge server's host.
        port: its websocket port.
        ros_version: 1: ``pkg/Type`` names and ``{secs, nsecs}`` stamps; 2: ``pkg/msg/Type`` and
            ``{sec, nanosec}``.
        transport: roslibpy's transport: ``asyncio`` or ``twisted`` (one per process).
        connect_timeout_s: give up when the first connection takes longer.
        reconnect_delay_s: the first retry after a dropped connection; the backoff grows from here.
        max_reconnect_delay_s: the longest wait between retries.
        frame_id: the base frame target poses are stamped with.
        arm_joints: the 7 arm joints' names in ``joint_state``, in ``robot_obs`` order.
        finger_joints: the finger joints' names, whose positions sum to the gripper width.
        queue_length: rosbridge's queue per subscription; 1 so a slow consumer gets the newest
            frame, not a backlog (roslibpy#41); 0: rosbridge's default.
        throttle_rate_ms: minimum time between messages rosbridge sends per topic; 0: no throttling.
        rosauth_secret_file: rosauth (rosbridge's ``authenticate`` mode): a file whose first line is
            the shared secret; empty reads ``$ROBOFLAMINGO_ROSAUTH_SECRET``, and with neither no auth
            op is sent.
        rosauth_client: the ``client`` field of the auth op.
        rosauth_level: the ``level`` field of the auth op; our relay gives the command topics to
            ``control`` only.
        topics: the robot's topic names and message types.
    """

    link: str = "rosbridge"
    node_name: str = ""
    host: str = "127.0.0.1"
    port: int = 9090
    ros_version: int = 1
    transport: str = "asyncio"
    connect_timeout_s: float = 10.0
    reconnect_delay_s: float = 0.5
    max_reconnect_delay_s: float = 5.0
    frame_id: str = "panda_link0"
    arm_joints: list[str] = field(default_factory=lambda: [f"panda_joint{i}" for i in range(1, 8)])
    finger_joints: list[str] = field(default_factory=lambda: ["panda_finger_joint1", "panda_finger_joint2"])
    queue_length: int = 1
    throttle_rate_ms: int = 0
    rosauth_secret_file: str = ""
    rosauth_client: str = "roboflamingo"
    rosauth_level: str = "control"
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    robot: str = ""
    cameras: dict[str, TopicConfig] = field(default_factory=dict)
    state_sources: list[str] = field(default_factory=list)
    command_joints: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ros_version not in (1, 2):
            raise ValueError(f"deploy.ros_version must be 1 or 2, got {self.ros_version}")
        require_choice("deploy.transport", self.transport, ("asyncio", "twisted"))
        require_choice("deploy.link", self.link, LINKS)
        if self.link == "rclpy" and self.ros_version != 2:
            raise ValueError("deploy.link=rclpy is a ROS 2 node: it needs deploy.ros_version=2 (deploy=ros2)")
        if not 0 < self.port < 65536:
            raise ValueError(f"deploy.port must be in [1, 65535], got {self.port}")
        require_positive("deploy.connect_timeout_s", self.connect_timeout_s)
        require_positive("deploy.reconnect_delay_s", self.reconnect_delay_s)
        require_positive("deploy.max_reconnect_delay_s", self.max_reconnect_delay_s)
        require_positive("deploy.queue_length", self.queue_length, allow_zero=True)
        require_positive("deploy.throttle_rate_ms", self.throttle_rate_ms, allow_zero=True)
        t = self.topics
        checks = {
            "rgb_static": IMAGE_TYPES,
            "rgb_gripper": IMAGE_TYPES,
            "tcp_pose": ("PoseStamped",),
            "joint_state": ("JointState",),
            "gripper_width": FLOAT_TYPES,
            "instruction": ("String",),
            "estop": ("Bool",),
            "scene_obs": ("Float32MultiArray", "Float64MultiArray"),
            "target_pose": ("PoseStamped",),
            "gripper_command": FLOAT_TYPES,
            "joint_command": JOINT_COMMAND_TYPES,
        }
        topics = {f"topics.{key}": (getattr(t, key), allowed) for key, allowed in checks.items()}
        for name, topic in self.cameras.items():
            if not topic.name:
                raise ValueError(f"deploy.cameras.{name}.name must name the camera's image topic")
            topic.type = topic.type or DEFAULT_CAMERA_TYPE
            topics[f"cameras.{name}"] = (topic, IMAGE_TYPES)
        for key, (topic, allowed) in topics.items():
            if topic.name and base_type(topic.type) not in allowed:
                raise ValueError(
                    f"deploy.{key}.type must be one of {list(allowed)}, got '{topic.type}'"
                )
            if topic.name and self.ros_version == 1 and "/msg/" in topic.type:
                raise ValueError(
                    f"deploy.{key}.type '{topic.type}' is a ROS 2 name but deploy.ros_version=1"
                )
        if any(not source.strip() for source in self.state_sources):
            raise ValueError(f"deploy.state_sources has an empty entry: {self.state_sources}")

    def require(self, *keys: str) -> None:
        """Raise naming each of ``topics.<key>`` that is not set (what a robot's path needs)."""
        for key in keys:
            if not getattr(self.topics, key).name:
                raise ValueError(f"deploy.topics.{key}.name must be set")

    def check_calvin(self) -> None:
        """What CALVIN's end-effector path reads and writes: its topics and the Panda's 7 arm joints."""
        arm = ARM_JOINT_STATES.stop - ARM_JOINT_STATES.start
        if len(self.arm_joints) != arm:
            raise ValueError(f"deploy.arm_joints must name the {arm} arm joints, got {self.arm_joints}")
        self.require("rgb_static", "rgb_gripper", "tcp_pose", "target_pose", "gripper_command")
