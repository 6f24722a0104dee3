"""Where each client protocol carries the server's token in the websocket handshake.

- our ``PolicyClient`` and generic tools: ``Authorization: Bearer <token>``;
- openpi-client (``WebsocketClientPolicy(api_key=...)``): ``Authorization: Api-Key <token>``;
- vla-eval: its ``Connection`` takes nothing but ``server.url`` (no headers, no auth field in HELLO),
  so the token rides in the URL: ``ws://user:<token>@host:port/vla-eval`` (websockets turns the URL's
  user info into ``Authorization: Basic base64(user:<token>)``; the user name is ignored) or
  ``ws://host:port/vla-eval?token=<token>`` (query strings end up in proxy logs; prefer user info).
  Either way vla-eval itself logs the URL it connects to at INFO level: keep those logs private.

``presented_token`` reads whichever is present; ``token_matches`` compares in constant time. The
server's connection handling decides when a token is required (security issue #18).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import parse_qs, urlsplit

SCHEMES = ("bearer", "api-key")  # compared case-insensitively, as HTTP auth schemes are
QUERY_KEY = "token"


def presented_token(request: Any) -> str | None:
    """The token a handshake request carries (``request.headers`` and ``request.path``), or None."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() in SCHEMES:
            return value.strip() or None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            _user, sep, password = decoded.partition(":")
            return password if sep and password else None
        return None
    values = parse_qs(urlsplit(request.path).query).get(QUERY_KEY)
    return values[-1] if values and values[-1] else None


def token_matches(request: Any, token: str) -> bool:
    """True when the request presents exactly ``token`` by any of the carriers above."""
    got = presented_token(request)
    return got is not None and hmac.compare_digest(got.encode(), token.encode())
