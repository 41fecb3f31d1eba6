"""A wave's requests handed to a sender process in one write (issue 17's live row).

A wave of exits is decided together and its intents are committed together; then each exit's
order leaves from a gateway actor's thread. In the session's process those ten threads each
take the interpreter back, behind the feed, the index and the trackers, before their request
is written: ten waits of up to the 5 ms switch interval (BENCHMARKS, "Live row, why the
per-thread hand-offs did not help"; ``bench/handoff.py``: the tenth request's arrival p99 62 ms
from ten threads against 12 ms from one hand-off, with three busy threads). ``Launcher``
takes a batch of requests from the one thread that holds the interpreter already (the intent
writer, right after the commit) and writes it to a child process (``python -m
broker.dhan.launch``) in one write; the child, an interpreter with nothing else to do, makes
each request on its own ``PooledWire`` thread. Each request has a ``Ticket``: whoever waits
for the answer (the gateway actor) takes it from there.

- **What counts as sent is kept.** The child acts only on a whole batch. A batch that could
  not be written whole to the child was not sent (``WireError(sent=False)`` for each request,
  and the child is stopped so that it never acts on a part of it); once written, no answer
  (the child died, none within the timeouts and a second) leaves the outcome unknown
  (``sent=True``): an exit order is then looked up, never sent again blindly. The child's
  ``WireError`` comes back as it was raised (``PooledWire``'s: host, port and path).
- **A child that died is started again** at the next batch; one that will not start fails the
  batch as not sent.
- **Secrets:** the token travels in the requests' headers through the two processes' private
  pipes; neither process logs a header.
- **The child ends with the session:** it leaves when its standard input closes (the parent
  closed it, or died).

Frames, both ways: 4 bytes (the JSON's length), the JSON. The child's first frame is its
configuration; a batch is ``[{"id", "method", "path", "headers", "body"}, ...]`` (the body as
latin-1 text, or null); an answer is ``{"id", "status", "body"}`` or ``{"id", "error",
"sent"}``; the child says ``{"ready": true}`` once it can take batches.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loguru import logger

from broker.dhan.wire import POOL_SIZE, PooledWire, WireError

_LENGTH = struct.Struct("!I")
START_WAIT = 10.0
"""Seconds the child has to start (import, make its pool) before a batch fails unsent."""
MARGIN = 1.0
"""Seconds past the child's own timeouts (connect + read) that a ticket waits for its answer
before the outcome is unknown."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a batch: as ``Wire.request`` takes it."""

    method: str
    path: str
    body: bytes | None
    headers: Mapping[str, str]


class Ticket:
    """A request handed to the child: ``result()`` waits for its answer (status, body) or
    raises ``WireError``."""

    __slots__ = ("_answer", "_callbacks", "_done", "_error", "_lock", "wait")

    def __init__(self, wait: float) -> None:
        self._done = threading.Event()
        self._answer: tuple[int, bytes] | None = None
        self._error: WireError | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.wait = wait
        """Seconds ``result`` waits by default (the child's timeouts and ``MARGIN``)."""

    def result(self, timeout: float | None = None) -> tuple[int, bytes]:
        if not self._done.wait(self.wait if timeout is None else timeout):
            raise WireError("launch process: no answer within "
                            f"{self.wait if timeout is None else timeout:g} s", sent=True)
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer

    def done(self) -> bool:
        return self._done.is_set()

    def unsent(self) -> bool:
        """It never reached the child (the batch was not handed over): nothing left."""
        return self._done.is_set() and self._error is not None and not self._error.sent

    def when_done(self, callback: Callable[[], None]) -> None:
        """``callback()`` once the answer (or its failure) is in: at once if it is."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _finish(self, answer: tuple[int, bytes] | None, error: WireError | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._answer, self._error = answer, error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def _frame(value: object) -> bytes:
    encoded = json.dumps(value, separators=(",", ":")).encode("utf-8")
    return _LENGTH.pack(len(encoded)) + encoded


def _read_frame(stream: IO[bytes]) -> Any:
    """The next frame's value; None at the end of the stream, on a frame cut short or not
    JSON, or when the pipe fails: whoever reads stops there."""
    try:
        head = stream.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack(head)
        data = stream.read(size)
        if len(data) < size:
            return None
        return json.loads(data)
    except (OSError, ValueError):
        return None


class Launcher:
    """``Launcher("https://api.dhan.co/v2", connect=2.0, read=3.0)``: see the module's
    docstring. ``verify``: True (certifi's roots) or False (no check: loopback fakes only)."""

    def __init__(self, base_url: str, *, connect: float, read: float, verify: bool = True,
                 size: int = POOL_SIZE) -> None:
        self._config = {"base_url": base_url, "connect": connect, "read": read,
                        "verify": bool(verify), "size": size}
        self.wait = connect + read + MARGIN
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[int, Ticket]] = {}
        """Request id → (the child's generation it was handed to, its ticket)."""
        self._next_id = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._generation = 0
        self._ended = 0
        """The latest generation whose answers ended (its child's output closed): its child is
        dead even while ``poll()`` does not say so yet."""
        self._closed = False
        self.starts = 0
        self._start()

    def launch(self, requests: Sequence[Request]) -> list[Ticket]:
        """Hand ``requests`` to the child in one write; a ticket for each, in order."""
        tickets = [Ticket(self.wait) for _ in requests]
        if not requests:
            return tickets
        with self._lock:
            failure = self._ready()
            if failure is None:
                assert self._child is not None and self._child.stdin is not None
                first = self._next_id
                self._next_id += len(requests)
                for n, ticket in enumerate(tickets):
                    self._pending[first + n] = (self._generation, ticket)
                frame = _frame([{"id": first + n, "method": r.method, "path": r.path,
                                 "headers": dict(r.headers),
                                 "body": None if r.body is None else r.body.decode("latin-1")}
                                for n, r in enumerate(requests)])
                try:
                    _write_all(self._child.stdin.fileno(), frame)
                except OSError as error:  # not all of it reached the child: none acted on
                    for n in range(len(requests)):
                        self._pending.pop(first + n, None)
                    self._child.kill()  # a part of a batch must never be acted on later
                    failure = f"batch not handed over ({type(error).__name__})"
        if failure is not None:
            for ticket in tickets:
                ticket._finish(None, WireError(f"launch process: {failure}", sent=False))
        return tickets

    @property
    def pid(self) -> int | None:
        """The child's process id (None once closed)."""
        child = self._child
        return None if child is None else child.pid

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            _end(child)
        self._fail_pending(None, "the client is closed")

    # Inside -------------------------------------------------------------------------------------
    def _ready(self) -> str | None:
        """None when a child can take a batch (started again if it died); else why not.
        Under ``_lock``."""
        if self._closed:
            return "the client is closed"
        if self._child is not None and self._child.poll() is None \
                and self._ended != self._generation:
            return None
        try:
            self._start()
        except WireError as error:
            return str(error).removeprefix("launch process: ")
        return None

    def _start(self) -> None:
        """The child started and ready (under ``_lock`` but at construction)."""
        if self._child is not None:
            logger.warning("launch process exited (code {}): started again",
                           self._child.poll())
            _end(self._child)
            self._child = None
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.Popen([sys.executable, "-m", "broker.dhan.launch"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert child.stdin is not None and child.stdout is not None
        try:
            _write_all(child.stdin.fileno(), _frame(self._config))
        except OSError:
            _end(child)
            raise WireError("launch process: did not start", sent=False) from None
        ready: list[Any] = []
        output = child.stdout
        waiter = threading.Thread(target=lambda: ready.append(_read_frame(output)), daemon=True)
        waiter.start()
        waiter.join(START_WAIT)
        if not ready or not isinstance(ready[0], dict) or ready[0].get("ready") is not True:
            _end(child)
            raise WireError("launch process: did not start", sent=False)
        self._generation += 1
        self._child = child
        self.starts += 1
        threading.Thread(target=self._read_answers, args=(child, self._generation),
                         name=f"launch-answers-{self._generation}", daemon=True).start()

    def _read_answers(self, child: subprocess.Popen[bytes], generation: int) -> None:
        output = child.stdout
        assert output is not None
        while True:
            answer = _read_frame(output)
            if not isinstance(answer, dict):
                break  # the child ended (or wrote nonsense): what it had is unknown
            with self._lock:
                held = self._pending.pop(int(answer.get("id", -1)), None)
            if held is None:
                continue  # waited for in vain already
            ticket = held[1]
            if "error" in answer:
                ticket._finish(None, WireError(str(answer["error"]),
                                               sent=bool(answer.get("sent", True))))
            else:
                body = answer.get("body")
                ticket._finish((int(answer["status"]),
                                b"" if body is None else str(body).encode("latin-1")), None)
        self._fail_pending(generation, "the launch process ended before it answered")

    def _fail_pending(self, generation: int | None, why: str) -> None:
        """Tickets of ``generation`` (None: all) still waiting: their outcome is unknown. The
        generation is marked ended in the same step, so no batch is handed to it later."""
        with self._lock:
            if generation is not None:
                self._ended = max(self._ended, generation)
            keys = [key for key, (made_by, _) in self._pending.items()
                    if generation is None or made_by == generation]
            gone = [self._pending.pop(key) for key in keys]
        for _, ticket in gone:
            ticket._finish(None, WireError(f"launch process: {why}", sent=True))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
def _warm_up() -> None:
    """One request through a ``PooledWire`` like the real one to a loopback listener of its
    own, answered with a canned reply, before the child says it is ready: the code a first
    request runs (urllib3's and ``http.client``'s request and answer paths, the ``email``
    modules that parse headers, imported on first use) is loaded then, not by the first wave's
    ten requests at once, each waiting for the import lock. Nothing reaches the broker. A
    failure here only leaves that code cold."""
    import socket

    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
             b"Connection: close\r\n\r\n{}")
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(2.0)
            port = listener.getsockname()[1]

            def answer() -> None:
                with contextlib.suppress(OSError):
                    conn, _ = listener.accept()
                    with conn:
                        conn.settimeout(2.0)
                        conn.recv(65536)
                        conn.sendall(reply)

            server = threading.Thread(target=answer, daemon=True)
            server.start()
            wire = PooledWire(f"http://127.0.0.1:{port}", connect=2.0, read=2.0, size=1)
            try:
                wire.request("POST", "/warm-up", b"{}", {"Content-Type": "application/json"})
            finally:
                wire.close()
            server.join(2.0)
    except (OSError, WireError) as error:
        print(f"launch process: warm-up skipped ({type(error).__name__})", file=sys.stderr)


def main() -> None:
    """``python -m broker.dhan.launch``: its configuration is the first frame on standard
    input; batches follow; answers go to standard output. Leaves when standard input closes."""
    source = sys.stdin.buffer
    # Frames only on the pipe: anything else printed (a library's stray print) goes to stderr.
    sink = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    config = _read_frame(source)
    if not isinstance(config, dict):
        os._exit(2)  # no configuration: the parent finds no "ready" and sends itself
    wire = PooledWire(config["base_url"], connect=float(config["connect"]),
                      read=float(config["read"]), verify=bool(config["verify"]),
                      size=int(config["size"]))
    size = int(config["size"])
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="launch")
    # Every worker started now, not at the first wave's requests.
    started = threading.Barrier(size + 1)
    for _ in range(size):
        pool.submit(started.wait)
    started.wait()
    _warm_up()
    out = threading.Lock()

    def answer(value: dict[str, Any]) -> None:
        with out:
            sink.write(_frame(value))
            sink.flush()

    def make(item: dict[str, Any]) -> None:
        body = item.get("body")
        try:
            status, data = wire.request(str(item["method"]), str(item["path"]),
                                        None if body is None else str(body).encode("latin-1"),
                                        item["headers"])
            reply: dict[str, Any] = {"id": item["id"], "status": status,
                                     "body": data.decode("latin-1")}
        except WireError as error:
            reply = {"id": item["id"], "error": str(error), "sent": error.sent}
        except Exception as error:  # the wire's own bug: the request may have left
            reply = {"id": item["id"], "error": f"launch process: {type(error).__name__}",
                     "sent": True}
        answer(reply)

    answer({"ready": True})
    while True:
        batch = _read_frame(source)
        if not isinstance(batch, list):
            break  # the parent closed its end (or died), or sent nonsense
        for item in batch:
            pool.submit(make, item)
    os._exit(0)  # nobody waits for an answer any more: no orderly shutdown to wait for


if __name__ == "__main__":
    main()
