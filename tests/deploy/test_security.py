"""Who may drive the policy server, and what a hostile or careless client can cost it (issue 18)."""

import asyncio
import datetime
import ipaddress
import logging

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from roboflamingo.deploy import ros_node
from roboflamingo.deploy.client import PolicyClient, PolicyServerError
from roboflamingo.deploy.codec import CodecError, packb, unpackb
from roboflamingo.deploy.server import (
    MAX_ERROR_CHARS,
    ByteBudget,
    Job,
    PolicyServer,
    ServerThread,
    server_ssl_context,
)
from roboflamingo.policies import PolicySource, PolicySourceConfig
from roboflamingo.robots.calvin import RGB_STATIC, ROBOT_OBS

from .test_server import HistoryPolicy, obs

TOKEN = "s3cret-token-for-tests"


class CountingPolicy(HistoryPolicy):
    instructions: list[str] = []

    def step(self, o, instruction):
        CountingPolicy.instructions.append(instruction)
        return super().step(o, instruction)


def source(keys=(ROBOT_OBS,)) -> PolicySource:
    return PolicySource("history", lambda: CountingPolicy(delay_s=0.0), keys)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# -- admission: token, Origin, path ---------------------------------------------------------------
def test_a_public_bind_without_a_token_is_refused_unless_insecure_which_is_logged(caplog):
    with pytest.raises(ValueError, match="needs a token"):
        PolicyServer(source(), host="0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="roboflamingo.serve"):
        PolicyServer(source(), host="0.0.0.0", insecure=True)
    assert "INSECURE" in caplog.text
    PolicyServer(source(), host="0.0.0.0", token=TOKEN)  # a token is enough
    PolicyServer(source(), host="127.0.0.1")  # loopback needs none


def test_serve_command_refuses_a_public_bind_without_a_token(capsys):
    assert Job(policy=PolicySourceConfig("random"), host="0.0.0.0") is not None  # the config itself is fine
    from roboflamingo.deploy.server import run

    assert run(Job(policy=PolicySourceConfig("random"), host="0.0.0.0", duration_s=0.01)) == 2
    assert "needs a token" in capsys.readouterr().err


@pytest.fixture
def guarded():
    server = PolicyServer(source(), port=0, token=TOKEN, allowed_origins=["https://ok.example"])
    with ServerThread(server) as thread:
        yield thread


def test_the_token_is_required_and_checked(guarded, monkeypatch):
    monkeypatch.delenv("ROBOFLAMINGO_TOKEN", raising=False)
    for token in ("", "wrong", TOKEN + "x"):
        with pytest.raises(PolicyServerError, match="unauthorized"):
            PolicyClient(guarded.url, token=token).connect()
    with PolicyClient(guarded.url, token=TOKEN) as client:
        assert client.step(obs(1.0), "go").shape == (7,)
    monkeypatch.setenv("ROBOFLAMINGO_TOKEN", TOKEN)  # the default for every client
    with PolicyClient(guarded.url) as client:
        assert client.health()["sessions"] == 1
    assert guarded.server.counters["refused"] == 3


def test_browser_origins_are_refused_unless_allowed(guarded):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for origin in ("http://evil.example", "null", "http://localhost"):
        with pytest.raises(InvalidStatus) as e:
            connect(guarded.url, additional_headers={**auth, "Origin": origin}).close()
        assert e.value.response.status_code == 403
    with connect(guarded.url, additional_headers={**auth, "Origin": "https://ok.example"}) as ws:
        assert unpackb(ws.recv(timeout=10))["type"] == "metadata"


def test_only_the_two_paths_exist(guarded):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(InvalidStatus) as e:
        connect(guarded.url + "/admin", additional_headers=auth).close()
    assert e.value.response.status_code == 404


def test_the_ros_node_sends_the_token_and_reports_a_refusal_without_a_traceback(guarded, tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    job = ros_node.Job(policy=PolicySourceConfig("remote", server=guarded.url, token_file=str(token_file)))
    policy = ros_node.make_policy(job)
    assert policy.step(obs(2.0), "go").shape == (7,)
    policy.close()
    (tmp_path / "bad").write_text("a-wrong-token-of-32-characters!!\n")
    (tmp_path / "bad").chmod(0o600)
    assert ros_node.run(ros_node.Job(policy=PolicySourceConfig("remote", server=guarded.url, token_file=str(tmp_path / "bad")))) == 2
    assert "refused the session" in capsys.readouterr().err


def test_the_ros_node_reports_a_full_server_without_a_traceback(capsys):
    with ServerThread(PolicyServer(source(), port=0, max_sessions=1)) as thread:
        with PolicyClient(thread.url):
            assert ros_node.run(ros_node.Job(policy=PolicySourceConfig("remote", server=thread.url))) == 2
    assert "server_full" in capsys.readouterr().err


# -- TLS ------------------------------------------------------------------------------------------
def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_wss_with_a_given_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    server = PolicyServer(source(), port=0, token=TOKEN, ssl_context=server_ssl_context(cert, key))
    with ServerThread(server) as thread:
        assert thread.url.startswith("wss://127.0.0.1:")
        with PolicyClient(thread.url, token=TOKEN, ssl_cafile=cert) as client:
            assert client.step(obs(3.0), "go")[0] == 1
        with pytest.raises(OSError):  # an unknown certificate is not trusted
            PolicyClient(thread.url, token=TOKEN).connect()
        with pytest.raises(ConnectionError, match="no websocket handshake"):  # plain ws:// to a TLS port
            PolicyClient(thread.url.replace("wss://", "ws://"), token=TOKEN).connect()


# -- what a session may cost ------------------------------------------------------------------------
def test_idle_sessions_are_closed_and_their_slots_freed():
    clock = Clock()
    server = PolicyServer(source(), port=0, max_sessions=2, idle_timeout_s=30.0, clock=clock)
    with ServerThread(server) as thread:
        idle_a, idle_b = PolicyClient(thread.url).connect(), PolicyClient(thread.url).connect()
        with pytest.raises(PolicyServerError, match="server_full"):
            PolicyClient(thread.url).connect()

        def sweep() -> int:
            return asyncio.run_coroutine_threadsafe(server.drop_idle(), thread._loop).result(10)

        clock.t = 20.0
        idle_b.step(obs(1.0), "go")  # b is active at t=20, a is not
        clock.t = 40.0
        assert sweep() == 1 and set(server.sessions) == {idle_b.session}
        with pytest.raises(ConnectionError):
            idle_a.step(obs(1.0), "go")
        with PolicyClient(thread.url) as fresh:  # the slot is free again
            assert fresh.health()["sessions"] == 2
        assert server.counters["idle_closed"] == 1
        idle_b.close()


def test_the_byte_budget_pauses_a_session_only_beyond_its_sustained_rate():
    b = ByteBudget(rate=1000.0, burst=2000.0, now=0.0)
    assert b.charge(1500, now=0.0) == 0.0  # within the burst
    assert b.charge(1000, now=0.0) == pytest.approx(0.5)  # 500 bytes over: half a second at 1000 B/s
    assert b.charge(0, now=10.0) == 0.0 and b.tokens == 2000.0  # refills up to the burst, no further
    assert ByteBudget(rate=0.0, burst=1.0, now=0.0).charge(10**9, now=0.0) == 0.0  # 0 = unlimited


def test_a_session_streaming_beyond_its_byte_rate_is_throttled_and_still_answered():
    server = PolicyServer(source(), port=0, max_message_bytes=4096, max_session_bytes_per_s=5000.0)
    with ServerThread(server) as thread:
        with PolicyClient(thread.url) as client:
            for i in range(3):  # 12 kB against an 8 kB burst: only round trips over 0.7 s each would refill it
                reply = client.send_raw(msgpack.packb({"type": "health", "id": i, "pad": b"x" * 4000}))
                assert reply["id"] == i
        assert server.counters["throttled"] >= 1


def test_health_counts_open_sessions_not_the_cumulative_total():
    with ServerThread(PolicyServer(source(), port=0)) as thread:
        for _ in range(3):
            with PolicyClient(thread.url):
                pass
        with PolicyClient(thread.url) as a, PolicyClient(thread.url):
            h = a.health()
        assert h["sessions"] == 2 and h["sessions_total"] == 5


def test_a_ragged_camera_image_gets_an_error_reply_not_a_closed_connection():
    with ServerThread(PolicyServer(source((RGB_STATIC, ROBOT_OBS)), port=0)) as thread:
        with PolicyClient(thread.url) as client:
            msg = {"type": "step", "id": 1, "instruction": "go",
                   "obs": {ROBOT_OBS: [0.0] * 15, RGB_STATIC: [[[1, 2, 3]], [[1, 2]]]}}
            reply = client.send_raw(msgpack.packb(msg))
            assert reply["code"] == "bad_observation" and "rgb_static" in reply["error"]
            assert client.health()["status"] == "ok"


def test_long_instructions_are_refused_before_the_policy_and_echoes_are_truncated():
    CountingPolicy.instructions = []
    with ServerThread(PolicyServer(source(), port=0, max_instruction_chars=100)) as thread:
        with PolicyClient(thread.url) as client:
            with pytest.raises(PolicyServerError, match="too_long"):
                client.step(obs(1.0), "x" * 60_000)
            reply = client.send_raw(msgpack.packb({"type": "y" * 60_000, "id": "z" * 60_000}))
            assert reply["code"] == "bad_request" and reply["id"] is None
            assert len(reply["error"]) < MAX_ERROR_CHARS + 60
            client.step(obs(1.0), "short")
    assert CountingPolicy.instructions == ["short"]


def test_a_frame_of_millions_of_small_ints_is_refused_by_counting_not_decoded():
    # 8 MB of positive fixints is 8 million Python objects (~0.7 s on the event loop) if decoded.
    frame = msgpack.packb({"type": "step", "obs": {ROBOT_OBS: [[1] * 4000] * 2000}})
    with pytest.raises(CodecError, match="too many values"):
        unpackb(frame)
    with pytest.raises(CodecError, match="max_array_len"):
        unpackb(msgpack.packb([1] * 5_000_000))
    with pytest.raises(CodecError, match="max_str_len"):
        unpackb(msgpack.packb({"instruction": "x" * 7_000_000}))
    legit = packb({"type": "step", "obs": {RGB_STATIC: np.zeros((200, 200, 3), np.uint8), ROBOT_OBS: [0.0] * 15}})
    assert unpackb(legit)["obs"][RGB_STATIC].shape == (200, 200, 3)


# -- fuzz: the decoder and the server under random bytes and random structures -----------------------
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
    st.text(max_size=20), st.binary(max_size=64),
)
structures = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(["type", "obs", "id", "__ndarray__", "dtype",
                                                                         "shape", "data", RGB_STATIC, ROBOT_OBS])),
                        inner, max_size=6),
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_decoder_under_random_bytes_returns_data_or_a_codec_error(data):
    try:
        out = unpackb(data)
    except CodecError as e:
        assert str(e)  # says why
        return
    assert out is None or isinstance(out, (bool, int, float, str, bytes, list, dict, np.ndarray))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(value=structures)
def test_decoder_under_random_structures_returns_data_or_a_codec_error(value):
    try:
        out = unpackb(msgpack.packb(value, use_bin_type=True))
    except CodecError:
        return
    assert out is None or isinstance(out, (bool, int, float, str, bytes, list, dict, np.ndarray))


nested_ints = st.recursive(st.integers(0, 255), lambda inner: st.lists(inner, max_size=4), max_leaves=24)
step_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["step", "reset", "health", "metadata", "bogus"]), "id": leaf},
    optional={"obs": st.one_of(structures, st.dictionaries(st.sampled_from([RGB_STATIC, ROBOT_OBS]),
                                                           st.one_of(nested_ints, structures))),
              "instruction": st.one_of(st.text(max_size=30), structures)},
)


steps = st.fixed_dictionaries({
    "type": st.just("step"), "id": st.integers(0, 2**31), "instruction": st.text(max_size=20),
    "obs": st.dictionaries(st.sampled_from([RGB_STATIC, ROBOT_OBS, "other"]), st.one_of(nested_ints, structures),
                           min_size=1),
})


@pytest.fixture(scope="module")
def fuzz_server():
    with ServerThread(PolicyServer(source((RGB_STATIC, ROBOT_OBS)), port=0, max_message_bytes=1 << 16)) as thread:
        yield thread


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=st.one_of(steps, step_like, structures), raw=st.binary(max_size=256), raw_first=st.booleans())
def test_server_answers_every_random_message_and_keeps_the_session(fuzz_server, msg, raw, raw_first):
    with connect(fuzz_server.url, max_size=None) as ws:
        assert unpackb(ws.recv(timeout=10))["type"] == "metadata"
        # On "/" the first frame picks the protocol (a map without "type" would make it openpi's):
        # a native frame first pins this session to ours, whose decoder is what is fuzzed here.
        ws.send(packb({"type": "health", "id": 6}))
        assert unpackb(ws.recv(timeout=10))["id"] == 6
        frames = [raw, msgpack.packb(msg, use_bin_type=True)]
        for frame in frames if raw_first else frames[::-1]:
            ws.send(frame)
            try:
                reply = unpackb(ws.recv(timeout=10))
            except ConnectionClosed as e:  # the session must survive any single bad frame
                pytest.fail(f"the server closed the session ({e}) on {frame[:80]!r}")
            assert reply["type"] in ("error", "action", "reset", "health", "metadata")
            if reply["type"] == "error":
                assert len(reply["error"]) < MAX_ERROR_CHARS + 60
        ws.send(packb({"type": "health", "id": 7}))
        assert unpackb(ws.recv(timeout=10))["id"] == 7


# -- secrets: strength and exposure (issue 31 item 10) --------------------------------------------
def test_short_or_exposed_secrets_are_refused_with_the_file_named(tmp_path, monkeypatch, capsys):
    from roboflamingo.deploy.auth import MIN_SECRET_CHARS, read_secret
    from roboflamingo.deploy.server import run

    short = tmp_path / "short"
    short.write_text("x\n")
    short.chmod(0o600)
    with pytest.raises(ValueError, match=f"token file {short}: the token has 1 characters, at least {MIN_SECRET_CHARS}"):
        read_secret(path=str(short))
    exposed = tmp_path / "exposed"
    exposed.write_text(TOKEN + "\n")
    for mode in (0o644, 0o604, 0o620, 0o602):
        exposed.chmod(mode)
        with pytest.raises(ValueError, match=rf"token file {exposed}: its mode {oct(mode)} .* chmod 600"):
            read_secret(path=str(exposed))
    for mode in (0o600, 0o400, 0o640):  # the owner, and a service group that may only read
        exposed.chmod(mode)
        assert read_secret(path=str(exposed)) == TOKEN
    monkeypatch.setenv("ROBOFLAMINGO_TOKEN", "abc")
    with pytest.raises(ValueError, match=r"\$ROBOFLAMINGO_TOKEN: the token has 3 characters"):
        read_secret(env="ROBOFLAMINGO_TOKEN")
    monkeypatch.delenv("ROBOFLAMINGO_TOKEN")
    with pytest.raises(ValueError, match="the inline token has 5 characters"):
        read_secret("short")
    # the serve command refuses it in one line, before any policy is loaded
    exposed.chmod(0o644)
    job = Job(policy=PolicySourceConfig("random"), host="0.0.0.0", token_file=str(exposed), duration_s=0.01)
    assert run(job) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chmod 600" in err and "Traceback" not in err


def test_the_ros_and_sim_robot_commands_refuse_a_weak_secret_file_in_one_line(tmp_path, capsys):
    from roboflamingo.deploy import sim_robot
    from roboflamingo.deploy.config import BridgeConfig

    weak = tmp_path / "weak"
    weak.write_text("1234\n")
    weak.chmod(0o600)
    assert ros_node.run(ros_node.Job(policy=PolicySourceConfig("remote", server="ws://127.0.0.1:9", token_file=str(weak)))) == 2
    assert sim_robot.run(sim_robot.Job(serve_bridge=True, deploy=BridgeConfig(port=9, rosauth_secret_file=str(weak)))) == 2
    err = capsys.readouterr().err
    assert err.count("has 4 characters") == 2 and "Traceback" not in err


def test_a_vla_eval_client_whose_frames_are_all_refused_is_throttled_too():
    """Issue 31 item 2: refused foreign frames never reached the byte budget, so a client streaming
    them (each one received, unpacked and answered on the server) had no rate limit at all."""
    server = PolicyServer(source(), port=0, max_message_bytes=4096, max_session_bytes_per_s=5000.0)
    bad = msgpack.packb({"type": "observation", "payload": {"images": {"rgb_static": {
        "__image__": True, "format": "png", "data": b"x" * 3000, "shape": [100, 100, 3]}}}, "seq": 1,
        "timestamp": 0.0}, use_bin_type=True)
    with ServerThread(server) as thread, connect(thread.url + "/vla-eval", max_size=None) as ws:
        for _ in range(4):  # 12 kB against an 8 kB burst
            ws.send(bad)
            assert unpackb(ws.recv(timeout=10))["type"] == "error"
    assert server.counters["throttled"] >= 1
