"""Action chunks at inference: which action the robot executes from the chunks the head predicted.

A policy with ``model.act_steps = A`` predicts, at a control step s, the next A actions
``chunk[j]`` for steps ``s + j``. ``head.chunking`` (:class:`~roboflamingo.models.config.ChunkingConfig`)
says how they are executed:

- ``execute_steps = 1``, no ensemble (the default, the original RoboFlamingo): a fresh chunk at
  every step, its first action executed.
- ``execute_steps = k``: a chunk every k steps, its actions executed open-loop one per step (ACT
  without ensembling; chunks cut the compounding of per-step errors, Zhao et al. 2023).
- ``ensemble``: ACT's temporal ensembling. Every stored chunk that covers step t has a prediction for
  it; the executed action is their weighted mean, oldest chunk first, ``w_i = exp(-m * i)``
  normalised (ACT's ``imitate_episodes.py``; LeRobot's ``ACTTemporalEnsembler``, whose output a
  golden test compares with). ACT predicts at every step (k = 1); with k > 1 the chunks made every
  k steps are ensembled the same way.

Binary gripper dims are never averaged into a value between close and open: each chunk carries the
probability that the gripper is open; ``ensemble_gripper=probability`` weights those probabilities
like the other dims and opens above 0.5, ``newest`` takes the newest chunk's decision.

A per-episode :class:`ChunkState` is an immutable value: ``step(chunk)`` returns the action and the
next state, so a batched call that fails part-way leaves every episode's state where it was (the
batcher retries rows one by one, see ``roboflamingo.batching``).

**The head's history under k > 1.** On a step that executes a stored action the backbone need not
run. But a head with history (``model.window > 1``, or ``head.lstm_history=running``) was trained
on windows of *consecutive* frames: feeding it only every k-th frame would show it motions k times
faster than any it saw, and its features of frames it never saw would be missing from its window.
So for such a head :func:`step_chunked` still runs the backbone and the head on every frame, keeping
the history exactly what training saw, and uses their chunk only on the steps that re-plan. A head
without history (``model.window = 1``, or the MLP head) has nothing to keep: it runs only on the
steps that re-plan, and the others cost no forward at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roboflamingo.models.config import ChunkingConfig


@dataclass(frozen=True, eq=False)
class ChunkExecutor:
    """How chunks become actions for one policy: the config, the chunk length A, the binary dims.

    Args:
        config: the execution mode (``head.chunking``).
        horizon: A, actions per chunk (``model.act_steps``).
        grippers: indices of binary gripper dims; in a chunk they hold the probability of open.
        close, open: the values a binary gripper dim is executed as.
    """

    config: ChunkingConfig
    horizon: int
    grippers: tuple[int, ...] = ()
    close: float = -1.0
    open: float = 1.0

    def __post_init__(self) -> None:
        self.config.check(self.horizon)
        weights = np.exp(-self.config.ensemble_decay * np.arange(self.horizon, dtype=np.float64))
        object.__setattr__(self, "_weights", weights)

    def start(self) -> ChunkState:
        """The state of a new episode (or subtask: the policy's ``reset``)."""
        return ChunkState(self)


@dataclass(frozen=True, eq=False)
class ChunkState:
    """One episode's execution state: steps taken and the chunks that still cover future steps.

    ``chunks`` holds ``(start step, chunk (A, D) float64)``, oldest first.
    """

    executor: ChunkExecutor
    t: int = 0
    chunks: tuple[tuple[int, np.ndarray], ...] = field(default=())

    @property
    def needs_chunk(self) -> bool:
        """Whether this step re-plans: ``step`` must then be given a freshly predicted chunk."""
        return self.t % self.executor.config.execute_steps == 0

    def step(self, chunk: np.ndarray | None) -> tuple[np.ndarray, ChunkState]:
        """Execute one control step: ``chunk`` (A, D) is this step's prediction (unnormalized actions,
        binary gripper dims as probabilities of open), required when ``needs_chunk``; ``None`` on a
        step that only executes. Returns the action (D,) float32 and the next state."""
        ex, cfg = self.executor, self.executor.config
        chunks = self.chunks
        if self.needs_chunk:
            if chunk is None:
                raise ValueError(f"step {self.t} re-plans (head.chunking.execute_steps={cfg.execute_steps}): "
                                 "it needs the newly predicted chunk")
            chunk = np.asarray(chunk, dtype=np.float64)
            if chunk.ndim != 2 or chunk.shape[0] != ex.horizon:
                raise ValueError(f"a chunk must have shape ({ex.horizon}, action dim), got {chunk.shape}")
            chunks = chunks + ((self.t, chunk),)
        elif chunk is not None:
            raise ValueError(f"step {self.t} executes a stored action; no chunk is predicted for it")
        # Chunks that cover this step, oldest first, and each one's prediction for it.
        live = [(s, c) for s, c in chunks if s + ex.horizon > self.t]
        preds = np.stack([c[self.t - s] for s, c in live])  # (n, D)
        if cfg.ensemble:
            w = ex._weights[: len(live)]
            action = (w[:, None] * preds).sum(0) / w.sum()
            if cfg.ensemble_gripper == "newest":
                action[list(ex.grippers)] = preds[-1, list(ex.grippers)]
        else:
            action = preds[-1].copy()
        for g in ex.grippers:
            # Ties (exactly 0.5) close, as an argmax over (close, open) logits does.
            action[g] = ex.open if action[g] > 0.5 else ex.close
        # Keep only what can still cover a later step.
        keep = tuple((s, c) for s, c in live if s + ex.horizon > self.t + 1)
        return action.astype(np.float32), ChunkState(ex, self.t + 1, keep)


@dataclass(frozen=True, eq=False)
class ChunkedHistory:
    """What ``step_batch`` keeps per episode when chunking is active: the head's own cache (its
    frame history) and the chunk execution state."""

    head: Any
    chunks: ChunkState


def step_chunked(
    histories: Sequence[ChunkedHistory | None],
    executor: ChunkExecutor,
    every_frame: bool,
    predict: Callable[[list[int], list[Any]], tuple[np.ndarray, list[Any]]],
    check: Callable[[list[int]], None],
) -> tuple[np.ndarray, list[ChunkedHistory]]:
    """One control step of B episodes under ``executor``.

    ``predict(rows, head_caches)`` runs the backbone and head on those rows' frames and returns their
    chunks (n, A, D) (see :meth:`ChunkState.step`) and new head caches; ``check(rows)`` validates the
    inputs of rows that skip the forward. ``every_frame``: the head has a history, so it sees every
    frame (module docstring); otherwise only the rows that re-plan run. ``None`` starts an episode.
    """
    states = [h if h is not None else ChunkedHistory(None, executor.start()) for h in histories]
    run = [i for i, h in enumerate(states) if every_frame or h.chunks.needs_chunk]
    skipped = [i for i in range(len(states)) if i not in set(run)]
    if skipped:
        check(skipped)
    chunks: dict[int, np.ndarray] = {}
    heads = [h.head for h in states]
    if run:
        predicted, caches = predict(run, [states[i].head for i in run])
        for row, i in enumerate(run):
            chunks[i] = predicted[row]
            heads[i] = caches[row]
    actions, new = [], []
    for i, h in enumerate(states):
        action, state = h.chunks.step(chunks.get(i) if h.chunks.needs_chunk else None)
        actions.append(action)
        new.append(ChunkedHistory(heads[i], state))
    return np.stack(actions), new
