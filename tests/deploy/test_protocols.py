"""openpi-client and vla-eval's own clients drive ``roboflamingo serve``; one core behind every protocol.

The clients are the real packages from PyPI (dev extras; openpi-client is installed ``--no-deps``, see
the Makefile). Every served action is compared with the in-process ``policy.step`` on the same
observations, with the tiny checkpoint policy and with the scripted expert.
"""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from roboflamingo.config import config_dir
from roboflamingo.deploy import auth
from roboflamingo.deploy.client import PolicyClient
from roboflamingo.deploy.codec import packb, unpackb
from roboflamingo.deploy.protocols import PATHS
from roboflamingo.deploy.server import PolicyServer, ServerThread
from roboflamingo.policies import PolicySource, PolicySourceConfig, policy_source
from roboflamingo.robots.calvin import RGB_GRIPPER, RGB_STATIC, ROBOT_OBS, SCENE_OBS

websocket_client_policy = pytest.importorskip("openpi_client.websocket_client_policy")
vla_connection = pytest.importorskip("vla_eval.connection")
vla_messages = pytest.importorskip("vla_eval.protocol.messages")
vla_numpy_codec = pytest.importorskip("vla_eval.protocol.numpy_codec")

from roboflamingo.benchmarks.tabletop import TabletopBenchmark  # noqa: E402  (needs vla-eval)

CONFIGS = config_dir()
SMALL_ENV = {"static_size": 64, "gripper_size": 32}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch = pytest.importorskip("torch")
    from roboflamingo.config import load_yaml
    from roboflamingo.models.config import HeadConfig, ModelConfig
    from roboflamingo.models.normalization import identity_stats
    from roboflamingo.models.policy import RoboFlamingoPolicy

    model = load_yaml(CONFIGS / "model/tiny.yaml", ModelConfig)
    head = load_yaml(CONFIGS / "head/lstm.yaml", HeadConfig)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    RoboFlamingoPolicy.from_config(model, head, identity_stats()).save_pretrained(path)
    return str(path)


def source_for(kind: str, checkpoint: str) -> PolicySource:
    if kind == "checkpoint":
        return policy_source(PolicySourceConfig(checkpoint=checkpoint))
    return policy_source(PolicySourceConfig("expert", scene="D"))


def wire_obs(raw: dict, keys: tuple[str, ...]) -> dict:
    """What a client sends: the policy's keys, state as float32 (the server's observation dtype)."""
    return {k: raw[k] if k in (RGB_STATIC, RGB_GRIPPER) else np.asarray(raw[k], np.float32) for k in keys}


def make_bench(**kw) -> TabletopBenchmark:
    kw.setdefault("env", dict(SMALL_ENV))
    return TabletopBenchmark(**kw)


# -- openpi ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["checkpoint", "expert"])
def test_openpi_client_drives_whole_episodes_with_the_in_process_actions(kind, tiny_checkpoint):
    source = source_for(kind, tiny_checkpoint)
    keys = source.observation_keys
    bench = make_bench(mode="single_task", tasks=["open_drawer", "turn_on_led"], episodes_per_task=1, ep_len=40)
    with ServerThread(PolicyServer(source, port=0)) as thread:
        for task in bench.get_tasks():
            # openpi's client never announces an episode: each episode is its own connection (session).
            client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", thread.server.port)
            try:
                meta = client.get_server_metadata()
                assert meta["policy"] == source.name and set(meta["observation_spec"]) == set(keys)
                local = source.factory()
                local.reset()
                raw = bench.reset(task)
                for _ in range(bench.protocol.ep_len):
                    obs = wire_obs(raw, keys)
                    reply = client.infer({**obs, "prompt": task["instructions"][0]})
                    assert reply["actions"].shape == (1, 7) and reply["actions"].dtype == np.float32
                    assert {"infer_ms", "server_ms"} <= set(reply["server_timing"])
                    np.testing.assert_array_equal(reply["actions"][0], local.step(obs, task["instructions"][0]))
                    result = bench.step({"actions": reply["actions"]})
                    raw = result.obs
                    if result.done:
                        break
            finally:
                client._ws.close()
        bench.cleanup()


@pytest.fixture
def random_server():
    with ServerThread(PolicyServer(policy_source(PolicySourceConfig("random", seed=0)), port=0, max_message_bytes=4096)) as t:
        yield t


def test_openpi_errors_are_text_frames_and_the_session_keeps_its_history(random_server):
    port = random_server.server.port
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)
    fresh = websocket_client_policy.WebsocketClientPolicy(f"ws://127.0.0.1:{port}/openpi")  # forced by path
    try:
        ok = {ROBOT_OBS: np.zeros(15, np.float32), "prompt": "go"}
        first = client.infer(ok)["actions"]
        for bad, match in [
            ({ROBOT_OBS: np.zeros(3, np.float32), "prompt": "go"}, "bad_observation"),
            ({ROBOT_OBS: np.zeros(15, np.float32)}, "'prompt'"),
            ({ROBOT_OBS: np.zeros(15, np.float32), "prompt": "x" * 5000}, "too_large"),
        ]:
            with pytest.raises(RuntimeError, match=match):
                client.infer(bad)
        second = client.infer(ok)["actions"]
        # RandomPolicy's generator advances per step: a fresh session (seed + 1) replays nothing.
        assert not np.array_equal(first, second)
        assert fresh.infer({"observation/robot_obs": np.zeros(15, np.float32), "prompt": "go"})["actions"].shape == (1, 7)
    finally:
        client._ws.close()
        fresh._ws.close()


def test_openpi_object_arrays_are_refused_without_unpickling(random_server):
    with connect(random_server.url + "/openpi") as ws:
        unpackb(ws.recv(timeout=5))
        evil = {b"__ndarray__": True, b"data": b"0" * 120, b"dtype": "|O", b"shape": [15]}
        ws.send(msgpack.packb({ROBOT_OBS: evil, "prompt": "go"}, use_bin_type=True))
        reply = ws.recv(timeout=5)
        assert isinstance(reply, str) and "not allowed" in reply


def test_native_and_openpi_share_the_root_path(random_server):
    with PolicyClient(random_server.url) as ours:
        theirs = websocket_client_policy.WebsocketClientPolicy(random_server.url)
        try:
            assert ours.step({ROBOT_OBS: np.zeros(15, np.float32)}, "go").shape == (7,)
            assert theirs.infer({ROBOT_OBS: np.zeros(15, np.float32), "prompt": "go"})["actions"].shape == (1, 7)
            ours.reset()
            assert ours.health()["sessions"] == 2
        finally:
            theirs._ws.close()


def test_an_unknown_path_is_refused_with_the_known_ones(random_server):
    try:
        with connect(random_server.url + "/nope") as ws:
            reply = unpackb(ws.recv(timeout=5))
            assert reply["type"] == "error" and all(p in reply["error"] for p in PATHS)
    except InvalidStatus as e:  # admission may refuse it in the HTTP upgrade already
        assert e.response.status_code == 404


def test_a_first_frame_without_type_or_observation_keys_gets_our_error(random_server):
    with connect(random_server.url) as ws:
        unpackb(ws.recv(timeout=5))
        ws.send(msgpack.packb({}))
        reply = unpackb(ws.recv(timeout=5))
        assert reply["type"] == "error" and reply["code"] == "bad_request"
        ws.send(packb({"type": "health", "id": 2}))
        assert unpackb(ws.recv(timeout=5))["id"] == 2


# -- vla-eval ----------------------------------------------------------------------------------------
def to_policy_obs(payload: dict, keys: tuple[str, ...]) -> dict:
    """The in-process twin of what the server reads from a vla-eval observation."""
    obs = dict(payload["images"])
    obs[ROBOT_OBS] = np.asarray(payload["states"], np.float32)
    if SCENE_OBS in payload:
        obs[SCENE_OBS] = np.asarray(payload[SCENE_OBS], np.float32)
    return {k: obs[k] for k in keys}


async def drive_chains(url: str, bench: TabletopBenchmark, local) -> tuple[int, int]:
    """vla-eval's Connection through every chain on ONE connection, each action checked against ``local``.

    Returns (subtask restarts, steps). The server's session lives across episodes, so its history
    must be reset by episode_start and episode_restart exactly where ``local`` is reset.
    """
    resets = steps = 0
    async with vla_connection.Connection(url, timeout=60, max_retries=1) as conn:
        for task in bench.get_tasks():
            await conn.start_episode({"task": {"name": task["name"]}})
            local.reset()
            raw = bench.reset(task)
            while True:
                payload = bench.make_obs(raw, task)
                payload["states"] = np.asarray(payload["states"], np.float32)
                if SCENE_OBS in payload:
                    payload[SCENE_OBS] = np.asarray(payload[SCENE_OBS], np.float32)
                if payload.get("episode_restart"):
                    local.reset()
                    resets += 1
                action = await conn.act(payload)
                expected = local.step(to_policy_obs(payload, local_keys(local)), payload["task_description"])
                np.testing.assert_array_equal(action["actions"], expected)
                steps += 1
                result = bench.step(action)
                raw = result.obs
                if result.done:
                    break
            await conn.end_episode({})
    return resets, steps


def local_keys(policy) -> tuple[str, ...]:
    return (ROBOT_OBS, SCENE_OBS) if type(policy).__name__ == "ScriptedExpert" else (RGB_STATIC, RGB_GRIPPER, ROBOT_OBS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["checkpoint", "expert"])
def test_vla_eval_connection_drives_chains_with_the_in_process_actions(kind, tiny_checkpoint):
    source = source_for(kind, tiny_checkpoint)
    # The expert finishes subtasks, so its chains cross subtask boundaries (episode_restart).
    ep_len = 150 if kind == "expert" else 15
    bench = make_bench(mode="chains", num_chains=2, ep_len=ep_len, send_scene_obs=kind == "expert")
    with ServerThread(PolicyServer(source, port=0)) as thread:
        resets, steps = asyncio.run(drive_chains(thread.url + "/vla-eval", bench, source.factory()))
    bench.cleanup()
    assert steps >= 2 * ep_len
    if kind == "expert":
        assert resets >= 1


class CountingPolicy:
    """Its action's first entry counts the steps since its last reset."""

    def __init__(self) -> None:
        self.n = 0

    def reset(self) -> None:
        self.n = 0

    def step(self, obs, instruction):
        self.n += 1
        return np.array([self.n, 0, 0, 0, 0, 0, 1], np.float32)


def test_vla_eval_resets_history_at_episode_start_and_restart_only():
    async def run(url):
        counts = []
        async with vla_connection.Connection(url, timeout=10, max_retries=1) as conn:
            obs = {"states": np.zeros(15, np.float32), "task_description": "go"}
            for restart_at in (None, 2):
                await conn.start_episode({"task": {}})
                for k in range(4):
                    payload = {**obs, "episode_restart": True} if k == restart_at else obs
                    counts.append(int((await conn.act(payload))["actions"][0]))
                await conn.end_episode({})
        return counts

    with ServerThread(PolicyServer(PolicySource("counting", CountingPolicy, (ROBOT_OBS,)), port=0)) as thread:
        assert asyncio.run(run(thread.url + "/vla-eval")) == [1, 2, 3, 4, 1, 2, 1, 2]


def test_vla_eval_hello_tells_the_benchmark_what_the_policy_needs():
    async def hello(url):
        async with vla_connection.Connection(url, timeout=10, max_retries=1) as conn:
            return conn.server_info

    checkpoint_like = PolicySource("checkpoint", lambda: None, (RGB_STATIC, RGB_GRIPPER, ROBOT_OBS))
    for source, params in [
        (policy_source(PolicySourceConfig("expert")), {"send_wrist_image": False, "send_state": True, "send_scene_obs": True}),
        (checkpoint_like, {"send_wrist_image": True, "send_state": True}),
    ]:
        with ServerThread(PolicyServer(source, port=0)) as thread:
            info = asyncio.run(hello(thread.url + "/vla-eval"))
        assert info["observation_params"] == params
        assert info["protocol_version"] == vla_messages.PROTOCOL_VERSION
        assert set(info["action_spec"]) == {"position", "rotation", "gripper"}


@pytest.mark.parametrize("fmt", ["raw", "png", "jpeg"])
def test_vla_eval_image_formats_decode_to_what_was_sent(fmt):
    from roboflamingo.deploy.protocols.vla_eval import unpack_message

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    previous = vla_numpy_codec.get_image_format()
    vla_numpy_codec.set_image_format(fmt)
    try:
        frame = vla_messages.pack_message(
            vla_messages.Message(vla_messages.MessageType.OBSERVATION, {"images": {"rgb_static": img}}, seq=3)
        )
    finally:
        vla_numpy_codec.set_image_format(previous)
    got = unpack_message(frame, limit=1 << 20)["payload"]["images"]["rgb_static"]
    assert got.shape == img.shape and got.dtype == np.uint8
    if fmt != "jpeg":  # lossy
        np.testing.assert_array_equal(got, img)


def _png(h: int, w: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


BAD_IMAGES = {
    "shape lies about the png": ({"__image__": True, "format": "png", "data": _png(8, 8), "shape": [16, 16, 3]}, "its shape says"),
    "bomb": ({"__image__": True, "format": "png", "data": _png(8, 8), "shape": [5000, 5000, 3]}, "max_message_bytes"),
    "unknown format": ({"__image__": True, "format": "bmp", "data": b"x", "shape": [1, 1, 3]}, "raw, png or jpeg"),
    "raw float": ({"__image__": True, "format": "raw", "data": b"\0" * 12, "dtype": "<f4", "shape": [1, 1, 3]}, "uint8"),
    "not an image": ({"__image__": True, "format": "png", "data": b"garbage", "shape": [1, 1, 3]}, "cannot decode"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_vla_eval_bad_frames_get_an_error_message_and_the_session_goes_on(random_server, name):
    image, match = BAD_IMAGES[name]

    def msg(kind, payload, seq):
        return msgpack.packb({"type": kind, "payload": payload, "seq": seq, "timestamp": 0.0}, use_bin_type=True)

    with connect(random_server.url + "/vla-eval", max_size=None) as ws:
        ws.send(msg("hello", {}, 1))
        assert unpackb(ws.recv(timeout=5))["type"] == "hello"
        ws.send(msg("observation", {"images": {"rgb_static": image}, "states": np.zeros(15).tolist(), "task_description": "go"}, 2))
        reply = unpackb(ws.recv(timeout=5))
        assert reply["type"] == "error" and match in reply["payload"]["error"], reply
        ws.send(msg("episode_start", {"task": {}}, 3))  # no reply to an episode start that succeeds
        ws.send(msg("observation", {"states": np.zeros(15).tolist(), "task_description": "go"}, 4))
        reply = unpackb(ws.recv(timeout=5))
        assert reply["type"] == "action" and reply["seq"] == 4 and reply["payload"]["actions"].shape == (7,)


# -- tokens ------------------------------------------------------------------------------------------
TOKEN = "s3cret-token"


class TokenServer(PolicyServer):
    """The server with a token check in the handshake: the seam the security work (#18) fills.

    It rejects with HTTP 401 what ``auth.token_matches`` refuses, before any session is made.
    """

    def _process_request(self, connection, request):
        from http import HTTPStatus

        if request.path != "/healthz" and not auth.token_matches(request, TOKEN):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "token required\n")
        return super()._process_request(connection, request)


@pytest.fixture
def token_server():
    with ServerThread(TokenServer(policy_source(PolicySourceConfig("random", seed=0)), port=0)) as t:
        yield t


def test_each_protocol_carries_the_token_its_own_way(token_server):
    port = token_server.server.port
    obs = {ROBOT_OBS: np.zeros(15, np.float32)}
    # openpi: Authorization: Api-Key <key>
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key=TOKEN)
    assert client.infer({**obs, "prompt": "go"})["actions"].shape == (1, 7)
    client._ws.close()
    with pytest.raises(InvalidStatus, match="401"):
        websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key="wrong")
    with pytest.raises(InvalidStatus, match="401"):
        websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)

    # vla-eval: only a URL, so the token rides in it (user info -> Basic auth, or ?token=)
    async def act(url):
        async with vla_connection.Connection(url, timeout=10, max_retries=1, backoff_base=0.0) as conn:
            await conn.start_episode({"task": {}})
            return await conn.act({"states": obs[ROBOT_OBS], "task_description": "go"})

    for url in (f"ws://roboflamingo:{TOKEN}@127.0.0.1:{port}/vla-eval", f"ws://127.0.0.1:{port}/vla-eval?token={TOKEN}"):
        assert asyncio.run(act(url))["actions"].shape == (7,)
    for url in (f"ws://roboflamingo:wrong@127.0.0.1:{port}/vla-eval", f"ws://127.0.0.1:{port}/vla-eval"):
        with pytest.raises(ConnectionError):
            asyncio.run(act(url))

    # ours and generic tools: Authorization: Bearer <token>
    with connect(token_server.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert unpackb(ws.recv(timeout=5))["type"] == "metadata"
        ws.send(packb({"type": "step", "id": 1, "obs": obs, "instruction": "go"}))
        assert unpackb(ws.recv(timeout=5))["type"] == "action"


@pytest.mark.parametrize(
    "headers, path, expected",
    [
        ({"Authorization": "Api-Key abc"}, "/", "abc"),
        ({"Authorization": "bearer abc"}, "/", "abc"),
        ({"Authorization": "Basic dXNlcjphYmM="}, "/", "abc"),  # user:abc
        ({"Authorization": "Basic dXNlcg=="}, "/", None),  # user, no password
        ({"Authorization": "Basic !!"}, "/", None),
        ({"Authorization": "Digest abc"}, "/?token=abc", None),  # a header that says otherwise wins
        ({}, "/vla-eval?token=abc", "abc"),
        ({}, "/vla-eval?token=", None),
        ({}, "/", None),
    ],
)
def test_presented_token_reads_every_carrier(headers, path, expected):
    class Request:
        pass

    request = Request()
    request.headers, request.path = headers, path
    assert auth.presented_token(request) == expected
    assert auth.token_matches(request, "abc") is (expected == "abc")


def test_a_new_openpi_session_starts_a_fresh_history_and_sessions_do_not_mix():
    with ServerThread(PolicyServer(PolicySource("counting", CountingPolicy, (ROBOT_OBS,)), port=0)) as thread:
        obs = {ROBOT_OBS: np.zeros(15, np.float32), "prompt": "go"}
        a = websocket_client_policy.WebsocketClientPolicy(thread.url)
        b = websocket_client_policy.WebsocketClientPolicy(thread.url + "/openpi")
        try:
            got = [int(c.infer(obs)["actions"][0, 0]) for c in (a, a, b, a, b)]
        finally:
            a._ws.close()
            b._ws.close()
        assert got == [1, 2, 1, 3, 2]
        c = websocket_client_policy.WebsocketClientPolicy(thread.url)
        try:
            assert c.infer(obs)["actions"][0, 0] == 1
        finally:
            c._ws.close()


def test_a_full_server_refuses_a_vla_eval_client_in_its_own_protocol():
    async def hello(url):
        async with vla_connection.Connection(url, timeout=10, max_retries=1) as conn:
            return conn.server_info

    srv = PolicyServer(policy_source(PolicySourceConfig("random")), port=0, max_sessions=1)
    with ServerThread(srv) as thread, PolicyClient(thread.url):
        with pytest.raises(RuntimeError, match="Expected HELLO reply, got MessageType.ERROR"):
            asyncio.run(hello(thread.url + "/vla-eval"))


class _RecordingSocket:
    """A websocket that logs what the server does to it; its client has one frame (HELLO) to send."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.sent: list[bytes | str] = []

    async def recv(self) -> bytes:
        self.calls.append("recv")
        return b"hello"

    async def send(self, frame: bytes | str) -> None:
        self.calls.append("send")
        self.sent.append(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.calls.append(f"close {code}")


@pytest.mark.parametrize("path, order", [
    # vla-eval's client speaks first and, finding the socket closed before its HELLO went out,
    # reconnects instead of reading the refusal: it must get the refusal as the reply to HELLO.
    ("/vla-eval", ["recv", "send", "close 1013"]),
    # ours and openpi's wait for the server's first frame: the refusal goes out at once.
    ("/", ["send", "close 1013"]),
    ("/openpi", ["send", "close 1013"]),
])
def test_a_refusal_answers_the_first_frame_of_a_client_that_speaks_first(path, order):
    from roboflamingo.deploy.protocols import ProtocolConnection, translator_for

    srv = PolicyServer(policy_source(PolicySourceConfig("random")), port=0)
    raw = _RecordingSocket()
    conn = ProtocolConnection(raw, translator_for(path, srv, raw.send))
    refusal = packb(srv._error(None, "server_full", "server holds 1 sessions"))
    asyncio.run(conn.refuse(refusal, 1013, "server full", wait_s=5.0))
    assert raw.calls == order
    assert b"server_full" in raw.sent[0]


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"actions": np.zeros(6)}, "shape"),
        ({"actions": np.full(7, np.nan)}, "non-finite"),
        ({"move": np.zeros(7)}, "must carry 'actions'"),
        ([0.0] * 7, "must carry 'actions'"),
    ],
)
def test_the_benchmark_refuses_malformed_actions(payload, match):
    from roboflamingo.benchmarks.tabletop import parse_action

    with pytest.raises(ValueError, match=match):
        parse_action(payload)


def test_the_benchmark_takes_an_action_or_the_first_row_of_a_chunk():
    from roboflamingo.benchmarks.tabletop import parse_action

    chunk = np.arange(21, dtype=np.float64).reshape(3, 7) / 100
    np.testing.assert_array_equal(parse_action({"actions": chunk}), chunk[0].astype(np.float32))
    assert parse_action({"action": [0.0] * 7}).dtype == np.float32


# -- hostile images (issue 31 items 2 and 10) --------------------------------------------------------
def test_vla_eval_images_of_one_frame_are_bounded_in_total_once_decoded(monkeypatch):
    from roboflamingo.deploy.codec import CodecError
    from roboflamingo.deploy.protocols.vla_eval import unpack_message

    png = {"__image__": True, "format": "png", "data": _png(20, 20), "shape": [20, 20, 3]}  # 1200 bytes decoded

    def frame(n):
        images = {f"cam{i}": png for i in range(n)}
        return msgpack.packb({"type": "observation", "payload": {"images": images}, "seq": 1, "timestamp": 0.0},
                             use_bin_type=True)

    assert len(unpack_message(frame(2), 3000)["payload"]["images"]) == 2
    # each image alone is within the limit; three of them together are not, and that is known from
    # their declared shapes before any of them is decompressed
    from PIL import Image

    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    with pytest.raises(CodecError, match=r"past max_message_bytes=3000 once decoded \(2400 bytes already\)"):
        unpack_message(frame(3), 3000)
    assert opened == []


def test_vla_eval_images_are_decoded_off_the_event_loop(monkeypatch):
    """While one vla-eval frame decodes, another client's requests are answered."""
    import threading

    from roboflamingo.deploy.protocols import vla_eval

    decoding, release, threads = threading.Event(), threading.Event(), []
    real = vla_eval.unpack_message

    def slow_unpack(data, limit):
        threads.append(threading.current_thread().name)
        decoding.set()
        release.wait(20)  # only a safety net: the test releases it as soon as the other client is served
        return real(data, limit)

    monkeypatch.setattr(vla_eval, "unpack_message", slow_unpack)
    server = PolicyServer(policy_source(PolicySourceConfig("random", seed=0)), port=0)
    with ServerThread(server) as thread, connect(thread.url + "/vla-eval", max_size=None) as ws:
        try:
            ws.send(msgpack.packb({"type": "hello", "payload": {}, "seq": 1, "timestamp": 0.0}, use_bin_type=True))
            assert decoding.wait(10)
            with PolicyClient(thread.url, timeout_s=5) as other:
                assert other.health()["status"] == "ok"
        finally:
            release.set()
        assert unpackb(ws.recv(timeout=10))["type"] == "hello"
    assert threads and threads[0].startswith("decode")


def test_error_replies_carry_no_memory_addresses(random_server):
    image = {"__image__": True, "format": "png", "data": b"garbage", "shape": [1, 1, 3]}
    with connect(random_server.url + "/vla-eval", max_size=None) as ws:
        ws.send(msgpack.packb({"type": "observation", "payload": {"images": {"rgb_static": image}}, "seq": 2,
                               "timestamp": 0.0}, use_bin_type=True))
        reply = unpackb(ws.recv(timeout=5))
    assert reply["type"] == "error" and "not a png file" in reply["payload"]["error"]
    assert "0x" not in reply["payload"]["error"], reply

    class Leaky:
        def reset(self):
            pass

        def step(self, obs, instruction):
            raise ValueError(f"cannot use {object()}")

    with ServerThread(PolicyServer(PolicySource("leaky", Leaky, (ROBOT_OBS,)), port=0)) as thread:
        with PolicyClient(thread.url, timeout_s=5) as client:
            from roboflamingo.deploy.client import PolicyServerError

            with pytest.raises(PolicyServerError) as err:
                client.step({ROBOT_OBS: np.zeros(15, np.float32)}, "go")
    assert "cannot use <object object>" in str(err.value) and "0x" not in str(err.value)
