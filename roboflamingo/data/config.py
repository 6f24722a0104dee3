"""``DataConfig``: where a CALVIN-layout dataset lives and how its windows become training batches.

Groups: ``configs/data/tabletop.yaml`` (our generated tabletop) and ``configs/data/calvin.yaml``
(the real CALVIN release). Every field is documented in its class's ``Args:`` section, which
``--help`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roboflamingo.config import require_choice, require_positive

USE_PACKED_CHOICES = ("auto", "always", "never")
FORMAT_CHOICES = ("calvin", "lerobot")
# CALVIN's robot_obs layout (calvin_env robot.get_observation), the declared meaning of the state vector.
ROBOT_OBS_NAMES = [
    "tcp_pos.x", "tcp_pos.y", "tcp_pos.z", "tcp_orn.x", "tcp_orn.y", "tcp_orn.z", "gripper_opening_width",
    "arm_joint_0", "arm_joint_1", "arm_joint_2", "arm_joint_3", "arm_joint_4", "arm_joint_5", "arm_joint_6",
    "gripper_action",
]
# The 7-d relative action (calvin_env: scaled TCP position and orientation deltas, gripper +-1).
REL_ACTION_NAMES = ["rel_pos.x", "rel_pos.y", "rel_pos.z", "rel_orn.x", "rel_orn.y", "rel_orn.z", "gripper"]


@dataclass
class AugmentConfig:
    """Training-time image augmentation, drawn once per window so all its frames move together.

    Args:
        shift: random shift (DrQ's RandomShiftsAug): replicate-pad and crop back at a random offset.
        static_shift_px: pad of the static camera in pixels, given at CALVIN's 200 px and scaled to
            the actual image size (a 100 px tabletop image gets 5 px); 0 disables it for that camera.
        gripper_shift_px: the same for the gripper camera, given at CALVIN's 84 px.
        color_jitter: random brightness, contrast and saturation (off: the original recipe has none).
        brightness, contrast, saturation: jitter strength x in [0, 1): factors are drawn uniformly
            from [1 - x, 1 + x] once per window and camera.
    """

    shift: bool = True
    static_shift_px: int = 10
    gripper_shift_px: int = 4
    color_jitter: bool = False
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        require_positive("data.augment.static_shift_px", self.static_shift_px, allow_zero=True)
        require_positive("data.augment.gripper_shift_px", self.gripper_shift_px, allow_zero=True)
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"data.augment.{name} must be in [0, 1), got {value}")


@dataclass
class LeRobotConfig:
    """How a LeRobotDataset v3's features map onto our vocabulary (``roboflamingo.data.lerobot``).

    Opening a dataset checks every named feature against its ``meta/info.json``: present, of the
    right dtype and shape (state: ``len(state_names)``, action: ``len(action_names)``), and the
    dataset's fps equal to ``fps``. The task string of each frame becomes the instruction.

    Args:
        rgb_static: the video feature holding the static camera.
        rgb_gripper: the video feature holding the gripper camera.
        robot_obs: the state feature (CALVIN's 15-d ``robot_obs``).
        rel_actions: the action feature (CALVIN's 7-d relative action).
        state_names: the declared layout of the state vector, one name per entry (15).
        action_names: the declared layout of the action vector, one name per entry (7).
        fps: the dataset's frame rate; CALVIN (and our tabletop) run at 30 Hz, so a dataset recorded
            at another rate must say so here.
    """

    rgb_static: str = "observation.images.rgb_static"
    rgb_gripper: str = "observation.images.rgb_gripper"
    robot_obs: str = "observation.state"
    rel_actions: str = "action"
    state_names: list[str] = field(default_factory=lambda: list(ROBOT_OBS_NAMES))
    action_names: list[str] = field(default_factory=lambda: list(REL_ACTION_NAMES))
    fps: int = 30

    def __post_init__(self) -> None:
        for name in ("rgb_static", "rgb_gripper", "robot_obs", "rel_actions"):
            if not getattr(self, name):
                raise ValueError(f"data.lerobot.{name} must name a feature of the dataset")
        require_positive("data.lerobot.fps", self.fps)
        if len(self.action_names) != 7:
            raise ValueError(f"data.lerobot.action_names must have 7 entries (the relative action), got {len(self.action_names)}")
        if len(self.state_names) != 15:
            raise ValueError(f"data.lerobot.state_names must have 15 entries (robot_obs), got {len(self.state_names)}")


@dataclass
class DataConfig:
    """The dataset (CALVIN's layout or a LeRobotDataset v3) and how its windows become batches.

    Args:
        root: dataset root holding ``<train_split>/`` and ``<val_split>/`` (made by ``roboflamingo
            generate``, or a downloaded CALVIN split such as ``task_D_D``).
        format: ``calvin`` (CALVIN's npz layout) or ``lerobot`` (each split a LeRobotDataset v3
            directory, mapped by ``data.lerobot`` and trained on after ``roboflamingo pack``, which
            decodes the video once).
        lerobot: how a LeRobotDataset's features map onto ours (``data.format=lerobot`` only).
        train_split: the split trained on, a directory under ``root``; normalization statistics come
            from it.
        val_split: the split the validation loss is computed on (``train.val_every``).
        window: frames per training window (the history length T); must equal ``model.window``.
        act_steps: future actions per frame (A); must equal ``model.act_steps``.
        window_stride: step between the start frames of consecutive windows inside a segment (the
            original uses 1).
        image_size: null: images stay uint8 at native size, channel-first, and the model
            preprocesses them on the accelerator; an int: the loader workers resize to this size and
            normalize with ``image_mean``/``image_std``, handing float32 tensors to the model.
        image_mean: per-channel (RGB) mean the workers subtract with ``image_size`` set (CLIP's).
        image_std: per-channel (RGB) standard deviation they divide by (CLIP's).
        augment: training-time image augmentation (the training split only).
        paraphrase: replace a segment's instruction by a random sentence of the same task (the
            original's ``--text_aug``), drawn from the split's own annotations and ``paraphrase_file``.
        paraphrase_file: YAML/JSON mapping task name -> list of sentences, added to the paraphrases;
            null: the split's own annotations only.
        use_packed: ``auto``: read the shards ``roboflamingo pack`` made when they exist, else the npz
            files; ``always``: fail without them; ``never``: always read the npz files.
        packed_root: the packed shards of split S live in ``<packed_root>/S``; null:
            ``<root>/S/packed``.
        check_files_on_open: on open, check that every frame file an annotation needs exists (one
            directory listing; npz layout only).
        batch_size: windows per batch on each rank (per GPU); the global batch is this times
            ``train.grad_accum`` times the number of processes.
        num_workers: DataLoader worker processes per rank; 0 loads in the training process.
        pin_memory: page-locked host memory for faster copies to a GPU.
        prefetch_factor: batches each worker loads ahead.
        persistent_workers: keep the workers alive between epochs (with ``num_workers`` > 0).
        drop_last: training drops the incomplete last batch and the (< world size) windows that
            cannot be split evenly across ranks, so every rank runs the same number of steps.
    """

    root: str = "data/tabletop"
    format: str = "calvin"
    lerobot: LeRobotConfig = field(default_factory=LeRobotConfig)
    train_split: str = "training"
    val_split: str = "validation"
    window: int = 12
    act_steps: int = 1
    window_stride: int = 1
    image_size: int | None = None
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    paraphrase: bool = False
    paraphrase_file: str | None = None
    use_packed: str = "auto"
    packed_root: str | None = None
    check_files_on_open: bool = True
    batch_size: int = 8
    num_workers: int = 2
    pin_memory: bool = False
    prefetch_factor: int = 2
    persistent_workers: bool = True
    drop_last: bool = True

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("data.root must be a non-empty path")
        for name in ("train_split", "val_split"):
            if not getattr(self, name):
                raise ValueError(f"data.{name} must be a non-empty split name")
        require_positive("data.window", self.window)
        require_positive("data.act_steps", self.act_steps)
        require_positive("data.window_stride", self.window_stride)
        if self.image_size is not None:
            require_positive("data.image_size", self.image_size)
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"data.{name} must have 3 values (RGB), got {list(getattr(self, name))}")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"data.image_std values must be > 0, got {list(self.image_std)}")
        require_choice("data.use_packed", self.use_packed, USE_PACKED_CHOICES)
        require_choice("data.format", self.format, FORMAT_CHOICES)
        require_positive("data.batch_size", self.batch_size)
        require_positive("data.num_workers", self.num_workers, allow_zero=True)
        require_positive("data.prefetch_factor", self.prefetch_factor)
