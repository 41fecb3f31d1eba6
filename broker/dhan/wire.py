"""The HTTP seam of the DhanHQ REST client: one request out, its status and body back.

``DhanRest`` speaks to DhanHQ through a ``Wire``; ``PooledWire`` is the real one, on urllib3's
connection pool. A failure without an answer raises ``WireError``, which says whether the
request may have left (``sent``): a connection that was never made sent nothing, so the call
can be made again; any later failure (a reset, a timeout while waiting for the answer) leaves
the outcome unknown, and an exit order is then looked up, never sent again blindly.

Why urllib3 here (and not httpx, which the client used first): an exit order is one request
on the price-to-order path, and a wave of them leaves side by side from the gateway actors'
threads, which share one interpreter. Per request urllib3 costs about half of httpx's CPU, and
a bare ``http.client`` about a third (measured once against the fake from a side script, 10
placements at once from 10 threads: 1.27, 0.66 and 0.38 ms of CPU per request; the effect on
the path is ``bench/live_exits.py``'s row in BENCHMARKS.md). urllib3 keeps what a
bare connection lacks: a pool shared by threads, a dropped keep-alive connection noticed before
it is used again (so an idle connection the broker closed costs a reconnect, not an unknown
outcome), connect and read timeouts, and no retries or redirects unless asked.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
)

POOL_SIZE = 16
"""Connections kept open per client: the gateway actors' placements go out side by side (10 in
a live session), with the session's reads and the quote calls beside them. More may be opened
at a busy moment; those beyond the size are closed after their answer."""


class _OneWrite:
    """A connection that writes a request with a body in one ``sendall``: urllib3 writes the
    headers, then the body. Between the two the sending thread gives the interpreter up (a
    blocking call), and on a busy one it waits up to the switch interval, or more, to take it
    back; until then the broker holds a request it cannot act on (seen on loopback beside
    other load: the body 3 ms after its headers at the 90th percentile, 25 ms at the 99th).
    One write also makes one packet, or one TLS record."""

    _held: bytes | None = None
    """The body to send with the headers (set during ``request``)."""
    _merged = False
    """The held body left with the headers: its own write is skipped."""

    def request(self, method: str, url: str, body: object = None,
                headers: Mapping[str, str] | None = None, **options: object) -> None:
        if isinstance(body, bytes) and body and not options.get("chunked"):
            self._held, self._merged = body, False
            try:
                super().request(method, url, body=body, headers=headers,  # type: ignore[misc]
                                **options)
            finally:
                self._held, self._merged = None, False
            return
        super().request(method, url, body=body, headers=headers, **options)  # type: ignore[misc]

    def send(self, data: object) -> None:
        held = self._held
        if held is not None and isinstance(data, bytes):
            if not self._merged:  # the headers' write: the body goes with it
                self._merged = True
                super().send(data + held)  # type: ignore[misc]
                return
            if data is held or data == held:  # the body's own write: already sent
                return
        super().send(data)  # type: ignore[misc]


class OneWriteHTTPConnection(_OneWrite, urllib3.connection.HTTPConnection):  # type: ignore[misc]
    pass


class OneWriteHTTPSConnection(_OneWrite, urllib3.connection.HTTPSConnection):  # type: ignore[misc]
    pass


class WireError(Exception):
    """No answer. ``sent``: the request may have reached the broker (False only when no
    connection was made)."""

    def __init__(self, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.sent = sent


class Wire(Protocol):
    def request(self, method: str, path: str, body: bytes | None,
                headers: Mapping[str, str]) -> tuple[int, bytes]:
        """``path`` below the base URL; the answer's status and body, or ``WireError``."""
        ...

    def close(self) -> None: ...


class PooledWire:
    """``PooledWire("https://api.dhan.co/v2", connect=2.0, read=3.0)``: keep-alive connections
    to the base URL's host, shared by every thread that calls."""

    def __init__(self, base_url: str, *, connect: float, read: float,
                 verify: ssl.SSLContext | bool = True, size: int = POOL_SIZE) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        self.prefix = parts.path
        options: dict[str, object] = {}
        if parts.scheme == "https":
            if isinstance(verify, ssl.SSLContext):
                options["ssl_context"] = verify
            elif verify:
                options["ssl_context"] = default_tls()
            else:
                options.update(cert_reqs="CERT_NONE", assert_hostname=False)
        self._pool = urllib3.connection_from_url(
            f"{parts.scheme}://{parts.netloc}", maxsize=size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=connect, read=read), **options)
        self._pool.ConnectionCls = (OneWriteHTTPSConnection if parts.scheme == "https"
                                    else OneWriteHTTPConnection)

    def request(self, method: str, path: str, body: bytes | None,
                headers: Mapping[str, str]) -> tuple[int, bytes]:
        try:
            response = self._pool.urlopen(method, self.prefix + path, body=body,
                                          headers=dict(headers),
                                          redirect=False, retries=False)
        except (NewConnectionError, ConnectTimeoutError) as error:  # no connection: not sent
            raise WireError(_describe(error), sent=False) from None
        except ValueError:  # a header it refuses to send (a stray newline): not sent; its
            # text quotes the value, which may be the token: not told
            raise WireError("ValueError: a header value that cannot be sent (a line break?)",
                            sent=False) from None
        except (HTTPError, OSError) as error:  # it may have left: the outcome is unknown
            raise WireError(_describe(error), sent=True) from None
        return response.status, response.data

    def close(self) -> None:
        self._pool.close()


def default_tls() -> ssl.SSLContext:
    """TLS with certifi's roots (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured), as httpx
    makes it: one context may serve many clients (a runner's, one per account)."""
    import httpx  # its context maker only: certifi's roots and the environment's overrides

    return httpx.create_ssl_context()


def _describe(error: Exception) -> str:
    """The failure's kind and urllib3's text (host, port and path; never a header)."""
    name = type(error).__name__
    if type(error) in (ConnectTimeoutError, ReadTimeoutError):
        name = name.removesuffix("Error")  # "ReadTimeout": the classifier's "timeout"
    return f"{name}: {error}"
