"""Small deterministic doubles for the evaluator's unit tests (the real tabletop is in test_eval_tabletop).

``CounterEnv`` is a Gymnasium-style environment whose only state is a progress counter that an
action's first component advances; ``CounterOracle`` calls a task done once the counter moved
``need`` steps since the subtask started, except for tasks named ``hard_*``, which never succeed.
So a chain completes exactly the tasks before its first ``hard_*`` one: outcomes are known by hand.
Everything is module-level so spawned worker processes can unpickle the factories.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from roboflamingo.eval.protocol import EvalItem, GymOracleEnv


class CounterEnv:
    def __init__(self, log: list | None = None, die_on_start: int = -1):
        self.die_on_start = die_on_start
        self.progress = 0
        self.resets = 0
        self.log = log if log is not None else []
        self.unwrapped = self

    def _obs(self) -> dict:
        img = np.full((8, 8, 3), self.progress % 256, dtype=np.uint8)
        return {
            "rgb_static": img,
            "rgb_gripper": img[:4, :4],
            "robot_obs": np.zeros(15),
            "scene_obs": np.full(24, float(self.progress)),
        }

    def get_info(self) -> dict:
        return {"progress": self.progress}

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        self.progress = int(options["scene_obs"][0])
        if self.progress == self.die_on_start:
            os._exit(5)  # as a segfault in the simulator would
        self.log.append(("reset", seed, self.progress))
        return self._obs(), self.get_info()

    def step(self, action):
        self.progress += int(action[0] > 0)
        return self._obs(), 0.0, False, False, self.get_info()

    def render(self):
        return np.zeros((6, 6, 3), np.uint8)

    def close(self):
        self.log.append(("close",))


class CounterOracle:
    def __init__(self, need: int = 3):
        self.need = need

    def successful(self, start_info, now_info, tasks):
        moved = now_info["progress"] - start_info["progress"]
        return {t for t in tasks if not t.startswith("hard") and moved >= self.need}


def counter_state(initial_state: dict) -> tuple[np.ndarray, np.ndarray]:
    scene = np.zeros(24)
    scene[0] = initial_state.get("start", 0)
    return np.zeros(15), scene


@dataclass
class CounterEnvFactory:
    need: int = 3
    die_on_start: int = -1

    def __call__(self) -> GymOracleEnv:
        return GymOracleEnv(CounterEnv(die_on_start=self.die_on_start), CounterOracle(self.need), counter_state)

    def identity(self) -> dict:
        return {"kind": "counter", "need": self.need}


class PushPolicy:
    """Always advances the counter; records what the protocol asked of it."""

    def __init__(self):
        self.calls: list = []

    def reset(self):
        self.calls.append(("reset",))

    def step(self, obs, instruction):
        self.calls.append(("step", instruction))
        return np.array([1, 0, 0, 0, 0, 0, 1], dtype=np.float32)


@dataclass
class PushPolicyFactory:
    fail_on_chain: int = -1  # raise inside the worker when asked to act on this chain's start state
    hard_exit: bool = False  # die without a word instead (as a segfault in the simulator would)

    def __call__(self, worker: int = 0):
        return PushPolicy() if self.fail_on_chain < 0 else FailingPolicy(self.fail_on_chain, self.hard_exit)

    def identity(self) -> dict:
        return {"kind": "push"}


class FailingPolicy(PushPolicy):
    def __init__(self, start: int, hard_exit: bool = False):
        super().__init__()
        self.start = start
        self.hard_exit = hard_exit

    def step(self, obs, instruction):
        if int(obs["scene_obs"][0]) == self.start:
            if self.hard_exit:
                os._exit(3)
            raise RuntimeError(f"policy exploded on start {self.start}")
        return super().step(obs, instruction)


@dataclass
class Chains:
    """Items whose outcome is known: chain i completes ``lengths[i]`` tasks."""

    lengths: list[int] = field(default_factory=lambda: [5, 0, 2, 5, 3, 1, 4, 5])

    def items(self) -> list[EvalItem]:
        out = []
        for i, n in enumerate(self.lengths):
            tasks = [f"task_{k}" for k in range(5)]
            if n < 5:
                tasks[n] = f"hard_{n}"
            out.append(EvalItem(i, {"start": 100 * i}, tasks, [f"do {t}" for t in tasks]))
        return out


class DiesAfterOneChainPolicy(PushPolicy):
    """Finishes its first chain, then dies without a word as the next one starts (a simulator segfault)."""

    def __init__(self):
        super().__init__()
        self.first_start: int | None = None

    def step(self, obs, instruction):
        progress = int(obs["scene_obs"][0])  # a chain starts at 100 * index and moves < 100 steps
        if self.first_start is None:
            self.first_start = progress
        elif progress % 100 == 0 and progress != self.first_start:
            os._exit(3)
        return super().step(obs, instruction)


@dataclass
class DiesAfterOneChainFactory:
    def __call__(self, worker: int = 0):
        return DiesAfterOneChainPolicy()

    def identity(self) -> dict:
        return {"kind": "push"}


def save_tiny_checkpoint(path) -> None:
    """configs/model/tiny.yaml + the LSTM head, random weights, fixed statistics, saved at ``path``."""
    from dataclasses import replace

    from roboflamingo.config import config_dir, load_yaml
    from roboflamingo.models.config import HeadConfig, ModelConfig
    from roboflamingo.models.policy import RoboFlamingoPolicy

    stats = {
        "action_mean": np.zeros(7, np.float32), "action_std": np.full(7, 0.5, np.float32),
        "robot_obs_mean": np.zeros(15, np.float32), "robot_obs_std": np.ones(15, np.float32),
    }
    model = load_yaml(config_dir() / "model" / "tiny.yaml", ModelConfig)
    model = replace(model, lm=replace(model.lm, bpe_merges=1000))  # a smaller tokenizer builds faster
    head = load_yaml(config_dir() / "head" / "lstm.yaml", HeadConfig)
    RoboFlamingoPolicy.from_config(model, head, stats).save_pretrained(path)
