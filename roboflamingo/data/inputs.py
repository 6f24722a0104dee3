"""Is a split there to read? Checked before a command writes anything, with the command that makes it.

A missing dataset is the first thing a new user meets; the readers' own errors name the path but
not the way out, so ``train``, ``pack`` and ``export-lerobot`` ask here first.
"""

from __future__ import annotations

from pathlib import Path

from roboflamingo.data.config import DataConfig
from roboflamingo.data.layout import DatasetError
from roboflamingo.data.packed import MANIFEST, packed_dir_for


def _generate_hint(root: str) -> str:
    return (f"make one with `roboflamingo generate root={root}` (scripted demonstrations on our tabletop; then "
            f"`roboflamingo pack data.root={root}` for faster reads), "
            "or set data.root to a downloaded CALVIN task folder (`data=calvin data.root=.../task_D_D`)")


def check_split(cfg: DataConfig, split: str, key: str, packed_needed: bool = False) -> None:
    """Raise ``DatasetError`` unless ``<cfg.root>/<split>`` (or its packed shards) can be opened.

    ``key`` names the setting that chose ``split`` (``data.train_split``); ``packed_needed``: the
    caller reads packed shards only (training from a LeRobot set, or ``data.use_packed=always``).
    """
    split_dir = Path(cfg.root) / split
    packed = packed_dir_for(cfg.root, split, cfg.packed_root)
    has_packed = (packed / MANIFEST).is_file()
    where = f"data.root={cfg.root}, {key}={split}"
    if cfg.format == "lerobot":
        if not split_dir.is_dir():
            raise DatasetError(
                f"{split_dir}: no LeRobotDataset v3 here ({where}); set data.root to the folder holding it, "
                f"or write one from a CALVIN-layout split with `roboflamingo export-lerobot {split_dir} "
                "data.root=<CALVIN-layout root>`"
            )
        if packed_needed and not has_packed:
            raise DatasetError(
                f"{packed / MANIFEST}: the LeRobot split is not packed yet ({where}); training reads packed "
                f"shards only: run `roboflamingo pack data=lerobot data.root={cfg.root} splits=[{split}]` first"
            )
        return
    if not split_dir.is_dir() and not has_packed:
        raise DatasetError(f"{split_dir}: no dataset split here ({where}); {_generate_hint(cfg.root)}")
    if packed_needed and not has_packed:
        raise DatasetError(
            f"{packed / MANIFEST}: data.use_packed=always but {split_dir} is not packed; run "
            f"`roboflamingo pack data.root={cfg.root} splits=[{split}]` first"
        )


def check_source_split(cfg: DataConfig, split: str, key: str = "split") -> None:
    """For commands that read a split's own files (``pack``, ``export-lerobot``), not its shards."""
    split_dir = Path(cfg.root) / split
    if split_dir.is_dir():
        return
    if cfg.format == "lerobot":
        raise DatasetError(f"{split_dir}: no LeRobotDataset v3 here (data.root={cfg.root}, {key}={split}); set "
                           "data.root to the folder holding it")
    raise DatasetError(f"{split_dir}: no dataset split here (data.root={cfg.root}, {key}={split}); "
                       f"{_generate_hint(cfg.root)}")
