"""Closed-loop success during training (``train.rollout_every``, ``train.rollout_episodes``).

A validation loss says whether the policy predicts the demonstrator's next action; only a rollout
says whether it completes the task once its own actions decide what it sees (diffusion_policy runs
rollouts every N epochs for that reason). Every ``rollout_every`` steps the policy being trained runs
``rollout_episodes`` single-task episodes per task on the tabletop, with the evaluation sentences,
under CALVIN's protocol (``roboflamingo.subtask``), from the same initial states every time (those
of ``roboflamingo eval``'s single-task mode with ``chain_seed`` = the run's seed),
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
    """The episodes of one run, fixed at set-up (bad data is refused before the first step).

    Built from the simulator's own pieces (``sim``, ``subtask``), the same ones ``roboflamingo eval``
    uses, so an episode here is the evaluator's single-task episode with the same settings.
    """

    def __init__(self, data: DataConfig, episodes: int, ep_len: int, seed: int):
        from roboflamingo.sim.chains import single_task_episodes
        from roboflamingo.sim.config import EnvConfig
        from roboflamingo.sim.instructions import load_instructions
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
        self.oracle = TaskOracle.default()
        unknown = sorted(set(annotated) - set(self.oracle.tasks))
        if unknown:
            raise ConfigError(f"train.rollout_every: {root / data.train_split} annotates tasks the tabletop "
                              f"does not know: {unknown}")
        self.tasks = [t for t in self.oracle.tasks if t in set(annotated)]
        sentences = load_instructions("eval")
        # a task no initial state allows starts after the scripted expert's setup, as in the evaluator
        self.episodes = [(task, state, setup, sentences[task][0])
                         for task, state, setup in single_task_episodes(self.tasks, episodes, seed, self.oracle)]
        self.ep_len = ep_len
        self._env: Any = None

    def __call__(self, policy: torch.nn.Module) -> dict[str, float]:
        """Roll ``policy`` (the unwrapped ``RoboFlamingoPolicy``) out; returns the metrics to log."""
        from roboflamingo.sim.chains import initial_state_to_obs
        from roboflamingo.sim.env import TabletopEnv
        from roboflamingo.sim.expert import ScriptedExpert
        from roboflamingo.subtask import OracleEnv, drive, perform_setup, subtask_steps

        if self._env is None:
            self._env = OracleEnv(TabletopEnv(self.env_config), self.oracle)
        start = time.perf_counter()
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        was_training = policy.training
        policy.eval()
        successes: dict[str, list[bool]] = {task: [] for task in self.tasks}
        try:
            for index, (task, state, setup, sentence) in enumerate(self.episodes):
                obs = self._env.reset_state(*initial_state_to_obs(state, self._env.env.scene), seed=index)
                if setup:
                    obs = perform_setup(self._env, ScriptedExpert(self._env.env.scene), setup, obs, self.ep_len,
                                        f"rollout episode {index} ({task})")
                ok, _, _ = drive(subtask_steps(self._env, task, sentence, obs, self.ep_len), policy)
                successes[task].append(ok)
        finally:
            policy.train(was_training)
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
        rates = {task: sum(v) / len(v) for task, v in successes.items()}
        metrics = {"rollout/success": sum(rates.values()) / len(rates)}
        metrics |= {f"rollout/{task}": rate for task, rate in rates.items()}
        metrics["rollout/seconds"] = time.perf_counter() - start
        return metrics

    def close(self) -> None:
        if self._env is not None:
            self._env.env.close()
            self._env = None
