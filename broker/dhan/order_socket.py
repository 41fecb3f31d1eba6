"""The DhanHQ order-update socket client (SPEC §4.1, §10) on ``websockets``' threading client.

Connects to ``wss://api-order-update.dhan.co``, sends the login frame
``{"LoginReq": {"MsgCode": 42, "ClientId": …, "Token": …}, "UserType": "SELF"}`` and delivers
every text frame, raw, to ``sink`` (the order-update actor parses and stores it). A good login
gets no answer; a bad one gets a short binary frame (code 50, reason 808) and a close: the link
reports TOKEN_INVALID and stops. Any other loss reconnects with back-off; ``on_connected`` runs
after every (re)connect, where the gateway reconciles.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence

from loguru import logger
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from broker.dhan.link import BACKOFF, Link, StateCallback, TokenRefused
from broker.dhan.token import TokenSource

DEFAULT_URL = "wss://api-order-update.dhan.co"
LOGIN_CODE = 42
BAD_LOGIN_CODE = 50
TOKEN_REASONS = frozenset({807, 808, 809})


def login_frame(client_id: str, token: str) -> str:
    return json.dumps({"LoginReq": {"MsgCode": LOGIN_CODE, "ClientId": client_id,
                                    "Token": token}, "UserType": "SELF"})


def bad_login_frame(reason: int = 808) -> bytes:
    """The short binary answer to a bad login: the feed's header with code 50, then the reason."""
    return struct.pack("<BHBIH", BAD_LOGIN_CODE, 10, 0, 0, reason)


def refusal_reason(frame: bytes) -> int | None:
    """The reason of a code-50 frame (None when the frame is not one)."""
    if not frame or frame[0] != BAD_LOGIN_CODE:
        return None
    if len(frame) >= 10:
        return int(struct.unpack_from("<H", frame, 8)[0])
    return 0


class OrderSocket(Link):
    def __init__(self, url: str, client_id: str, tokens: TokenSource, *,
                 sink: Callable[[str], None], on_state: StateCallback | None = None,
                 on_connected: Callable[[], None] | None = None,
                 backoff: Sequence[float] = BACKOFF, login_grace: float = 0.5,
                 ping_interval: float | None = 10.0, stable_after: float = 30.0) -> None:
        super().__init__("order-socket", lambda: url, lambda: [tokens.current()],
                         on_state=on_state, on_connected=on_connected, backoff=backoff,
                         ping_interval=ping_interval, stable_after=stable_after)
        self.client_id, self.tokens, self.sink = client_id, tokens, sink
        self.login_grace = login_grace
        self.frames = 0

    def on_open(self, conn: ClientConnection) -> None:
        """Log in, then wait ``login_grace`` for a refusal: a good login gets no answer."""
        conn.send(login_frame(self.client_id, self.tokens.current().reveal()))
        try:
            first = conn.recv(timeout=self.login_grace)
        except TimeoutError:
            return
        except ConnectionClosed:
            raise  # closed right after the login: treated as a loss (a refusal has a frame)
        self.on_message(first)

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            reason = refusal_reason(message)
            if reason is not None and (reason in TOKEN_REASONS or reason == 0):
                raise TokenRefused(f"order socket refused the login (code 50, reason {reason})")
            logger.warning("dhan order socket: binary frame ignored ({} bytes)", len(message))
            return
        self.frames += 1
        try:
            self.sink(message)
        except Exception:  # the sink is the actor system's: its failure must not drop the link
            logger.exception("dhan order socket: the frame sink failed")
