"""Shared secrets for the deployment path: the policy server's token and rosbridge's rosauth MAC.

* Policy server: a token in the websocket handshake (``Authorization: Bearer <token>``, or each
  client protocol's own carrier: ``presented_token``). A
  browser page cannot set that header on a websocket, so a token also shuts out web pages that
  reach a local server through the browser; ``Origin`` checks do the rest (``server.py``).
* rosbridge: the ``auth`` op of the rosbridge v2 protocol, verified by ``rosauth``'s
  ``ros_mac_authentication`` service (ROS 1 rosbridge with ``authenticate:=true``)::

      mac = sha512_hex(secret + client + dest + rand + str(int(t)) + level + str(int(end)))

  accepted while ``|t - now| < 5 s`` and ``end > now``. Our relay verifies the same MAC, so a node
  that authenticates to a real rosbridge authenticates to the relay unchanged.

A secret comes from a file (``*_file``, first line) or an environment variable, never from a
command line (which every local user can read in ``ps``); an inline value is accepted for tests.
Every secret has at least ``MIN_SECRET_CHARS`` characters (rosauth's are 16), and a secret file
must not be readable by other users or writable by anyone but its owner (``chmod 600``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN_ENV = "ROBOFLAMINGO_TOKEN"
ROSAUTH_ENV = "ROBOFLAMINGO_ROSAUTH_SECRET"
ROSAUTH_WINDOW_S = 5.0  # rosauth's tolerance between the request time and the server clock
TOKEN_SCHEMES = ("bearer", "api-key")  # compared case-insensitively, as HTTP auth schemes are
TOKEN_QUERY_KEY = "token"
MIN_SECRET_CHARS = 16  # rosauth's secret length; a 1-character token falls to a handful of guesses


def _check_strength(secret: str, which: str) -> str:
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{which} has {len(secret)} characters, at least {MIN_SECRET_CHARS} are needed "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return secret


def read_secret(value: str = "", path: str = "", env: str = "", what: str = "token") -> str:
    """The secret from ``value``, else the first line of ``path``, else ``$env``; "" when none.

    ``ValueError`` (naming the file or variable) for a secret shorter than ``MIN_SECRET_CHARS``, or a
    file that other users may read or anyone but its owner may write.
    """
    if value:
        return _check_strength(value, f"the inline {what}")
    if path:
        p = Path(path).expanduser()
        try:
            mode = p.stat().st_mode
            text = p.read_text().splitlines()
        except OSError as e:
            raise ValueError(f"{what} file {p}: cannot be read ({e.strerror or e})") from e
        if mode & 0o027:
            # Group read is allowed (a service group, Kubernetes' fsGroup); world read or any write is not.
            raise ValueError(f"{what} file {p}: its mode {oct(mode & 0o777)} lets other users read or change "
                             f"it; run chmod 600 {p}")
        secret = text[0].strip() if text else ""
        if not secret:
            raise ValueError(f"{what} file {p}: is empty")
        return _check_strength(secret, f"{what} file {p}: the {what}")
    secret = os.environ.get(env, "") if env else ""
    return _check_strength(secret, f"${env}: the {what}") if secret else ""


def is_loopback(host: str) -> bool:
    """True when ``host`` binds only to this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A host name: it is loopback only if every address it resolves to is.
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def presented_token(request: Any) -> str | None:
    """The token a handshake request carries (``request.headers`` and ``request.path``), or None.

    Each client protocol carries it its own way: ``Authorization: Bearer <token>`` (our
    ``PolicyClient``, ``roboflamingo ros``, generic tools); ``Authorization: Api-Key <token>``
    (openpi-client's ``api_key=``); vla-eval's ``Connection`` takes nothing but a URL, so there the
    token rides in its user info (``ws://user:<token>@host:port/vla-eval``, which websockets sends as
    ``Authorization: Basic``; the user name is ignored) or in ``?token=`` (which ends up in proxy
    logs). vla-eval logs the URL it connects to at INFO level: keep those logs private.
    """
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() in TOKEN_SCHEMES:
            return value.strip() or None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            _user, sep, password = decoded.partition(":")
            return password if sep and password else None
        return None
    values = parse_qs(urlsplit(request.path).query).get(TOKEN_QUERY_KEY)
    return values[-1] if values and values[-1] else None


def token_matches(request: Any, token: str) -> bool:
    """True when the handshake ``request`` presents exactly ``token`` (constant-time compare)."""
    got = presented_token(request)
    return got is not None and hmac.compare_digest(got.encode(), token.encode())


def _secs(t: Any) -> int:
    # rosbridge clients send times as float seconds or as {secs, nsecs} / {sec, nanosec}.
    if isinstance(t, dict):
        t = t.get("secs", t.get("sec"))
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise ValueError(f"auth time must be a number or {{secs, nsecs}}, got {t!r}"[:200])
    return int(t)


def rosauth_mac(secret: str, client: str, dest: str, rand: str, t: Any, level: str, end: Any) -> str:
    text = f"{secret}{client}{dest}{rand}{_secs(t)}{level}{_secs(end)}"
    return hashlib.sha512(text.encode()).hexdigest()


def rosauth_message(
    secret: str, client: str = "roboflamingo", dest: str = "rosbridge", level: str = "control",
    lifetime_s: float = 24 * 3600.0, now: float | None = None,
) -> dict[str, Any]:
    """A fresh rosbridge ``auth`` op (new random string and time each call, as rosauth expects)."""
    t = time.time() if now is None else now
    end = t + lifetime_s
    rand = secrets.token_hex(8)
    mac = rosauth_mac(secret, client, dest, rand, t, level, end)
    return {"op": "auth", "mac": mac, "client": client, "dest": dest, "rand": rand, "t": t,
            "level": level, "end": end}


def rosauth_valid(secret: str, msg: dict, now: float) -> bool:
    """rosauth's check: the MAC matches, ``t`` is within 5 s of ``now`` and ``end`` is in the future."""
    try:
        fields = [msg[k] for k in ("client", "dest", "rand", "level")]
        if not all(isinstance(f, str) for f in fields) or not isinstance(msg.get("mac"), str):
            return False
        client, dest, rand, level = fields
        t, end = _secs(msg["t"]), _secs(msg["end"])
    except (KeyError, ValueError):
        return False
    if abs(t - now) >= ROSAUTH_WINDOW_S + 1 or end <= now:  # +1: t is compared in whole seconds
        return False
    expected = rosauth_mac(secret, client, dest, rand, t, level, end)
    return hmac.compare_digest(expected.encode(), msg["mac"].encode())
