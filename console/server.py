"""The console's HTTP server: uvicorn on its own thread, started and stopped by ``run.py``.

``parse_bind`` reads ``--http HOST:PORT`` (``off``: no server; port 0: any free port, as the
tests use). Binds to loopback unless told otherwise.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from loguru import logger

DEFAULT_BIND = "127.0.0.1:8600"


class BindError(ValueError):
    """A ``--http`` value that is not ``off`` or ``HOST:PORT``."""


@dataclass(frozen=True)
class Bind:
    host: str
    port: int


def parse_bind(text: str) -> Bind | None:
    """``HOST:PORT``, ``:PORT`` (loopback), or ``off`` (None)."""
    value = text.strip()
    if value.lower() == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BindError(f"--http: expected HOST:PORT or off, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return Bind(host=host, port=int(port))


class ConsoleServer:
    def __init__(self, app: FastAPI, bind: Bind) -> None:
        self.app = app
        config = uvicorn.Config(app, host=bind.host, port=bind.port, log_level="warning",
                                access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.bind = bind
        self._thread = threading.Thread(target=self.server.run, name="console-http",
                                        daemon=True)

    def start(self, timeout: float = 10.0) -> ConsoleServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the console could not listen on {self.bind.host}:"
                              f"{self.bind.port}")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        for server in self.server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.bind.port

    @property
    def url(self) -> str:
        host = self.bind.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def stop(self) -> None:
        self.app.state.stopping.set()  # ends the push streams, so shutdown need not wait
        self.server.should_exit = True
        self._thread.join(10)
        if self._thread.is_alive():
            logger.warning("the console server did not stop in time")
