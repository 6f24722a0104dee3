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


@dataclass
class AugmentConfig:
    """Training-time image augmentation, drawn once per window so all its frames move together.

    Args:
        shift: random shift (DrQ's RandomShiftsAug): replicate-pad each camera by its pad and crop
            back at a random offset. A pad is given in pixels at the camera's declared size (its robot
            description) and scaled to the actual image size, so CALVIN's 200 px static camera read
            at 100 px gets 5 px.
        static_shift_px, gripper_shift_px: the pads of cameras ``rgb_static`` and ``rgb_gripper``
            (CALVIN's, the original recipe's 10 px and 4 px).
        shift_px: pads of other cameras by name, e.g. ``{front: 24, wrist: 16}``.
        shift_fraction: the pad of a camera named nowhere above, as a fraction of its declared
            shorter side (0.05 is CALVIN's static camera: 10 of 200 px).
        color_jitter: colour jitter, off by default (the original recipe has none); factors are
            drawn uniformly from [1 - x, 1 + x] once per window and camera.
        brightness, contrast, saturation: the jitter widths x.
    """

    shift: bool = True
    static_shift_px: int = 10
    gripper_shift_px: int = 4
    shift_px: dict[str, int] = field(default_factory=dict)
    shift_fraction: float = 0.05
    color_jitter: bool = False
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        require_positive("data.augment.static_shift_px", self.static_shift_px, allow_zero=True)
        require_positive("data.augment.gripper_shift_px", self.gripper_shift_px, allow_zero=True)
        for name, px in self.shift_px.items():
            require_positive(f"data.augment.shift_px.{name}", px, allow_zero=True)
        if not 0.0 <= self.shift_fraction < 0.5:
            raise ValueError(f"data.augment.shift_fraction must be in [0, 0.5), got {self.shift_fraction}")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"data.augment.{name} must be in [0, 1), got {value}")

    def pad_px(self, camera: str, height: int, width: int) -> int:
        """The shift pad of ``camera`` in pixels at its declared size ``height`` x ``width``."""
        fixed = {"rgb_static": self.static_shift_px, "rgb_gripper": self.gripper_shift_px, **self.shift_px}
        if camera in fixed:
            return int(fixed[camera])
        return int(round(self.shift_fraction * min(height, width)))


@dataclass
class LeRobotConfig:
    """How a LeRobotDataset v3's features become a robot description (``roboflamingo.data.lerobot``).

    The description is derived from ``meta/info.json`` (cameras from its image and video features,
    ``observation.images.<name>``; the state and the action with their ``names``), taken from
    ``data.robot`` when that is set (for what info.json cannot say: binary grippers, bounds, relative
    or absolute), or from ``meta/robot.json`` when the dataset carries one (our exports do). Every
    feature it needs must be present with the right dtype and shape, and the dataset's fps must be
    ``fps``. The task string of each frame becomes the instruction.

    Args:
        cameras: the cameras by name, in image-slot order (each is the feature
            ``observation.images.<name>`` unless ``camera_features`` or the two fields below rename
            it); empty: the description's cameras, else every image and video feature of
            meta/info.json in its order.
        camera_features: camera name -> LeRobot feature, only where the feature is not
            ``observation.images.<name>``, e.g. ``{rgb_static: observation.images.top}``.
        rgb_static, rgb_gripper: the features of cameras named ``rgb_static`` / ``rgb_gripper``
            (CALVIN's), kept for configs written before camera_features.
        robot_obs: the feature read as the robot's state vector (named after CALVIN's robot_obs).
        rel_actions: the feature read as the action vector (named after CALVIN's rel_actions).
        state_names, action_names: the names of the state / action entries where meta/info.json has
            none (LeRobot writes null when the recorder gave none) or names them differently from
            data.robot; empty: meta/info.json's, else data.robot's, else ``<key>_<i>``.
        fps: the frame rate the dataset must have (CALVIN and our tabletop run at 30 Hz).
    """

    cameras: list[str] = field(default_factory=list)
    camera_features: dict[str, str] = field(default_factory=dict)
    rgb_static: str = "observation.images.rgb_static"
    rgb_gripper: str = "observation.images.rgb_gripper"
    robot_obs: str = "observation.state"
    rel_actions: str = "action"
    state_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
    fps: int = 30

    def __post_init__(self) -> None:
        for name in ("rgb_static", "rgb_gripper", "robot_obs", "rel_actions"):
            if not getattr(self, name):
                raise ValueError(f"data.lerobot.{name} must name a feature of the dataset")
        for name, feature in self.camera_features.items():
            if not feature:
                raise ValueError(f"data.lerobot.camera_features.{name} must name a feature of the dataset")
            legacy = {"rgb_static": self.rgb_static, "rgb_gripper": self.rgb_gripper}.get(name)
            if legacy is not None and legacy != f"observation.images.{name}" and legacy != feature:
                raise ValueError(f"data.lerobot.camera_features.{name}={feature} contradicts "
                                 f"data.lerobot.{name}={legacy}")
        if len(set(self.cameras)) != len(self.cameras) or not all(self.cameras):
            raise ValueError(f"data.lerobot.cameras must be distinct non-empty names, got {list(self.cameras)}")
        for name in ("state_names", "action_names"):
            names = getattr(self, name)
            if len(set(names)) != len(names):
                raise ValueError(f"data.lerobot.{name} must not repeat a name, got {list(names)}")
        require_positive("data.lerobot.fps", self.fps)

    def camera_feature(self, camera: str) -> tuple[str, str]:
        """(LeRobot feature, the option that names it) of one of our cameras."""
        if camera in self.camera_features:
            return self.camera_features[camera], f"data.lerobot.camera_features.{camera}"
        if camera in ("rgb_static", "rgb_gripper"):
            return getattr(self, camera), f"data.lerobot.{camera}"
        return f"observation.images.{camera}", f"data.lerobot.camera_features.{camera}"


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
        robot: the robot the data must be for: a built-in name (``roboflamingo.robots``: calvin,
            so101, ...) or a description file (YAML/JSON); a split whose description has other shapes
            is refused, naming both. A LeRobot dataset also takes from it what meta/info.json cannot
            say (binary grippers, bounds, relative or absolute). Empty: the split's own ``robot.json``
            (CALVIN's when it has none) or, for LeRobot, the description derived from the dataset.
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
        paraphrase_file: YAML/JSON mapping task name -> list of sentences, added to the paraphrases
            (a path, or ``package:<module>/<path>`` for a file a package ships); null: the split's own
            annotations only.
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
    robot: str | None = None
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
