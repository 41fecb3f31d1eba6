"""The REST client's HTTP on a process of its own (``[dhan] http_process``, issue 17's live row).

A wave of exits leaves from the gateway actors' threads, and in the session's process those
threads wait for the one interpreter the trackers, the feed and the first fills share: 2-15 ms
between a gateway actor taking its order and the request reaching the broker, for under a
millisecond of HTTP work (BENCHMARKS, "Live row"). ``ProcessWire`` is a ``Wire`` whose
requests a child process (``python -m broker.dhan.sender``) makes on its own ``PooledWire``,
in an interpreter that does nothing else; the session's thread only writes the request to a
Unix socket and waits, without the interpreter, for the answer.

- **Each calling thread has its own connection** to the child (made at its first request), and
  the child a thread per connection: the gateway actors' requests go out side by side, with
  no dispatcher between them.
- **What counts as sent is kept.** The child acts only on a whole request. A request whose
  bytes could not all be written to the child was not sent (``WireError(sent=False)``); once
  written, no answer from the child (it died, it did not answer within the timeouts and a
  second) leaves the outcome unknown (``sent=True``): an exit order is then looked up, never
  sent again blindly. The child's own ``WireError`` comes back as it was raised.
- **A child that died is started again** at the next request; one that will not start fails
  the request as not sent.
- **Secrets:** the token travels in the request's headers over a socket in a directory only
  this user can enter; neither process logs a header, and the child's errors are
  ``PooledWire``'s (host, port, path).
- **The child ends with the session:** it leaves when its standard input closes (the parent
  closed it, or died).

Frames, both ways: 8 bytes (the JSON head's length, the body's length or ``NO_BODY``), the
head, the body. A request's head is ``{"method", "path", "headers"}``; an answer's is
``{"status"}`` or ``{"error", "sent"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from broker.dhan.wire import POOL_SIZE, PooledWire, WireError

NO_BODY = 0xFFFFFFFF
_LENGTHS = struct.Struct("!II")
START_WAIT = 10.0
"""Seconds the child has to start (import, bind its socket) before a request fails unsent."""
MARGIN = 1.0
"""Seconds past the child's own timeouts (connect + read) that a request waits for its answer
before the outcome is unknown."""


def _frame(head: dict[str, Any], body: bytes | None) -> bytes:
    encoded = json.dumps(head).encode("utf-8")
    return _LENGTHS.pack(len(encoded), NO_BODY if body is None else len(body)) + encoded + \
        (body or b"")


def _read_exact(sock: socket.socket, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes | None]:
    head_size, body_size = _LENGTHS.unpack(_read_exact(sock, _LENGTHS.size))
    head = json.loads(_read_exact(sock, head_size))
    if not isinstance(head, dict):
        raise ValueError("a frame's head is not an object")
    body = None if body_size == NO_BODY else _read_exact(sock, body_size)
    return head, body


class ProcessWire:
    """``ProcessWire("https://api.dhan.co/v2", connect=2.0, read=3.0)``: a ``Wire`` whose
    requests a child process makes (see the module's docstring). ``verify``: True (certifi's
    roots) or False (no check: loopback fakes only)."""

    def __init__(self, base_url: str, *, connect: float, read: float, verify: bool = True,
                 size: int = POOL_SIZE) -> None:
        self._config = {"base_url": base_url, "connect": connect, "read": read,
                        "verify": bool(verify), "size": size}
        self._wait = connect + read + MARGIN
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[socket.socket] = []
        self.folder = Path(tempfile.mkdtemp(prefix="tracker-http-"))  # 0700: only this user
        self._path = str(self.folder / "wire.sock")
        self._child: subprocess.Popen[bytes] | None = None
        self._generation = 0
        """Counts the children started: a thread's connection to an earlier one is made
        again."""
        self._closed = False
        self.starts = 0
        self._start()

    # The parent's side ----------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None,
                headers: Mapping[str, str]) -> tuple[int, bytes]:
        conn = self._connection()
        frame = _frame({"method": method, "path": path, "headers": dict(headers)}, body)
        try:
            conn.sendall(frame)
        except OSError as error:  # not all of it reached the child: it acts on whole ones only
            self._drop(conn)
            raise WireError(f"HTTP process: request not handed over ({type(error).__name__})",
                            sent=False) from None
        try:
            head, answer = _read_frame(conn)
        except (OSError, ValueError) as error:  # handed over: it may have left
            self._drop(conn)
            kind = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
            raise WireError(f"HTTP process: no answer ({kind})", sent=True) from None
        if "error" in head:
            raise WireError(str(head["error"]), sent=bool(head.get("sent", True)))
        return int(head["status"]), answer or b""

    @property
    def pid(self) -> int | None:
        """The child's process id (None once closed)."""
        child = self._child
        return None if child is None else child.pid

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
            child, self._child = self._child, None
        for conn in connections:
            conn.close()
        if child is not None:
            _end(child)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _connection(self) -> socket.socket:
        conn: socket.socket | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "generation", -1) == self._generation \
                and self._alive():
            return conn
        if conn is not None:
            self._drop(conn)
        with self._lock:
            if self._closed:
                raise WireError("HTTP process: the client is closed", sent=False)
            if not self._alive():
                self._start()
            generation = self._generation
        try:
            conn = self._connect()
        except OSError:  # a child dying (its socket closed, not reaped yet): started again
            with self._lock:
                if self._child is not None and self._generation == generation:
                    self._child.kill()
                    self._child.wait(2)
                    self._start()
                generation = self._generation
            try:
                conn = self._connect()
            except OSError as error:
                raise WireError(f"HTTP process: not reached ({type(error).__name__})",
                                sent=False) from None
        with self._lock:
            self._connections.append(conn)
        self._local.conn, self._local.generation = conn, generation
        return conn

    def _connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self._path)  # blocking: a full backlog waits rather than fails
            conn.settimeout(self._wait)
        except OSError:
            conn.close()
            raise
        return conn

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def _alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def _start(self) -> None:
        """The child started, its socket bound (under ``_lock`` but at construction)."""
        if self._child is not None:
            logger.warning("HTTP process exited (code {}): started again",
                           self._child.poll())
            _end(self._child)
            self._child = None
        with contextlib.suppress(FileNotFoundError):  # a dead child's socket
            os.unlink(self._path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.Popen(
            [sys.executable, "-m", "broker.dhan.sender", self._path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(self._config).encode("utf-8") + b"\n")
        child.stdin.flush()
        ready: list[bytes] = []
        output = child.stdout
        reader = threading.Thread(target=lambda: ready.append(output.readline()), daemon=True)
        reader.start()
        reader.join(START_WAIT)
        if not ready or ready[0].strip() != b"ready":
            _end(child)
            raise WireError("HTTP process: did not start", sent=False)
        self._child = child
        self._generation += 1
        self.starts += 1


def _end(child: subprocess.Popen[bytes]) -> None:
    if child.stdin is not None:
        with contextlib.suppress(OSError):  # a pipe already broken: the child is gone
            child.stdin.close()
    try:
        child.wait(2)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(2)


# The child's side -------------------------------------------------------------------------
class _Handler(socketserver.BaseRequestHandler):
    """One connection: requests in, answers out, until the parent closes it."""

    wire: PooledWire

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                head, body = _read_frame(sock)
            except (OSError, ValueError):
                return  # closed, or a frame cut short: nothing half-read is acted on
            try:
                status, answer = self.wire.request(str(head["method"]), str(head["path"]),
                                                   body, head["headers"])
                reply = _frame({"status": status}, answer)
            except WireError as error:
                reply = _frame({"error": str(error), "sent": error.sent}, None)
            except Exception as error:  # the wire's own bug: the request may have left
                reply = _frame({"error": f"HTTP process: {type(error).__name__}",
                                "sent": True}, None)
            try:
                sock.sendall(reply)
            except OSError:
                return


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 64  # a wave's gateway actors connect at once, the first time


def main(argv: list[str]) -> None:
    """``python -m broker.dhan.sender SOCKET``, its configuration on standard input (one JSON
    line); says ``ready`` once it listens, and leaves when standard input closes."""
    path = argv[0]
    config = json.loads(sys.stdin.readline())
    wire = PooledWire(config["base_url"], connect=float(config["connect"]),
                      read=float(config["read"]), verify=bool(config["verify"]),
                      size=int(config["size"]))
    handler = type("Handler", (_Handler,), {"wire": wire})
    old = os.umask(0o177)  # the socket: this user only
    try:
        server = _Server(path, handler)
    finally:
        os.umask(old)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes it, or dies
    os._exit(0)  # nobody waits for an answer any more: no orderly shutdown to wait for


if __name__ == "__main__":
    main(sys.argv[1:])
