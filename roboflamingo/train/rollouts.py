"""Closed-loop success during training (``train.rollout_every``, ``train.rollout_episodes``).

A validation loss says whether the policy predicts the demonstrator's next action; only a rollout
says whether it completes the task once its own actions decide what it sees (diffusion_policy runs
rollouts every N epochs for that reason). Every ``rollout_every`` steps the policy being trained runs
``rollout_episodes`` single-task episodes per task on the tabletop, with the evaluation sentences,
under CALVIN's protocol (``roboflamingo.eval.protocol``), from the same initial states every time,
and ``rollout/success`` (mean over tasks) and ``rollout/<task>`` are logged beside the loss.

Tabletop data only: the simulator is the one the validation split was generated with (its
``env_config.yaml``, written by ``roboflamingo generate``), the tasks are those annotated in the
training split. Rollouts never change what training does: the RNG states (Python, NumPy, torch) are
restored afterwards and the policy goes back to training mode, so a run with rollouts trains exactly
the weights a run without them does.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roboflamingo.config import ConfigError, load_yaml
from roboflamingo.data.config import DataConfig
from roboflamingo.data.layout import DatasetError, load_annotations

ENV_FILE = "env_config.yaml"


class TrainingRollouts:
    """The episodes of one run, fixed at set-up (bad data is refused before the first step)."""

    def __init__(self, data: DataConfig, episodes: int, ep_len: int, seed: int):
        from roboflamingo.eval.items import evaluation_sentences, single_task_items
        from roboflamingo.sim.config import EnvConfig
        from roboflamingo.sim.tasks import TaskOracle

        root = Path(data.root)
        candidates = [root / data.val_split / ENV_FILE, root / data.train_split / ENV_FILE]
        env_file = next((p for p in candidates if p.is_file()), None)
        if env_file is None:
            raise ConfigError(f"train.rollout_every: rollouts run on the tabletop the data was generated in, but "
                              f"neither {candidates[0]} nor {candidates[1]} exists (a split written by "
                              "`roboflamingo generate`); set train.rollout_every=0 for other data")
        self.env_config = load_yaml(env_file, EnvConfig)
        try:
            _, _, annotated = load_annotations(root / data.train_split)
        except DatasetError as e:
            raise ConfigError(f"train.rollout_every: the tasks to roll out are the training split's: {e}") from e
        oracle = TaskOracle.default()
        unknown = sorted(set(annotated) - set(oracle.tasks))
        if unknown:
            raise ConfigError(f"train.rollout_every: {root / data.train_split} annotates tasks the tabletop "
                              f"does not know: {unknown}")
        self.tasks = [t for t in oracle.tasks if t in set(annotated)]
        self.items = single_task_items(self.tasks, episodes, seed, evaluation_sentences())
        self.ep_len = ep_len
        self._env: Any = None

    def __call__(self, policy: torch.nn.Module) -> dict[str, float]:
        """Roll ``policy`` (the unwrapped ``RoboFlamingoPolicy``) out; returns the metrics to log."""
        from roboflamingo.eval.envs import EnvSpec, make_env
        from roboflamingo.eval.metrics import summarize_episodes
        from roboflamingo.eval.protocol import rollout_chain

        if self._env is None:
            self._env = make_env(EnvSpec("tabletop", self.env_config))
        start = time.perf_counter()
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        was_training = policy.training
        policy.eval()
        try:
            results = [rollout_chain(self._env, policy, item, self.ep_len) for item in self.items]
        finally:
            policy.train(was_training)
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
        summary = summarize_episodes(results)
        metrics = {"rollout/success": summary["task_average"]}
        metrics |= {f"rollout/{task}": c["rate"] for task, c in summary["per_task"].items()}
        metrics["rollout/seconds"] = time.perf_counter() - start
        return metrics

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
