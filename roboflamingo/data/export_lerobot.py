"""``roboflamingo export-lerobot``: any split we read (CALVIN npz layout, a LeRobot set) as LeRobotDataset v3.

Each language-annotated segment becomes one LeRobot episode whose task is its instruction (the
CALVIN conversions on the Hugging Face Hub list 17,870 episodes for ABC, which matches one episode per
annotation; their files could not be inspected offline), with features named as LeRobot names them,
shapes and entry names from the split's robot description (CALVIN's shown)::

    observation.images.<camera>      video (H, W, 3)       PyAV, one stream per camera (rgb_static,
                                                           rgb_gripper)
    observation.state                float32 (state dim,)  the state (robot_obs, 15), its names
    action                           float32 (action dim,) the action (rel_actions, 7), its names
    timestamp, frame_index, episode_index, index, task_index   (LeRobot's default columns)

The description itself goes to ``meta/robot.json``, where ``roboflamingo.data.lerobot`` finds it
again: what meta/info.json cannot say (binary grippers, bounds, relative or absolute) survives the
round trip. Features renamed with ``features`` must be renamed the same way when reading back.

Files follow LeRobot's v3 layout and size caps (``roboflamingo.data.lerobot`` documents them);
``meta/stats.json`` has mean/std/min/max/count for every feature and q01..q99 for the vectors
(images: per channel, in [0, 1], shape (3, 1, 1), as LeRobot computes them). The whole dataset is
written under a temporary name and renamed into place at the end, so a failed or interrupted export
leaves nothing behind (an existing ``out`` is replaced only by a complete one).

Video defaults favour fidelity over size: H.264 in 4:4:4 at CRF 10 keeps rendered tabletop images
above 40 dB PSNR (LeRobot's own default, AV1 4:2:0 at CRF 30, smears the small gripper camera).
GOP 2 is LeRobot's: random access decodes at most one extra frame.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.config import require_choice, require_positive
from roboflamingo.data.config import DataConfig, LeRobotConfig
from roboflamingo.data.inputs import check_source_split
from roboflamingo.data.layout import (
    DatasetError,
    SplitIndex,
    frame_path,
    load_split_index,
    probe_image_shapes,
    read_frame,
    require_robot_option,
)
from roboflamingo.data.lerobot import (
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_DIR,
    INFO_PATH,
    ROBOT_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    LeRobotSplit,
)
from roboflamingo.io import atomic_dir
from roboflamingo.robot import RobotDescription

CODECS = ("h264", "libsvtav1", "hevc")
PIX_FMTS = ("yuv444p", "yuv420p")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's DEFAULT_CHUNK_SIZE)


@dataclass
class Job:
    """``roboflamingo export-lerobot OUT``: one split written as a LeRobotDataset v3 at ``out``.

    Args:
        data: the dataset the split is read from (``data.root``, ``data.format``; a LeRobot source
            is mapped by ``data.lerobot``).
        split: the split to export: ``<data.root>/<split>`` in ``data.format``'s layout.
        out: the output dataset directory (required); an existing one is replaced only once the new
            one is complete.
        features: the output feature names: LeRobot's conventions (``observation.images.<camera>``,
            ``observation.state``, ``action``) with the robot's camera names; override them
            (``features.camera_features``, ``features.robot_obs``, ...) to match a particular Hub
            conversion; ``state_names``/``action_names`` replace the description's entry names.
        robot_type: ``meta/info.json``'s ``robot_type``; empty: the robot description's name.
        vcodec: video codec: ``h264`` (default, high fidelity), ``libsvtav1`` (LeRobot's own) or
            ``hevc``.
        pix_fmt: chroma subsampling: ``yuv444p`` (keeps the small gripper images sharp) or ``yuv420p``.
        crf: the encoder's constant rate factor: lower is better quality and larger files (0:
            lossless for h264).
        gop: keyframe interval in frames (LeRobot's 2: a random access decodes at most one extra frame).
        data_file_mb: LeRobot's cap: a new Parquet data file is started once the current one passes it.
        video_file_mb: the same for each camera's MP4 files.
        threads: threads reading npz frames.
        progress: show a progress bar.
    """

    data: DataConfig = field(default_factory=DataConfig)
    split: str = "training"
    out: str = ""
    features: LeRobotConfig = field(default_factory=LeRobotConfig)
    robot_type: str = ""
    vcodec: str = "h264"
    pix_fmt: str = "yuv444p"
    crf: int = 10
    gop: int = 2
    data_file_mb: float = 100
    video_file_mb: float = 200
    threads: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        require_choice("vcodec", self.vcodec, CODECS)
        require_choice("pix_fmt", self.pix_fmt, PIX_FMTS)
        require_positive("crf", self.crf, allow_zero=True)
        require_positive("gop", self.gop)
        require_positive("data_file_mb", self.data_file_mb)
        require_positive("video_file_mb", self.video_file_mb)
        require_positive("threads", self.threads)


@dataclass
class Source:
    """A split opened for export: its index, camera shapes, and ``frames(first, n)`` in id order."""

    index: SplitIndex
    image_shapes: dict[str, tuple[int, ...]]
    frames: Callable[[int, int], Iterator[dict[str, np.ndarray]]]
    fps: int
    close: Callable[[], None] = lambda: None

    @property
    def robot(self) -> RobotDescription:
        return self.index.robot


def open_source(data: DataConfig, split: str, threads: int = 4) -> Source:
    split_dir = Path(data.root) / split
    if data.format == "lerobot":
        ds = LeRobotSplit(split_dir, data.lerobot, data.robot)
        return Source(ds.index, ds.image_shapes, ds.frames, ds.fps)
    index = load_split_index(split_dir, check_files=True)
    require_robot_option(data.robot, index.robot, str(split_dir))
    shapes = probe_image_shapes(index)
    pool = ThreadPoolExecutor(max_workers=threads)

    def frames(first: int, n: int) -> Iterator[dict[str, np.ndarray]]:
        paths = [frame_path(split_dir, f) for f in range(first, first + n)]
        yield from pool.map(lambda p: read_frame(p, None, shapes, index.robot), paths)

    # A recorded frame is one control step, so the robot's rate is the dataset's fps.
    rate = index.robot.action.rate_hz
    if rate != round(rate):
        raise DatasetError(f"{split_dir}: {index.robot.summary()} runs at {rate} Hz; LeRobot's fps must be a whole number")
    return Source(index, shapes, frames, int(round(rate)), pool.shutdown)


class _VideoWriter:
    """One camera's videos: episodes appended to the current file, a new file past the size cap."""

    def __init__(self, root: Path, key: str, job: Job, fps: int, shape: tuple[int, ...]):
        self.root, self.key, self.job, self.fps = root, key, job, fps
        self.h, self.w = shape[0], shape[1]
        self.file_index = -1
        self.container = None
        self.frames_in_file = self.bytes = 0

    def _path(self, file_index: int) -> Path:
        c, f = divmod(file_index, CHUNKS_SIZE)
        return self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=c, file_index=f)

    def _open(self) -> None:
        import av

        self.close()
        self.file_index += 1
        path = self._path(self.file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        options = {"g": str(self.job.gop), "crf": str(self.job.crf)}
        if self.job.vcodec == "libsvtav1":
            options["preset"] = "12"
        codec = "libx264" if self.job.vcodec == "h264" else self.job.vcodec
        self.stream = self.container.add_stream(codec, rate=self.fps, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.w, self.h, self.job.pix_fmt
        self.frames_in_file = self.bytes = 0

    def start_episode(self) -> dict[str, Any]:
        """Open a new file if needed; returns the episode's ``videos/<key>/...`` location fields."""
        # Bytes muxed so far, not the file's size: the encoder's look-ahead and the muxer's buffer
        # keep the file behind by up to a few dozen frames.
        if self.container is None or self.bytes >= self.job.video_file_mb * 2**20:
            self._open()
        c, f = divmod(self.file_index, CHUNKS_SIZE)
        return {f"videos/{self.key}/chunk_index": c, f"videos/{self.key}/file_index": f,
                f"videos/{self.key}/from_timestamp": self.frames_in_file / self.fps}

    def add(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.frames_in_file
        self._mux(self.stream.encode(frame))
        self.frames_in_file += 1

    def _mux(self, packets: list[Any]) -> None:
        self.bytes += sum(p.size for p in packets)
        self.container.mux(packets)

    def end_episode(self) -> dict[str, Any]:
        return {f"videos/{self.key}/to_timestamp": self.frames_in_file / self.fps}

    def close(self) -> None:
        if self.container is not None:
            self._mux(self.stream.encode())
            self.container.close()
            self.container = None


class _ImageStats:
    """Per-channel min/max/mean/std of images in [0, 1], accumulated exactly (sums in float64)."""

    def __init__(self):
        self.n = self.pixels = 0
        self.sum = np.zeros(3)
        self.sumsq = np.zeros(3)
        self.min = np.full(3, np.inf)
        self.max = np.full(3, -np.inf)

    def add(self, image: np.ndarray) -> None:
        px = image.reshape(-1, 3).astype(np.float64) / 255.0
        self.n += 1
        self.pixels += len(px)
        self.sum += px.sum(0)
        self.sumsq += (px**2).sum(0)
        self.min = np.minimum(self.min, px.min(0))
        self.max = np.maximum(self.max, px.max(0))

    def result(self) -> dict[str, Any]:
        mean = self.sum / self.pixels
        std = np.sqrt(np.maximum(self.sumsq / self.pixels - mean**2, 0.0))
        shape = lambda v: np.asarray(v).reshape(3, 1, 1).tolist()  # noqa: E731 - LeRobot's (C, 1, 1)
        return {"min": shape(self.min), "max": shape(self.max), "mean": shape(mean), "std": shape(std),
                "count": [self.n]}


def _vector_stats(values: np.ndarray) -> dict[str, Any]:
    v = values.astype(np.float64).reshape(len(values), -1)
    out = {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
           "std": v.std(0).tolist(), "count": [len(v)]}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(v, q, axis=0).tolist()
    return out


def _entry_names(job: Job, robot: RobotDescription) -> tuple[list[str], list[str]]:
    """The state's and the action's entry names as meta/info.json gets them."""
    out = []
    for what, spec in (("state", robot.state), ("action", robot.action)):
        names = list(getattr(job.features, f"{what}_names")) or list(spec.names)
        if len(names) != spec.dim:
            raise DatasetError(f"features.{what}_names has {len(names)} names, but {robot.summary()} has a "
                             f"{spec.dim}-d {what}")
        out.append(names)
    return out[0], out[1]


def _features(job: Job, robot: RobotDescription, shapes: dict[str, tuple[int, ...]], fps: int) -> dict[str, Any]:
    f = job.features
    state_names, action_names = _entry_names(job, robot)
    out: dict[str, Any] = {}
    for ours in robot.camera_names:
        h, w, c = shapes[ours]
        out[f.camera_feature(ours)[0]] = {
            "dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": "h264" if job.vcodec == "h264" else
                     ("av1" if job.vcodec == "libsvtav1" else "hevc"), "video.pix_fmt": job.pix_fmt,
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": c, "has_audio": False},
        }
    out[f.robot_obs] = {"dtype": "float32", "shape": [len(state_names)], "names": state_names}
    out[f.rel_actions] = {"dtype": "float32", "shape": [len(action_names)], "names": action_names}
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                        ("index", "int64"), ("task_index", "int64")):
        out[name] = {"dtype": dtype, "shape": [1], "names": None}
    return out


def _frame_schema(job: Job, robot: RobotDescription):
    import pyarrow as pa

    f = job.features
    return pa.schema([
        (f.robot_obs, pa.list_(pa.float32(), robot.state.dim)),
        (f.rel_actions, pa.list_(pa.float32(), robot.action.dim)),
        ("timestamp", pa.float32()), ("frame_index", pa.int64()), ("episode_index", pa.int64()),
        ("index", pa.int64()), ("task_index", pa.int64()),
    ])


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """tasks.parquet as pandas writes a frame indexed by task (what LeRobot's ``load_tasks`` reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [], "pandas_version": "2.2.0",
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}), path)


def export_split(job: Job) -> dict[str, Any]:
    """Export ``job.split``; returns the written ``info.json`` contents."""
    if not job.out:
        raise ValueError("out must name the output dataset directory")

    source = open_source(job.data, job.split, job.threads)
    try:
        return _export(job, source)
    finally:
        source.close()


class _DataWriter:
    """Frame rows into ``data/chunk-*/file-*.parquet``, a new file once the current one passes the cap."""

    def __init__(self, root: Path, job: Job, robot: RobotDescription):
        self.root, self.cap, self.schema = root, job.data_file_mb * 2**20, _frame_schema(job, robot)
        self.file_index, self.writer, self.rows = -1, None, 0

    def _path(self) -> Path:
        c, f = divmod(self.file_index, CHUNKS_SIZE)
        return self.root / DATA_PATH.format(chunk_index=c, file_index=f)

    def start_episode(self, n: int) -> dict[str, Any]:
        import pyarrow.parquet as pq

        if self.writer is None or self._path().stat().st_size >= self.cap:
            self.close()
            self.file_index += 1
            self._path().parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self._path(), self.schema, compression="snappy")
        c, f = divmod(self.file_index, CHUNKS_SIZE)
        return {"data/chunk_index": c, "data/file_index": f,
                "dataset_from_index": self.rows, "dataset_to_index": self.rows + n}

    def write(self, columns: dict[str, Any]) -> None:
        import pyarrow as pa

        self.writer.write_table(pa.table(columns, schema=self.schema))
        self.rows += len(columns["index"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _frame_columns(f: LeRobotConfig, obs: np.ndarray, act: np.ndarray, episode: int, first_row: int,
                   task: int, fps: int) -> dict[str, Any]:
    import pyarrow as pa

    n, k = len(obs), np.arange(len(obs))
    return {
        f.robot_obs: pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), obs.shape[1]),
        f.rel_actions: pa.FixedSizeListArray.from_arrays(pa.array(act.reshape(-1)), act.shape[1]),
        "timestamp": pa.array((k / fps).astype(np.float32)),
        "frame_index": pa.array(k, pa.int64()), "episode_index": pa.array(np.full(n, episode), pa.int64()),
        "index": pa.array(first_row + k, pa.int64()), "task_index": pa.array(np.full(n, task), pa.int64()),
    }


def _index_stats(episodes: list[dict[str, Any]], task_ids: dict[str, int], fps: int) -> dict[str, Any]:
    frame = np.concatenate([np.arange(ep["length"]) for ep in episodes])
    episode = np.concatenate([np.full(ep["length"], ep["episode_index"]) for ep in episodes])
    task = np.concatenate([np.full(ep["length"], task_ids[ep["tasks"][0]]) for ep in episodes])
    return {"timestamp": _vector_stats(frame / fps), "frame_index": _vector_stats(frame),
            "episode_index": _vector_stats(episode), "index": _vector_stats(np.arange(len(frame))),
            "task_index": _vector_stats(task)}


def _export(job: Job, source: Source) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    fps, f, robot = source.fps, job.features, source.robot
    cameras = robot.camera_names
    segments, instructions = source.index.segments, source.index.instructions
    if len(segments) == 0:
        raise DatasetError(f"{Path(job.data.root) / job.split}: no language-annotated segments to export")
    task_ids: dict[str, int] = {}
    for sentence in instructions:
        task_ids.setdefault(sentence, len(task_ids))
    with atomic_dir(Path(job.out)) as tmp:
        features = _features(job, robot, source.image_shapes, fps)
        videos = {ours: _VideoWriter(tmp, f.camera_feature(ours)[0], job, fps, source.image_shapes[ours]) for ours in cameras}
        image_stats = {ours: _ImageStats() for ours in cameras}
        data = _DataWriter(tmp, job, robot)
        episodes: list[dict[str, Any]] = []
        all_obs, all_act = [], []
        total = int((segments[:, 1] - segments[:, 0] + 1).sum())
        with tqdm(total=total, desc=f"export {job.split}", unit="frame", disable=not job.progress) as bar:
            for e, ((s, end), sentence) in enumerate(zip(segments, instructions)):
                n = int(end - s + 1)
                ep: dict[str, Any] = {"episode_index": e, "tasks": [sentence], "length": n, **data.start_episode(n)}
                for ours in cameras:
                    ep.update(videos[ours].start_episode())
                obs, act = np.empty((n, robot.state.dim), np.float32), np.empty((n, robot.action.dim), np.float32)
                for k, frame in enumerate(source.frames(int(s), n)):
                    for ours in cameras:
                        videos[ours].add(frame[ours])
                        image_stats[ours].add(frame[ours])
                    obs[k], act[k] = frame[robot.state.key], frame[robot.action.key]
                    bar.update(1)
                for ours in cameras:
                    ep.update(videos[ours].end_episode())
                data.write(_frame_columns(f, obs, act, e, ep["dataset_from_index"], task_ids[sentence], fps))
                episodes.append({**ep, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                all_obs.append(obs)
                all_act.append(act)
        data.close()
        for v in videos.values():
            v.close()
        stats = {f.robot_obs: _vector_stats(np.concatenate(all_obs)), f.rel_actions: _vector_stats(np.concatenate(all_act)),
                 **_index_stats(episodes, task_ids, fps)}
        for ours in cameras:
            stats[f.camera_feature(ours)[0]] = image_stats[ours].result()
        ep_path = tmp / EPISODES_DIR / "chunk-000" / "file-000.parquet"
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episodes), ep_path)
        _write_tasks(tmp / TASKS_PATH, list(task_ids))
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": job.robot_type or robot.name,
            "total_episodes": len(episodes), "total_frames": data.rows, "total_tasks": len(task_ids),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": job.data_file_mb,
            "video_files_size_in_mb": job.video_file_mb, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
            "features": features,
        }
        (tmp / INFO_PATH).write_text(json.dumps(info, indent=4))
        robot.save(tmp / ROBOT_PATH)
        (tmp / STATS_PATH).write_text(json.dumps(stats, indent=4))
    return info


def run(job: Job) -> int:
    if not job.out:
        print("roboflamingo export-lerobot: give the output directory (export-lerobot OUT or out=DIR)", file=sys.stderr)
        return 2
    try:
        check_source_split(job.data, job.split)
        info = export_split(job)
    except DatasetError as e:
        print(f"roboflamingo export-lerobot: {e}", file=sys.stderr)
        return 1
    print(f"exported {job.split}: {info['total_episodes']} episodes, {info['total_frames']} frames, "
          f"{info['total_tasks']} tasks -> {job.out} (LeRobotDataset {CODEBASE_VERSION}, {info['fps']} fps)")
    return 0
