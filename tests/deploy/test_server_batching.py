"""The policy server batches concurrent sessions through the evaluator's batching core: 8 sessions
stepping together are answered with one batched forward per tick (counted, not timed)."""

import threading

import numpy as np

from roboflamingo.batching import BatchedModel, BatchedSession, SlotBatcher
from roboflamingo.deploy.client import PolicyClient
from roboflamingo.deploy.server import PolicyServer, ServerThread
from roboflamingo.policies import PolicySource
from roboflamingo.robots.calvin import ROBOT_OBS


class SumModel:
    """Stateless step_batch: action = [frames seen in this episode, sum of robot_obs[0] seen, ...]."""

    def __init__(self):
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def step_batch(self, observations, instructions, histories):
        with self.lock:
            self.batches.append(len(observations))
        new = [((h or (0, 0.0))[0] + 1, (h or (0, 0.0))[1] + float(o[ROBOT_OBS][0]))
               for o, h in zip(observations, histories)]
        actions = np.zeros((len(new), 7), np.float32)
        actions[:, 0] = [n for n, _ in new]
        actions[:, 1] = [s for _, s in new]
        actions[:, 6] = 1
        return actions, new


def obs(x: float) -> dict:
    robot_obs = np.zeros(15, np.float32)
    robot_obs[0] = x
    return {ROBOT_OBS: robot_obs}


def test_eight_concurrent_sessions_share_one_batched_forward_per_tick():
    model = SumModel()
    # A tick fires when every open session has a frame waiting; the long wait only matters if one
    # never sent its frame, so the count below cannot depend on timing.
    batcher = SlotBatcher(BatchedModel(model), max_wait_s=60.0).start()
    source = PolicySource("sum", lambda: BatchedSession(batcher), (ROBOT_OBS,))
    n_clients, n_steps = 8, 5
    connected = threading.Barrier(n_clients + 1)
    finished = threading.Barrier(n_clients + 1)
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            with PolicyClient(server.url) as c:
                connected.wait(timeout=30)
                total = 0.0
                for k in range(n_steps):
                    x = 100.0 * i + k
                    total += x
                    a = c.step(obs(x), "go")
                    if a[:2].tolist() != [k + 1, total]:
                        errors.append(f"client {i} step {k}: got {a[:2].tolist()}, expected {[k + 1, total]}")
                finished.wait(timeout=30)  # stay connected until everyone is done
        except Exception as e:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    with ServerThread(PolicyServer(source, port=0)) as server:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        connected.wait(timeout=30)
        finished.wait(timeout=60)
        for t in threads:
            t.join(30)
        assert server.server.counters["steps"] == n_clients * n_steps
    batcher.stop()
    assert not errors, errors[:5]
    assert model.batches == [n_clients] * n_steps
    assert batcher.forwards == n_steps and batcher.steps == n_clients * n_steps
