"""``CalvinDataset``: windows of language-annotated CALVIN-layout segments as training samples.

One sample (the training batch schema of ``roboflamingo.robot`` without the batch dim; T = window,
A = act_steps, cameras channel-first), its keys and sizes from the split's robot description
(``dataset.robot``; CALVIN's shown in brackets)::

    <camera>      torch.uint8   (T, 3, H, W)       one per camera, native size (rgb_static 200x200,
                  torch.float32 (T, 3, S, S)       rgb_gripper 84x84), or, with data.image_size = S,
                                                   resized and normalized
    <state.key>   torch.float32 (T, S)             [robot_obs, 15]
    actions       torch.float32 (T, A, action dim) the action (``action.key`` [rel_actions, 7]) of
                                                   frames t, t+1, ..., t+A-1
    action_mask   torch.bool    (T, A)             False where t+k is past the segment's end
    instruction   str                              (``collate`` makes it a list of B strings)

Windows follow the original: every start frame ``s .. e-T+1`` (every ``window_stride``-th) of each
annotated segment ``(s, e)`` (inclusive, like CALVIN's loaders), so all T observed frames lie
inside the segment. A future action past ``e`` would belong to whatever the robot did after the
instruction was fulfilled, so it is not trained on: its slot repeats the action of frame ``e``
(keeping values in range) and ``action_mask`` is False there.

Randomness (augmentation, paraphrases) comes from ``np.random.default_rng([seed, epoch, index])``,
so a sample depends only on (seed, epoch, index): the npz and packed paths, any number of workers
and any rank give identical samples. Samplers yield ``(index, epoch)`` keys; a plain int means
epoch 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from roboflamingo.data.augment import (
    draw_jitter,
    draw_shift,
    jitter_window,
    shift_pad,
    shift_window,
)
from roboflamingo.data.config import DataConfig
from roboflamingo.data.layout import (
    DatasetError,
    frame_keys,
    frame_path,
    load_split_index,
    probe_image_shapes,
    read_frame,
    read_split_robot,
    require_robot_option,
    require_same_robot,
)
from roboflamingo.data.packed import MANIFEST, PackedSplit, packed_dir_for
from roboflamingo.data.stats import compute_normalization
from roboflamingo.resources import resolve_path
from roboflamingo.robot import RobotDescription
from roboflamingo.types import ACTION_MASK, ACTIONS, INSTRUCTION

__all__ = ["CalvinDataset", "WindowSampler", "collate", "compute_normalization", "make_dataloader", "sample_keys"]


def split_robot(cfg: DataConfig, split: str) -> RobotDescription:
    """The description of ``split`` as :class:`CalvinDataset` will read it, without opening the split:
    a CALVIN-layout split's ``robot.json`` (CALVIN's without one), or the one a LeRobot dataset (or a
    split kept only as shards) was packed with."""
    split_dir = Path(cfg.root) / split
    if split_dir.is_dir() and cfg.format != "lerobot":
        return read_split_robot(split_dir)
    return read_split_robot(packed_dir_for(cfg.root, split, cfg.packed_root))


def sample_keys(robot: RobotDescription) -> tuple[str, ...]:
    """The keys of one sample (and of a collated batch) for ``robot``."""
    return (*robot.camera_names, robot.state.key, ACTIONS, ACTION_MASK, INSTRUCTION)


def build_windows(segments: np.ndarray, window: int, stride: int) -> np.ndarray:
    """int64 (K, 2): (segment index, first frame) of every window that fits inside its segment."""
    rows = []
    for i, (s, e) in enumerate(segments):
        starts = np.arange(s, e - window + 2, stride, dtype=np.int64)
        if len(starts):
            rows.append(np.stack([np.full_like(starts, i), starts], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)


def _load_paraphrases(path: str) -> dict[str, list[str]]:
    p = resolve_path(path, "data.paraphrase_file")
    try:
        text = p.read_text()
        table = json.loads(text) if p.suffix == ".json" else __import__("yaml").safe_load(text)
    except FileNotFoundError as e:
        raise DatasetError(f"{p}: paraphrase file (data.paraphrase_file) is missing") from e
    except Exception as e:
        raise DatasetError(f"{p}: unreadable paraphrase file ({e})") from e
    if not isinstance(table, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in table.values()
    ):
        raise DatasetError(f"{p}: expected a mapping task name -> list of sentences")
    return {str(k): list(v) for k, v in table.items()}


class CalvinDataset(Dataset):
    """Map-style dataset over one split; ``dataset[i]`` or ``dataset[(i, epoch)]`` is one sample dict.

    ``dataset.robot`` is the split's robot description: its ``robot.json`` (CALVIN's when it has
    none) or, for a LeRobot dataset, the one derived when it was packed; ``data.robot``, when set, is
    checked against it. ``augment`` defaults to True for ``cfg.train_split`` and False otherwise; paraphrases follow
    ``cfg.paraphrase`` on the training split only. Opening validates the index files fully and
    checks that the needed frame files exist; frames are checked again as they are read.
    """

    def __init__(
        self,
        cfg: DataConfig,
        split: str | None = None,
        *,
        augment: bool | None = None,
        paraphrase: bool | None = None,
        seed: int = 0,
        resize: str = "bilinear",
    ):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.cfg = cfg
        self.split = split or cfg.train_split
        training = self.split == cfg.train_split
        self.augment = training if augment is None else augment
        self.paraphrase = (cfg.paraphrase and training) if paraphrase is None else paraphrase
        self.seed = seed
        # With data.image_size, workers resize as the policy's ``step`` does (model.vision.resize),
        # so a fine-tuned converted checkpoint trains on the pixels it acts on.
        self.resize = resize
        self.split_dir = Path(cfg.root) / self.split
        self.packed_dir = packed_dir_for(cfg.root, self.split, cfg.packed_root)
        has_packed = (self.packed_dir / MANIFEST).is_file()
        if cfg.use_packed == "always" and not has_packed:
            raise DatasetError(
                f"{self.packed_dir / MANIFEST}: data.use_packed=always but the split is not packed "
                "(run `roboflamingo pack`)"
            )
        lerobot = cfg.format == "lerobot"
        if lerobot and not has_packed:
            # Decoding video per window would make training speed depend on the codec.
            raise DatasetError(
                f"{self.packed_dir / MANIFEST}: data.format=lerobot reads packed shards; run "
                f"`roboflamingo pack data=lerobot data.root={cfg.root} splits=[{self.split}]` first"
            )
        self.use_packed = has_packed and (cfg.use_packed != "never" or lerobot)
        calvin_dir = self.split_dir.is_dir() and not lerobot
        source = self.split_dir if calvin_dir or not self.use_packed else self.packed_dir
        self.index = load_split_index(source, check_files=cfg.check_files_on_open and not self.use_packed)
        if self.use_packed:
            self.packed: PackedSplit | None = PackedSplit(
                self.packed_dir, self.index, self.split_dir if calvin_dir else None
            )
            if lerobot:
                from roboflamingo.data.lerobot import check_packed_source, lerobot_robot

                check_packed_source(self.split_dir, self.packed.manifest, self.packed_dir / MANIFEST)
                # The mapping or data.robot may have changed since packing; the shards cannot follow.
                require_same_robot(self.packed.robot, lerobot_robot(self.split_dir, cfg.lerobot, cfg.robot),
                                   f"the packed split {self.packed_dir / MANIFEST}",
                                   f"{self.split_dir} read with data.lerobot / data.robot as configured now",
                                   "; re-run `roboflamingo pack`")
            self.image_shapes = self.packed.image_shapes
        else:
            self.packed = None
            self.image_shapes = probe_image_shapes(self.index)
        self.robot = self.index.robot
        self._keys = frame_keys(self.robot)
        if not lerobot:
            require_robot_option(cfg.robot, self.robot, str(source))
        self.windows = build_windows(self.index.segments, cfg.window, cfg.window_stride)
        if len(self.windows) == 0:
            longest = int((self.index.segments[:, 1] - self.index.segments[:, 0]).max(initial=-1)) + 1
            raise DatasetError(
                f"{self.split_dir}: no annotated segment is at least data.window={cfg.window} frames long "
                f"(longest: {longest})"
            )
        self._pools: dict[str, list[str]] = {}
        if self.paraphrase:
            extra = _load_paraphrases(cfg.paraphrase_file) if cfg.paraphrase_file else {}
            for task, sentence in zip(self.index.tasks, self.index.instructions):
                self._pools.setdefault(task, list(extra.get(task, [])))
                if sentence not in self._pools[task]:
                    self._pools[task].append(sentence)

    def __len__(self) -> int:
        return len(self.windows)

    def window_frames(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(observed frame ids (T,), action frame ids (T, A), action mask (T, A)) of one window."""
        seg, first = self.windows[index]
        end = int(self.index.segments[seg, 1])
        obs = first + np.arange(self.cfg.window, dtype=np.int64)
        wanted = obs[:, None] + np.arange(self.cfg.act_steps, dtype=np.int64)[None, :]
        return obs, np.minimum(wanted, end), wanted <= end

    def _read(self, first: int, n_obs: int, n_act: int) -> dict[str, np.ndarray]:
        if self.packed is not None:
            return self.packed.read_frames(first, n_obs, n_act)
        robot, action = self.robot, self.robot.action.key
        frames = [
            read_frame(frame_path(self.split_dir, first + i), self._keys if i < n_obs else (action,),
                       self.image_shapes, robot)
            for i in range(n_act)
        ]
        out = {key: np.stack([f[key] for f in frames[:n_obs]]) for key in self._keys if key != action}
        for key in robot.camera_names:
            out[key] = np.ascontiguousarray(out[key].transpose(0, 3, 1, 2))
        out[robot.state.key] = out[robot.state.key].astype(np.float32)
        out[action] = np.stack([f[action] for f in frames]).astype(np.float32)
        return out

    def __getitem__(self, key: int | tuple[int, int] | Sequence[int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        if not 0 <= index < len(self.windows):
            raise IndexError(f"window index {index} out of range for {len(self.windows)} windows")
        rng = np.random.default_rng([self.seed, epoch, index])
        obs_ids, act_ids, mask = self.window_frames(index)
        first = int(obs_ids[0])
        data = self._read(first, len(obs_ids), int(act_ids.max()) - first + 1)
        cameras = self.robot.camera_names
        images = {cam: data[cam] for cam in cameras}
        if self.augment:
            images = self._augment(images, rng)
        sample: dict[str, Any] = {}
        for cam in cameras:
            tensor = torch.from_numpy(images[cam])
            if self.cfg.image_size is not None:
                from roboflamingo.transforms import preprocess_images

                tensor = preprocess_images(tensor, self.cfg.image_size, self.cfg.image_mean, self.cfg.image_std,
                                           resize=self.resize)
            sample[cam] = tensor
        sample[self.robot.state.key] = torch.from_numpy(data[self.robot.state.key])
        sample[ACTIONS] = torch.from_numpy(data[self.robot.action.key][act_ids - first])
        sample[ACTION_MASK] = torch.from_numpy(mask)
        seg = int(self.windows[index, 0])
        sentence = self.index.instructions[seg]
        if self.paraphrase:
            pool = self._pools[self.index.tasks[seg]]
            sentence = pool[int(rng.integers(len(pool)))]
        sample[INSTRUCTION] = sentence
        return sample

    def _augment(self, images: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        aug = self.cfg.augment
        out = {}
        # Draw order is fixed (shift per camera, then jitter per camera) so samples are reproducible.
        for camera in self.robot.cameras:
            cam = camera.name
            img = images[cam]
            if aug.shift:
                # Pads are given at the camera's declared size and scaled to the frames' actual one.
                px = aug.pad_px(cam, camera.height, camera.width)
                h, w = img.shape[-2:]
                dy, dx = draw_shift(rng, shift_pad(px, h, camera.height), shift_pad(px, w, camera.width))
                img = shift_window(img, dy, dx)
            out[cam] = img
        if aug.color_jitter:
            for cam in self.robot.camera_names:
                out[cam] = jitter_window(out[cam], draw_jitter(rng, aug.brightness, aug.contrast, aug.saturation))
        return out


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into the training batch of ``roboflamingo.types`` (instruction: list of str)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    keys = list(samples[0])
    for i, s in enumerate(samples):
        if list(s) != keys:
            raise ValueError(f"collate: sample {i} has keys {list(s)}, sample 0 has {keys} (two robots in one batch?)")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        batch[key] = list(values) if key == INSTRUCTION else torch.stack(values)
    return batch


class WindowSampler(Sampler):
    """Each rank's disjoint share of a seed- and epoch-determined permutation, as ``(index, epoch)``.

    Rank r takes positions r, r + W, r + 2W, ... of the permutation (W = world_size). With
    ``drop_last`` the permutation is first cut to a multiple of W so that every rank gets the same
    number of samples (a different < W samples are left out each epoch); without it the shares
    cover the split exactly and differ in length by at most one. Call ``set_epoch`` every epoch.
    """

    def __init__(
        self,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if drop_last and num_samples < world_size:
            raise ValueError(f"{num_samples} samples cannot be split evenly across {world_size} ranks")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.epoch, self.shuffle, self.drop_last = seed, epoch, shuffle, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 0x5A3]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        if self.drop_last:
            order = order[: self.num_samples - self.num_samples % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(int(i), epoch) for i in self.indices()])

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return len(range(self.rank, self.num_samples, self.world_size))


def _worker_init(_: int) -> None:
    # Image resizing in workers must not fight the trainer (and each other) for cores.
    torch.set_num_threads(1)


def make_dataloader(
    cfg: DataConfig,
    split: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
    *,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    augment: bool | None = None,
    dataset: CalvinDataset | None = None,
    resize: str = "bilinear",
) -> DataLoader:
    """A DataLoader over one rank's share of ``split`` (training split by default).

    Training defaults: shuffled, augmented, ``cfg.drop_last``; other splits: in order, no
    augmentation, nothing dropped. ``loader.sampler`` is the ``WindowSampler``: call
    ``loader.sampler.set_epoch(e)`` at the start of each epoch (works with persistent workers, since
    the epoch travels with every index).
    """
    split = split or cfg.train_split
    training = split == cfg.train_split
    ds = dataset if dataset is not None else CalvinDataset(cfg, split, augment=augment, seed=seed, resize=resize)
    drop = (cfg.drop_last if training else False) if drop_last is None else drop_last
    sampler = WindowSampler(
        len(ds), rank, world_size, seed=seed, epoch=epoch,
        shuffle=training if shuffle is None else shuffle, drop_last=drop,
    )
    workers = cfg.num_workers
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=cfg.pin_memory,
        drop_last=drop,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        persistent_workers=cfg.persistent_workers and workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
