"""Our tabletop as a vla-eval benchmark: any vla-eval model server can be scored on it.

In a vla-eval eval config (``vla-eval run --config ...``, or ``vla_eval.api.run(config, ...)``)::

    server: {url: "ws://127.0.0.1:8765/vla-eval"}       # e.g. ``roboflamingo serve``
    benchmarks:
      - benchmark: "roboflamingo.benchmarks.tabletop:TabletopBenchmark"
        params: {mode: chains, num_chains: 100, scene: D}

The episodes are exactly those of ``roboflamingo eval`` with the same settings: the same work list
(``eval.items.build_items``: CALVIN's sequence generator for chains, feasible generator states for
single-task episodes, our evaluation sentences), the same simulator and oracle
(``eval.envs.make_env``) and CALVIN's protocol as ``eval.protocol.rollout_chain`` runs it: a chain
is one vla-eval episode; each subtask has ``ep_len`` steps and is judged by the oracle against the
state at its start; the first failure ends the chain. The policy is reset where CALVIN resets it:
at ``episode_start`` and, inside a chain, by ``episode_restart: true`` on the first observation
of each later subtask (vla-eval's CALVIN benchmark uses the same flag).

Observation sent per step: ``images`` (``rgb_static``, ``rgb_gripper`` with ``send_wrist_image``),
``states`` = CALVIN ``robot_obs`` (15,) with ``send_state``, ``scene_obs`` (24,) with ``send_scene_obs``
(privileged: the scripted expert needs it) and ``task_description``. Action consumed: ``actions``,
CALVIN's 7-d relative action (a ``(n, 7)`` chunk contributes its first row). A model server can ask
for the ``send_*`` flags in its HELLO ``observation_params``; ``roboflamingo serve`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from roboflamingo.config import to_dataclass
from roboflamingo.eval.config import EvalConfig
from roboflamingo.eval.protocol import EvalEnv, EvalItem
from roboflamingo.robots.calvin import ACTION_DIM, RGB_GRIPPER, RGB_STATIC, ROBOT_OBS, SCENE_OBS
from roboflamingo.sim.config import EnvConfig

try:
    from vla_eval.benchmarks.base import StepBenchmark, StepResult
    from vla_eval.recording import NullEpisodeRecorder
    from vla_eval.specs import DimSpec
except ImportError as e:  # an optional extra
    raise ImportError(f"{__name__} needs vla-eval: pip install 'roboflamingo[vla-eval]' ({e})") from e

from roboflamingo.deploy.protocols.vla_eval import ACTION_SPEC, observation_spec


def parse_action(action: Any) -> np.ndarray:
    """A model server's action payload as our float32 (7,) action; malformed or non-finite is refused."""
    raw = action.get("actions", action.get("action")) if isinstance(action, dict) else None
    if raw is None:
        raise ValueError(f"an action payload must carry 'actions', got {sorted(action) if isinstance(action, dict) else action!r}")
    arr = np.asarray(raw, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] >= 1:
        arr = arr[0]
    if arr.shape != (ACTION_DIM,):
        raise ValueError(f"'actions' must have shape ({ACTION_DIM},) or (n, {ACTION_DIM}), got {np.shape(raw)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"'actions' holds a non-finite value: {arr.tolist()}")
    return arr


class TabletopBenchmark(StepBenchmark):
    """Our PyBullet tabletop under CALVIN's protocol, single-task or chains.

    Args:
        mode: ``chains`` (chains of 5 subtasks) or ``single_task`` (``episodes_per_task`` one-subtask
            episodes per task): ``eval.mode``.
        num_chains, chain_seed, ep_len, episodes_per_task, tasks, calvin_instructions: as in
            ``EvalConfig`` (``configs/eval/default.yaml``).
        scene: the tabletop scene (A, B, C, D or a scene YAML).
        env: further ``EnvConfig`` fields (camera sizes, ``renderer``, ``render``).
        send_wrist_image / send_state / send_scene_obs: what each observation carries (see above).
    """

    _ALL_RECORD_FIELDS = frozenset({"success", "completed_subtasks", "subtask"})
    # The renderer is chosen by ``env.renderer`` (CPU TinyRenderer by default), not by the process.
    render_backends = frozenset({"gpu", "cpu"})

    @classmethod
    def configure_render(cls, mode: str) -> dict[str, str]:
        return {}

    def __init__(
        self,
        mode: str = "chains",
        num_chains: int = 1000,
        chain_seed: int = 0,
        ep_len: int = 360,
        episodes_per_task: int = 10,
        tasks: list[str] | None = None,
        calvin_instructions: str | None = None,
        scene: str = "D",
        env: dict[str, Any] | None = None,
        send_wrist_image: bool = True,
        send_state: bool = True,
        send_scene_obs: bool = False,
    ) -> None:
        super().__init__()
        if env and "scene" in env:
            raise ValueError("TabletopBenchmark: give the scene as scene=..., not inside env")
        self.protocol = EvalConfig(
            mode=mode,
            num_chains=num_chains,
            chain_seed=chain_seed,
            ep_len=ep_len,
            episodes_per_task=episodes_per_task,
            tasks=list(tasks or []),
            calvin_instructions=calvin_instructions,
            progress=False,
        )
        self.env_config = to_dataclass({**(env or {}), "scene": scene}, EnvConfig, source="TabletopBenchmark env")
        self.send_wrist_image, self.send_state, self.send_scene_obs = send_wrist_image, send_state, send_scene_obs
        self._items: list[EvalItem] | None = None
        self._env: EvalEnv | None = None
        # the episode in progress
        self._item: EvalItem | None = None
        self._subtask = 0
        self._t = 0
        self._completed = 0
        self._start_info: Any = None
        self._restart = False
        self._recorder = NullEpisodeRecorder()  # start_episode() installs the harness's recorder

    @property
    def items(self) -> list[EvalItem]:
        if self._items is None:
            from roboflamingo.eval.items import build_items

            self._items = build_items(self.protocol)
        return self._items

    def _name(self, item: EvalItem) -> str:
        if self.protocol.mode == "chains":
            return f"chain_{item.index:04d}"
        return f"{item.tasks[0]}_{item.index:04d}"

    def get_tasks(self) -> list[dict[str, Any]]:
        return [
            {
                "name": self._name(it),
                "suite": "chains" if self.protocol.mode == "chains" else it.tasks[0],
                "index": it.index,
                "tasks": list(it.tasks),
                "instructions": list(it.instructions),
                "initial_state": dict(it.initial_state),
            }
            for it in self.items
        ]

    def reset(self, task: dict[str, Any]) -> Any:
        if self._env is None:
            from roboflamingo.eval.envs import EnvSpec, make_env

            self._env = make_env(EnvSpec("tabletop", self.env_config))
        self._item = EvalItem(task["index"], dict(task["initial_state"]), list(task["tasks"]), list(task["instructions"]))
        self._subtask = self._t = self._completed = 0
        self._restart = False
        obs = self._env.reset_to(self._item.initial_state, seed=self._item.index)
        self._start_info = self._env.info()
        return obs

    def step(self, action: Any) -> StepResult:
        if self._env is None or self._item is None:
            raise RuntimeError("TabletopBenchmark.step() before reset()")
        obs = self._env.step(parse_action(action))
        self._t += 1
        task = self._item.tasks[self._subtask]
        success = self._env.successful(self._start_info, task)
        self._completed += success
        self._recorder.record_step(
            success=self._completed == len(self._item.tasks), completed_subtasks=self._completed, subtask=task
        )
        if success:
            if self._completed == len(self._item.tasks):
                return StepResult(obs=obs, reward=1.0, done=True, info={"success": True})
            # The next subtask starts from here: new reference state, fresh policy history.
            self._subtask += 1
            self._t = 0
            self._start_info = self._env.info()
            self._restart = True
            return StepResult(obs=obs, reward=0.0, done=False, info={})
        return StepResult(obs=obs, reward=0.0, done=self._t >= self.protocol.ep_len, info={})

    def make_obs(self, raw_obs: Any, task: dict[str, Any]) -> dict[str, Any]:
        if self._item is None:
            raise RuntimeError("TabletopBenchmark.make_obs() before reset()")
        images = {RGB_STATIC: raw_obs[RGB_STATIC]}
        if self.send_wrist_image:
            images[RGB_GRIPPER] = raw_obs[RGB_GRIPPER]
        obs: dict[str, Any] = {"images": images, "task_description": self._item.instructions[self._subtask]}
        if self.send_state:
            obs["states"] = np.asarray(raw_obs[ROBOT_OBS])
        if self.send_scene_obs:
            obs[SCENE_OBS] = np.asarray(raw_obs[SCENE_OBS])
        if self._restart:
            obs["episode_restart"] = True
            self._restart = False
        return obs

    def get_step_result(self, step_result: StepResult) -> dict[str, Any]:
        n = len(self._item.tasks) if self._item is not None else 0
        return {"success": bool(n) and self._completed == n, "completed_subtasks": self._completed}

    def get_metric_keys(self) -> dict[str, str]:
        return {"success": "mean", "completed_subtasks": "mean"}

    def get_metadata(self) -> dict[str, Any]:
        # The protocol ends every episode itself; the harness's step cap must never cut in first.
        return {"max_steps": self.protocol.ep_len * max((len(it.tasks) for it in self.items), default=1)}

    def get_action_spec(self) -> dict[str, DimSpec]:
        return {k: DimSpec.from_dict(v) for k, v in ACTION_SPEC.items()}

    def get_observation_spec(self) -> dict[str, DimSpec]:
        keys = (RGB_STATIC,) + ((RGB_GRIPPER,) if self.send_wrist_image else ())
        keys += ((ROBOT_OBS,) if self.send_state else ()) + ((SCENE_OBS,) if self.send_scene_obs else ())
        return {k: DimSpec.from_dict(v) for k, v in observation_spec(keys).items()}

    def cleanup(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
