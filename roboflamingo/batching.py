"""One policy, many episodes: the batching core that evaluation and the policy server share.

An episode stream (an evaluation simulator, a server session) owns a *slot*. Each slot has its own
history and its own reset; every tick steps all slots that have a frame waiting in one call, which
for a ``RoboFlamingoPolicy`` is one backbone forward (``step_batch``).

- ``SlotPolicy``: what a tick calls. ``BatchedModel`` wraps a model with ``step_batch`` (the policy
  keeps no state; the slots' histories live here); ``PerSlotPolicies`` gives each slot its own
  single-stream ``Policy`` (the scripted expert, the random floor, anything without ``step_batch``)
  and steps them one after the other.
- ``SlotBatcher``: thread-safe ``submit(slot, obs, instruction) -> Future`` and ``tick()``. The
  evaluator submits the frames of all its simulators and calls ``tick()`` itself; the server starts
  ``serve()`` in a thread, which ticks as soon as every open slot has a frame waiting, or
  ``max_wait_s`` after the first one arrived (so an idle session does not hold up the others).

A request that fails (a malformed observation, a non-finite action) fails alone: a batch that raises
is retried row by row, which a stateless ``step_batch`` allows since no history moved.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np

from roboflamingo.subtask import check_action
from roboflamingo.types import Observation, Policy

Result = np.ndarray | Exception


class SlotPolicy(Protocol):
    def reset_slot(self, slot: int) -> None:
        """Slot ``slot`` starts a new episode (its first call, or a new subtask)."""

    def release_slot(self, slot: int) -> None:
        """Slot ``slot`` is gone; forget everything about it."""

    def step_slots(self, slots: Sequence[int], observations: Sequence[Observation],
                   instructions: Sequence[str]) -> list[Result]:
        """One frame per slot -> one action (the robot's action vector) per slot, or the exception that slot's request raised."""


class BatchedModel:
    """A model with ``step_batch(observations, instructions, histories)``: one forward per tick."""

    def __init__(self, model: Any):
        self.model = model
        self.robot = getattr(model, "robot", None)  # whose actions (check_action's size); None: CALVIN's
        self.histories: dict[int, Any] = {}

    def reset_slot(self, slot: int) -> None:
        self.histories[slot] = None

    def release_slot(self, slot: int) -> None:
        self.histories.pop(slot, None)

    def step_slots(self, slots, observations, instructions) -> list[Result]:
        try:
            actions, new = self.model.step_batch(observations, instructions, [self.histories.get(s) for s in slots])
        except Exception as e:
            if len(slots) == 1:
                return [e]
            # Find the culprit: histories only move on success, so stepping rows alone is safe.
            return [self.step_slots([s], [o], [i])[0] for s, o, i in zip(slots, observations, instructions)]
        out: list[Result] = []
        for s, h, a in zip(slots, new, actions):
            self.histories[s] = h
            out.append(a)
        return out


class PerSlotPolicies:
    """One single-stream ``Policy`` per slot, made by ``factory(slot)`` on the slot's first reset;
    ``robot``: the description their actions follow (None: CALVIN's)."""

    def __init__(self, factory: Callable[[int], Policy], robot: Any = None):
        self.factory = factory
        self.robot = robot
        self.policies: dict[int, Policy] = {}

    def reset_slot(self, slot: int) -> None:
        policy = self.policies.get(slot)
        if policy is None:
            policy = self.policies[slot] = self.factory(slot)
        policy.reset()

    def release_slot(self, slot: int) -> None:
        policy = self.policies.pop(slot, None)
        close = getattr(policy, "close", None)
        if close is not None:
            close()

    def step_slots(self, slots, observations, instructions) -> list[Result]:
        out: list[Result] = []
        for s, o, i in zip(slots, observations, instructions):
            try:
                out.append(self.policies[s].step(o, i))
            except Exception as e:
                out.append(e)
        return out


class _Request:
    __slots__ = ("slot", "obs", "instruction", "future")

    def __init__(self, slot: int, obs: Observation, instruction: str):
        self.slot, self.obs, self.instruction, self.future = slot, obs, instruction, Future()


class SlotBatcher:
    """Slots of one ``SlotPolicy``; see the module docstring.

    Counters: ``forwards`` (ticks that stepped the policy), ``steps`` (frames answered) and
    ``policy_s`` (seconds inside the policy's ``step_slots``).
    """

    def __init__(self, policy: SlotPolicy, max_wait_s: float = 0.005):
        self.policy = policy
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._policy_lock = threading.Lock()  # one policy call at a time: ticks, resets, releases
        self._pending: dict[int, _Request] = {}
        self._open: set[int] = set()
        self._ids = itertools.count()
        self._stopped = False
        self.forwards = 0
        self.steps = 0
        self.policy_s = 0.0

    # -- slots ------------------------------------------------------------------------------------
    def open(self) -> int:
        """A new slot, already reset."""
        slot = next(self._ids)
        with self._policy_lock:
            self.policy.reset_slot(slot)
        with self._cond:
            self._open.add(slot)
        return slot

    def reset(self, slot: int) -> None:
        with self._policy_lock:
            self.policy.reset_slot(slot)

    def close(self, slot: int) -> None:
        with self._cond:
            self._open.discard(slot)
            request = self._pending.pop(slot, None)
            self._cond.notify_all()
        if request is not None:
            request.future.set_exception(RuntimeError(f"slot {slot} was closed"))
        with self._policy_lock:
            self.policy.release_slot(slot)

    @property
    def open_slots(self) -> int:
        return len(self._open)

    # -- stepping ---------------------------------------------------------------------------------
    def submit(self, slot: int, obs: Observation, instruction: str) -> Future:
        """Queue one frame of ``slot``; the future resolves to its action at the next tick."""
        request = _Request(slot, obs, instruction)
        with self._cond:
            if slot not in self._open:
                raise KeyError(f"slot {slot} is not open")
            if slot in self._pending:
                raise RuntimeError(f"slot {slot} already has a frame waiting (one step at a time per episode)")
            self._pending[slot] = request
            self._cond.notify_all()
        return request.future

    def tick(self) -> int:
        """Step every waiting frame in one policy call; returns how many were stepped."""
        with self._cond:
            batch = list(self._pending.values())
            self._pending.clear()
        if not batch:
            return 0
        with self._policy_lock:
            t0 = time.perf_counter()
            try:
                results = self.policy.step_slots(
                    [r.slot for r in batch], [r.obs for r in batch], [r.instruction for r in batch]
                )
            except Exception as e:  # a policy bug that is nobody's request in particular
                results = [e] * len(batch)
            self.policy_s += time.perf_counter() - t0
            self.forwards += 1
            self.steps += len(batch)
        if len(results) != len(batch):
            results = [RuntimeError(f"policy answered {len(results)} of {len(batch)} frames")] * len(batch)
        for request, result in zip(batch, results):
            if not isinstance(result, Exception):
                try:
                    result = check_action(result, self.policy)
                except ValueError as e:
                    result = e
            if isinstance(result, Exception):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)
        return len(batch)

    def step(self, slot: int, obs: Observation, instruction: str) -> np.ndarray:
        """Blocking step for a caller whose slot is served by ``serve()`` in another thread."""
        return self.submit(slot, obs, instruction).result()

    # -- service thread (the policy server) -------------------------------------------------------
    def serve(self) -> None:
        """Tick until ``stop()``: as soon as all open slots wait, or ``max_wait_s`` after the first."""
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    break
                deadline = time.monotonic() + self.max_wait_s
                while not self._stopped and len(self._pending) < len(self._open):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            self.tick()
        with self._cond:
            left = list(self._pending.values())
            self._pending.clear()
        for request in left:
            request.future.set_exception(RuntimeError("the policy batcher stopped"))

    def start(self) -> SlotBatcher:
        threading.Thread(target=self.serve, name="policy-batcher", daemon=True).start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


class BatchedSession:
    """One episode stream on a shared ``SlotBatcher``: a ``Policy`` (``reset``/``step``) plus
    ``submit`` for async callers. Its slot is released when the session is closed or collected."""

    def __init__(self, batcher: SlotBatcher):
        self.batcher = batcher
        self.slot = batcher.open()
        self._release = weakref.finalize(self, batcher.close, self.slot)

    def reset(self) -> None:
        self.batcher.reset(self.slot)

    def submit(self, obs: Observation, instruction: str) -> Future:
        return self.batcher.submit(self.slot, obs, instruction)

    def step(self, obs: Observation, instruction: str) -> np.ndarray:
        return self.submit(obs, instruction).result()

    def close(self) -> None:
        self._release()


def as_slot_policy(policy: Any, factory: Callable[[int], Policy] | None = None) -> SlotPolicy:
    """A model with ``step_batch`` -> ``BatchedModel``; otherwise one ``factory(slot)`` policy per slot."""
    if policy is not None and hasattr(policy, "step_batch"):
        return BatchedModel(policy)
    if factory is None:
        raise TypeError(f"{type(policy).__name__} has no step_batch and no per-slot factory was given")
    return PerSlotPolicies(factory, getattr(policy, "robot", None))
