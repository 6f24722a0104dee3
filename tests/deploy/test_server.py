"""The policy server: handshake, health, error replies that keep the server alive, isolated sessions."""

import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from roboflamingo import cli
from roboflamingo.deploy.client import PolicyClient, PolicyServerError
from roboflamingo.deploy.codec import packb, unpackb
from roboflamingo.deploy.server import Job, PolicyServer, ServerThread
from roboflamingo.policies import PolicySource, PolicySourceConfig, RandomPolicy, policy_source
from roboflamingo.robots.calvin import ROBOT_OBS


class HistoryPolicy:
    """Deterministic test double whose action depends on everything it has seen since reset.

    action = [steps seen, sum of robot_obs[0] seen, last robot_obs[0], instance tag, 0, 0, +1]
    """

    instances = 0

    def __init__(self, delay_s: float = 0.002) -> None:
        HistoryPolicy.instances += 1
        self.tag = float(HistoryPolicy.instances)
        self.delay_s = delay_s
        self.history: list[float] = []

    def reset(self) -> None:
        self.history = []

    def step(self, obs, instruction):
        if instruction == "explode":
            raise RuntimeError("boom")
        time.sleep(self.delay_s)  # widen the window for sessions to interleave
        self.history.append(float(obs[ROBOT_OBS][0]))
        return np.array(
            [len(self.history), sum(self.history), self.history[-1], self.tag, 0, 0, 1], np.float32
        )


def history_source() -> PolicySource:
    return PolicySource("history", HistoryPolicy, (ROBOT_OBS,))


def obs(x: float) -> dict:
    robot_obs = np.zeros(15, np.float32)
    robot_obs[0] = x
    return {ROBOT_OBS: robot_obs}


@pytest.fixture
def server():
    srv = PolicyServer(
        history_source(),
        port=0,
        max_message_bytes=4096,
        hard_max_message_bytes=65536,
        max_sessions=10,
        workers=4,
    )
    with ServerThread(srv) as thread:
        yield thread


def test_handshake_describes_spec_and_rate(server):
    with PolicyClient(server.url) as client:
        meta = client.metadata
        assert meta["type"] == "metadata" and meta["protocol"] == 1
        assert meta["observation_spec"] == {ROBOT_OBS: {"shape": [15], "dtype": "float32"}}
        assert meta["action_spec"]["shape"] == [7] and meta["action_spec"]["gripper_index"] == 6
        assert meta["control_rate_hz"] == 30.0 and meta["max_message_bytes"] == 4096
        assert client.observation_keys == (ROBOT_OBS,)


def test_health_over_http_and_as_a_message(server):
    port = server.server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read() == b"OK\n"
    with PolicyClient(server.url) as client:
        client.step(obs(1.0), "go")
        health = client.health()
        assert health["status"] == "ok" and health["sessions"] == 1 and health["steps"] >= 1


def test_step_returns_action_and_timing(server):
    with PolicyClient(server.url) as client:
        a = client.step(obs(2.0), "go")
        assert a.dtype == np.float32 and a.shape == (7,)
        assert a[:3].tolist() == [1.0, 2.0, 2.0]
        t = client.last_timing
        assert {"decode_ms", "queue_ms", "infer_ms", "server_ms", "roundtrip_ms"} <= set(t)
        assert t["infer_ms"] >= 2.0  # the double sleeps 2 ms inside step
        assert t["server_ms"] >= t["infer_ms"] and t["roundtrip_ms"] >= t["server_ms"]


def test_reset_clears_only_this_sessions_history(server):
    with PolicyClient(server.url) as a, PolicyClient(server.url) as b:
        for x in (1.0, 2.0):
            a.step(obs(x), "go")
            b.step(obs(x), "go")
        a.reset()
        assert a.step(obs(5.0), "go")[:2].tolist() == [1.0, 5.0]
        assert b.step(obs(5.0), "go")[:2].tolist() == [3.0, 8.0]


BAD_FRAMES = {
    "text frame": "hello",
    "not msgpack": b"\xc1\xc1\xc1",
    "not a map": packb([1, 2, 3]),
    "no type": packb({"id": 1}),
    "unknown type": packb({"type": "fly", "id": 1}),
    "instruction not a string": packb({"type": "step", "id": 1, "obs": obs(0.0), "instruction": 3}),
    "obs not a map": packb({"type": "step", "id": 1, "obs": [1, 2], "instruction": "go"}),
    "missing key": packb({"type": "step", "id": 1, "obs": {}, "instruction": "go"}),
    "wrong shape": packb({"type": "step", "id": 1, "obs": {ROBOT_OBS: np.zeros(3)}, "instruction": "go"}),
    "strings as numbers": packb(
        {"type": "step", "id": 1, "obs": {ROBOT_OBS: ["a"] * 15}, "instruction": "go"}
    ),
    "nan": packb({"type": "step", "id": 1, "obs": {ROBOT_OBS: np.full(15, np.nan)}, "instruction": "go"}),
    "object array": msgpack.packb(
        {
            "type": "step",
            "obs": {ROBOT_OBS: {"__ndarray__": True, "dtype": "|O", "shape": [15], "data": b"0" * 120}},
        }
    ),
    "oversized": packb({"type": "step", "id": 1, "obs": obs(0.0), "instruction": "x" * 10_000}),
    "policy raises": packb({"type": "step", "id": 1, "obs": obs(0.0), "instruction": "explode"}),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_requests_get_an_error_reply_and_the_session_keeps_serving(server, name):
    with PolicyClient(server.url) as client:
        client.step(obs(1.0), "go")
        reply = client.send_raw(BAD_FRAMES[name])
        assert reply["type"] == "error" and reply["code"] in (
            "bad_request",
            "bad_observation",
            "too_large",
            "policy_error",
        ), reply
        assert reply["error"]
        # Same connection, same session: history intact, server still answering.
        assert client.step(obs(2.0), "go")[:2].tolist() == [2.0, 3.0]


def test_error_codes_name_the_problem(server):
    with PolicyClient(server.url) as client:
        assert client.send_raw(BAD_FRAMES["oversized"])["code"] == "too_large"
        assert "4096" in client.send_raw(BAD_FRAMES["oversized"])["error"]
        assert client.send_raw(BAD_FRAMES["missing key"])["code"] == "bad_observation"
        assert "robot_obs" in client.send_raw(BAD_FRAMES["missing key"])["error"]
        assert client.send_raw(BAD_FRAMES["policy raises"])["code"] == "policy_error"
        with pytest.raises(PolicyServerError, match="policy_error"):
            client.step(obs(0.0), "explode")


def test_a_frame_beyond_the_transport_ceiling_closes_only_that_connection(server):
    with PolicyClient(server.url) as bystander:
        with connect(server.url, max_size=None, compression=None) as ws:
            unpackb(ws.recv(timeout=5))
            ws.send(b"\x00" * 100_000)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
        assert bystander.step(obs(1.0), "go")[0] == 1.0
        with PolicyClient(server.url) as fresh:
            assert fresh.step(obs(1.0), "go")[0] == 1.0


def test_eight_concurrent_clients_keep_their_own_history(server):
    n_clients, n_steps = 8, 15
    errors: list[str] = []
    barrier = threading.Barrier(n_clients)

    def worker(i: int) -> None:
        try:
            with PolicyClient(server.url) as client:
                barrier.wait(timeout=10)
                seen = []
                tag = None
                for k in range(n_steps):
                    x = 100.0 * i + k
                    seen.append(x)
                    a = client.step(obs(x), "go")
                    tag = a[3] if tag is None else tag
                    expected = [len(seen), sum(seen), x, tag]
                    if a[:4].tolist() != expected:
                        errors.append(f"client {i} step {k}: got {a[:4].tolist()}, expected {expected}")
                    if k == 7:  # a reset mid-way must not leak into other sessions
                        client.reset()
                        seen = []
        except Exception as e:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert server.server.counters["steps"] == n_clients * n_steps


def test_sessions_beyond_the_limit_are_refused_politely():
    srv = PolicyServer(history_source(), port=0, max_sessions=1)
    with ServerThread(srv) as thread, PolicyClient(thread.url) as first:
        with pytest.raises(PolicyServerError, match="server_full"):
            PolicyClient(thread.url).connect()
        assert first.step(obs(1.0), "go")[0] == 1.0


def test_random_source_gives_each_session_its_own_seed():
    source = policy_source(PolicySourceConfig("random", seed=3))
    a, b = source.factory(), source.factory()
    assert isinstance(a, RandomPolicy) and a.seed == 3 and b.seed == 4
    act = a.step(obs(0.0), "x")
    assert act.shape == (7,) and act[6] in (-1.0, 1.0) and np.all(np.abs(act) <= 1)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ([], "policy=checkpoint needs checkpoint=<dir>"),
        (["policy=teleport"], "unknown option 'teleport' for config group 'policy' (options: checkpoint, expert, random, "
                                "remote;"),
        (["policy=random", "max_message_bytes=0"], "max_message_bytes must be > 0"),
        (["policy=random", "hard_max_message_bytes=10"], "hard_max_message_bytes must be >="),
    ],
)
def test_serve_config_errors_name_the_field(overrides, match, capsys):
    assert cli.main(["serve", *overrides]) == 2
    assert match in capsys.readouterr().err


def test_checkpoint_source_rejects_a_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="nope does not exist"):
        policy_source(PolicySourceConfig(checkpoint=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="not a policy checkpoint"):  # a directory that holds none
        policy_source(PolicySourceConfig(checkpoint=str(tmp_path)))
    with pytest.raises(ValueError, match="only read with policy=checkpoint"):
        policy_source(PolicySourceConfig("random", checkpoint=str(tmp_path)))


def test_serve_command_runs_for_a_bounded_time(capsys):
    job = Job(policy=PolicySourceConfig("random"), port=0, duration_s=0.3)
    from roboflamingo.deploy import server as server_mod

    assert server_mod.run(job) == 0
    out = capsys.readouterr().out
    assert "serving policy 'random'" in out and "served 0 sessions" in out


@pytest.mark.slow
def test_a_checkpoint_is_served_with_one_history_per_session(tmp_path):
    """The tiny model through the server (one model, a history per session) acts as in process."""
    torch = pytest.importorskip("torch")
    from roboflamingo.config import config_dir, load_yaml
    from roboflamingo.models.config import HeadConfig, ModelConfig
    from roboflamingo.models.normalization import identity_stats
    from roboflamingo.models.policy import RoboFlamingoPolicy

    configs = config_dir()
    model = load_yaml(configs / "model/tiny.yaml", ModelConfig)
    head = load_yaml(configs / "head/lstm.yaml", HeadConfig)
    torch.manual_seed(0)
    RoboFlamingoPolicy.from_config(model, head, identity_stats()).save_pretrained(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    frames = [
        {
            "rgb_static": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
            "rgb_gripper": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            "robot_obs": rng.normal(size=15).astype(np.float32),
        }
        for _ in range(3)
    ]
    local = RoboFlamingoPolicy.from_pretrained(tmp_path / "ckpt")
    local.reset()
    expected = [local.step(f, "open the drawer") for f in frames]

    source = policy_source(PolicySourceConfig(checkpoint=str(tmp_path / "ckpt")))
    with ServerThread(PolicyServer(source, port=0)) as thread:
        with PolicyClient(thread.url) as a, PolicyClient(thread.url) as b:
            assert set(a.observation_keys) == {"rgb_static", "rgb_gripper", "robot_obs"}
            # the handshake names the checkpoint, but not where it lives on the server
            assert a.metadata["policy_info"] == {"checkpoint": "ckpt"}
            assert str(tmp_path) not in repr(a.metadata)
            a.reset()
            b.reset()
            got_a = [a.step(frames[0], "open the drawer")]
            b.step(frames[2], "something else")  # interleaved traffic in another session
            got_a += [a.step(f, "open the drawer") for f in frames[1:]]
    for got, want in zip(got_a, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_remote_source_makes_one_session_per_instance(server):
    source = policy_source(PolicySourceConfig("remote", server=server.url))
    a, b = source.factory(), source.factory()
    try:
        assert a.session != b.session
        assert a.step(obs(1.0), "go")[:2].tolist() == [1.0, 1.0]
        assert b.step(obs(2.0), "go")[:2].tolist() == [1.0, 2.0]
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError, match="policy=remote needs server=ws://host:port"):
        policy_source(PolicySourceConfig("remote", server="http://x"))
