"""The real ``calvin_env`` as an ``EvalEnv``, with CALVIN's own task oracle, so scores compare with
the published ones.

What it bridges (``../shared/reference/calvin.md`` §2-5):

- observations: CALVIN's nested ``{'rgb_obs': {'rgb_static', 'rgb_gripper'}, 'depth_obs': ...,
  'robot_obs', 'scene_obs'}`` becomes our flat ``{rgb_static, rgb_gripper, robot_obs, scene_obs}``;
- actions: our 7-d relative action goes in as a fresh length-7 float array (read as relative by both
  the pinned 1431a46 and HEAD ``robot.apply_action``), position/orientation clipped to [-1, 1] and the
  gripper snapped to exactly -1/+1 at 0 (``apply_action`` asserts it). A fresh array each step also
  keeps the pinned ``relative_to_absolute``, which edits its argument in place, off the policy's data;
- initial states: ``calvin_agent.evaluation.utils.get_env_state_for_initial_condition`` (neutral robot
  pose, fixed block slots, block order and yaw from ``sim.chains.calvin_block_layout``, seeded with
  pyhash's FNV-1 of the symbolic state);
- cameras: only ``static`` and ``gripper`` are built (``obs_space``), so a split whose config lists
  the tactile sensor needs no tacto;
- success: ``calvin_env.envs.tasks.Tasks`` built from ``new_playtable_tasks.yaml``, asked with
  ``get_task_info_for_set(start_info, info, {task})`` after every step, as the original does.

``calvin_env`` is imported only when ``CalvinEnv`` is built; without it the error says how to install it.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from roboflamingo.eval.protocol import side_by_side
from roboflamingo.robots.calvin import (
    ACTION_DIM,
    GRIPPER_CLOSE,
    GRIPPER_INDEX,
    GRIPPER_OPEN,
    RGB_GRIPPER,
    RGB_STATIC,
    ROBOT_OBS,
    ROBOT_OBS_DIM,
    SCENE_OBS,
    SCENE_OBS_DIM,
    block_pos,
    block_yaw,
)
from roboflamingo.sim.chains import calvin_block_layout, furniture_obs
from roboflamingo.sim.egl import prepare_egl
from roboflamingo.types import Observation

INSTALL_HINT = (
    "the real CALVIN simulator is not installed. Install it with\n"
    "  git clone https://github.com/mees/calvin_env && pip install -e calvin_env\n"
    "(an editable git checkout: calvin_env reads its own commit at run time; tacto is not needed)\n"
    "or leave eval.calvin_dataset empty to evaluate on the built-in tabletop."
)

# calvin_agent/evaluation/utils.py: the neutral pose every chain starts from.
NEUTRAL_ROBOT_OBS = np.array(
    [
        0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
        -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0,
    ]
)
BLOCK_SLIDER_LEFT = np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01])
BLOCK_SLIDER_RIGHT = np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01])
BLOCK_TABLE = (
    np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
    np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]),
)
# get_env keeps the cameras named here ("rgb_static" -> camera "static") and drops the rest.
RGB_OBS_SPACE = {"rgb_obs": [RGB_STATIC, RGB_GRIPPER], "depth_obs": []}


class CalvinNotInstalled(ImportError):
    """``calvin_env`` (or its dependencies) cannot be imported."""


def calvin_initial_state_to_obs(initial_state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """CALVIN's continuous (robot_obs, scene_obs) for a symbolic initial state."""
    layout = calvin_block_layout(initial_state)
    scene = furniture_obs(initial_state)
    slots = {"slider_right": BLOCK_SLIDER_RIGHT, "slider_left": BLOCK_SLIDER_LEFT}
    for k, (surface, table_slot, yaw) in enumerate(layout):
        scene[block_pos(k)] = BLOCK_TABLE[table_slot] if table_slot is not None else slots[surface]
        scene[block_yaw(k)] = yaw
    return NEUTRAL_ROBOT_OBS.copy(), scene


def convert_obs(calvin_obs: dict[str, Any]) -> Observation:
    """CALVIN's nested observation as our flat one (depth and tactile are dropped)."""
    try:
        rgb = calvin_obs["rgb_obs"]
        obs = {
            RGB_STATIC: np.asarray(rgb["rgb_static"], dtype=np.uint8),
            RGB_GRIPPER: np.asarray(rgb["rgb_gripper"], dtype=np.uint8),
            ROBOT_OBS: np.asarray(calvin_obs["robot_obs"], dtype=np.float32),
            SCENE_OBS: np.asarray(calvin_obs["scene_obs"], dtype=np.float32),
        }
    except KeyError as e:
        raise ValueError(
            f"calvin_env observation lacks {e}; expected {{'rgb_obs': {{'rgb_static', 'rgb_gripper'}}, "
            "'robot_obs', 'scene_obs'}} (are both cameras in the dataset's merged_config.yaml?)"
        ) from e
    if obs[ROBOT_OBS].shape != (ROBOT_OBS_DIM,) or obs[SCENE_OBS].shape != (SCENE_OBS_DIM,):
        raise ValueError(
            f"calvin_env robot_obs/scene_obs have shapes {obs[ROBOT_OBS].shape}/{obs[SCENE_OBS].shape}, "
            f"expected ({ROBOT_OBS_DIM},)/({SCENE_OBS_DIM},)"
        )
    return obs


def convert_action(action: np.ndarray) -> np.ndarray:
    """Our 7-d relative action as the fresh float64 array ``calvin_env`` reads as relative."""
    a = np.array(action, dtype=np.float64).reshape(-1)
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"action must have {ACTION_DIM} values, got shape {np.shape(action)}")
    a[:GRIPPER_INDEX] = np.clip(a[:GRIPPER_INDEX], -1.0, 1.0)
    a[GRIPPER_INDEX] = GRIPPER_OPEN if a[GRIPPER_INDEX] >= 0 else GRIPPER_CLOSE
    return a


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise CalvinNotInstalled(f"cannot import {name} ({e}): {INSTALL_HINT}") from e


# hydra turns a CALVIN config into objects by calling what each `_target_` names, so a downloaded
# split's .hydra/merged_config.yaml or a tasks file naming os.system would run it. Only calvin_env's
# own classes are instantiated from them.
TARGET_PREFIXES: tuple[str, ...] = ("calvin_env.",)


def check_targets(cfg: Any, source: str | Path) -> None:
    """Raise a ValueError naming ``source`` and the key when a ``_target_`` in ``cfg`` (an OmegaConf
    config, resolved where it resolves) is not under ``TARGET_PREFIXES``; an interpolated ``_target_``
    that does not resolve is refused too."""
    from omegaconf import OmegaConf

    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} outside a hydra run: check the literal values instead
        tree = OmegaConf.to_container(cfg, resolve=False)

    def walk(node: Any, where: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_" and not (isinstance(value, str) and value.startswith(TARGET_PREFIXES)):
                raise ValueError(f"{source}: '{path}' is {str(value)[:200]!r}; only classes under "
                                 f"{', '.join(TARGET_PREFIXES)} may be instantiated from a CALVIN config")
            walk(value, path)

    walk(tree, "")


def default_tasks_config() -> Path:
    """``conf/tasks/new_playtable_tasks.yaml`` beside the installed ``calvin_env`` package."""
    package = _import("calvin_env")
    return Path(package.__file__).resolve().parents[1] / "conf" / "tasks" / "new_playtable_tasks.yaml"


def write_split_config(directory: str | Path, use_egl: bool = True) -> Path:
    """A CALVIN split directory holding just ``.hydra/merged_config.yaml``: all evaluation reads of a
    downloaded split.

    The config is what a recorded split carries: calvin_env's own ``config_data_collection`` composed
    by hydra from the installed calvin_env's ``conf/`` with scene D and the static, gripper and
    tactile cameras, unresolved as hydra saves it (``env.cameras`` is ``${cameras}``) and with
    ``data_path: data`` (calvin_env resolves it against its checkout). ``use_egl=False`` renders
    with PyBullet's TinyRenderer instead of the EGL plugin.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from roboflamingo.io import atomic_write_text

    conf = default_tasks_config().parents[1]
    with warnings.catch_warnings(), initialize_config_dir(str(conf), version_base=None):
        warnings.simplefilter("ignore", UserWarning)  # calvin_env's defaults list predates `_self_`
        cfg = compose("config_data_collection", overrides=[
            "cameras=static_gripper_tactile", "use_vr=false", "data_path=data", f"env.use_egl={str(use_egl).lower()}",
        ])
    OmegaConf.set_struct(cfg, False)
    for key in ("vr_input", "recorder", "hydra", "_group_"):  # data collection only
        cfg.pop(key, None)
    out = Path(directory) / ".hydra" / "merged_config.yaml"
    atomic_write_text(out, OmegaConf.to_yaml(cfg))
    return Path(directory)


class CalvinEnv:
    """``calvin_env``'s ``PlayTableSimEnv`` built from a dataset split, as an ``EvalEnv``."""

    def __init__(self, dataset_dir: str, tasks_config: str | None = None):
        play_table_env = _import("calvin_env.envs.play_table_env")
        dataset = Path(dataset_dir)
        self.dataset_dir = str(dataset)
        merged = dataset / ".hydra" / "merged_config.yaml"
        if not merged.is_file():
            raise FileNotFoundError(
                f"eval.calvin_dataset={dataset_dir}: {merged} not found; point it at a CALVIN split "
                "directory such as task_D_D/validation"
            )
        tasks_path = Path(tasks_config) if tasks_config else default_tasks_config()
        if not tasks_path.is_file():
            raise FileNotFoundError(
                f"eval.calvin_tasks_config: {tasks_path} not found; pass CALVIN's new_playtable_tasks.yaml"
            )
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        check_targets(OmegaConf.load(merged), merged)  # get_env instantiates its env section
        tasks_cfg = OmegaConf.load(tasks_path)
        check_targets(tasks_cfg, tasks_path)
        self.oracle = instantiate(tasks_cfg)
        # Only the two RGB cameras: a split's config also lists the tactile sensor, which would need
        # tacto (its urdfpy breaks on current numpy, and it opens a GUI window); nothing reads it.
        prepare_egl()  # calvin_env loads the EGL plugin while it builds the env
        from hydra.core.global_hydra import GlobalHydra

        hydra_was_set_up = GlobalHydra.instance().is_initialized()
        self.env = play_table_env.get_env(str(dataset), obs_space=RGB_OBS_SPACE, show_gui=False)
        if not hydra_was_set_up:  # get_env initialises hydra globally; a later compose would then fail
            GlobalHydra.instance().clear()
        self._info: Any = None

    @property
    def task_names(self) -> list[str]:
        return list(self.oracle.tasks)

    def reset_to(self, initial_state: dict[str, Any], seed: int) -> Observation:
        # CALVIN's reset is fully determined by (robot_obs, scene_obs); ``seed`` has nothing to seed.
        robot_obs, scene_obs = calvin_initial_state_to_obs(initial_state)
        self.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        self._info = None
        return convert_obs(self.env.get_obs())

    def step(self, action: np.ndarray) -> Observation:
        obs, _reward, _done, info = self.env.step(convert_action(action))
        self._info = info
        return convert_obs(obs)

    def info(self) -> Any:
        # env.step already returned get_info() for the current state; asking again would only redo
        # the contact queries.
        if self._info is None:
            self._info = self.env.get_info()
        return self._info

    def successful(self, start_info: Any, task: str) -> bool:
        return task in self.oracle.get_task_info_for_set(start_info, self.info(), {task})

    def frame(self, obs: Observation) -> np.ndarray:
        return side_by_side(obs)

    def close(self) -> None:
        self.env.close()
        # PlayTableSimEnv.__del__ closes again and raises on the closed connection unless its id is unset
        self.env.cid = -1
