"""How a wave's exit orders leave a busy interpreter (issue 17's live row): ten placements at
once, from a process whose other threads keep the interpreter busy, to a loopback HTTP server
that records when each request arrives.

Two ways of sending them, alternated trial by trial in one run:

- ``threads``: what the live session does today. Ten threads (the gateway actors), each woken
  by an event (its mailbox), each sends its request through a warm urllib3 keep-alive pool
  and waits for the answer.
- ``process``: the whole batch handed to a sender process in one pipe write; the sender (an
  interpreter of its own, with nothing else to do) writes the ten requests on ten warm
  keep-alive connections, then reads the ten answers and sends back how many it read.

The load: ``--load`` threads of pure-Python work in bursts (JSON round trips, 0.5 ms asleep
between bursts), standing in for the session's feed, index, trackers and order updates, which
hold the interpreter during a wave. Measured: from the moment the batch is ready (the events
set, or the pipe written) to the first and to the tenth request's arrival at the server
(``time.monotonic_ns`` in both processes: CLOCK_MONOTONIC, one clock on Linux).

Why it matters: every blocking call releases the interpreter, and a thread taking it back
waits behind the busy threads (up to the 5 ms switch interval each time), so ten sending
threads queue behind the load; one hand-off to a process of its own pays that wait once.
``python -m bench.handoff [--trials N] [--loads 0,3] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing as mp
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import urllib3

ORDERS = 10
"""A wave's orders that find the order limiter's window free (DhanHQ's 10/s)."""
BODY = json.dumps({
    "dhanClientId": "1000000001", "correlationId": "X-0123456789abcdef01",
    "transactionType": "SELL", "exchangeSegment": "NSE_FNO", "productType": "INTRADAY",
    "orderType": "LIMIT", "validity": "DAY", "securityId": "60001", "quantity": 75,
    "price": 93.1}).encode()
HEADERS = {"Content-Type": "application/json"}
ANSWER = b'{"orderId":"1","orderStatus":"TRANSIT"}'


def _serve(port_to: Connection) -> None:
    """The server (a process of its own): answers every POST, records when each arrived;
    ``POST /arrivals`` answers the arrival times recorded since the last such call."""
    arrivals: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                at = time.monotonic_ns()
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"POST /arrivals "):
                    out = json.dumps(arrivals).encode()
                    arrivals.clear()
                else:
                    arrivals.append(at)
                    out = ANSWER
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_to.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _sender(batches: Connection, port: int) -> None:
    """The sender process: for each batch, ``n`` requests written, then their answers read."""
    connections = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(ORDERS)]
    for connection in connections:  # warm: connected and kept alive
        connection.request("POST", "/v2/orders", body=BODY, headers=HEADERS)
        connection.getresponse().read()
    while True:
        n = batches.recv()
        for connection in connections[:n]:
            connection.request("POST", "/v2/orders", body=BODY, headers=HEADERS)
        batches.send(sum(len(c.getresponse().read()) > 0 for c in connections[:n]))


class _Gateway(threading.Thread):
    """One gateway actor's thread: woken by its event, one placement through urllib3."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.wake, self.done = threading.Event(), threading.Event()
        self.pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, block=False,
                                               retries=False)
        self.pool.request("POST", "/v2/orders", body=BODY, headers=HEADERS)  # warm

    def run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            self.pool.request("POST", "/v2/orders", body=BODY, headers=HEADERS)
            self.done.set()


def _burn(stop: threading.Event) -> None:
    data = {"a": list(range(50)), "b": "x" * 100}
    while not stop.is_set():
        for _ in range(200):
            json.loads(json.dumps(data))
        time.sleep(0.0005)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def run(trials: int, loads: list[int]) -> dict[str, Any]:
    context = mp.get_context("spawn")
    port_from, port_to = context.Pipe()
    server = context.Process(target=_serve, args=(port_to,), daemon=True)
    server.start()
    port = int(port_from.recv())
    here, there = context.Pipe()
    sender = context.Process(target=_sender, args=(there, port), daemon=True)
    sender.start()
    gateways = [_Gateway(port) for _ in range(ORDERS)]
    for gateway in gateways:
        gateway.start()
    arrivals_pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1)

    def arrivals() -> list[int]:
        answer = arrivals_pool.request("POST", "/arrivals", body=b"{}", headers=HEADERS)
        return sorted(json.loads(answer.data))

    def by_threads() -> None:
        for gateway in gateways:
            gateway.wake.set()
        for gateway in gateways:
            gateway.done.wait()
            gateway.done.clear()

    def by_process() -> None:
        here.send(ORDERS)
        here.recv()

    ways: dict[str, Callable[[], None]] = {"threads": by_threads, "process": by_process}

    def trial(way: str) -> list[float]:
        began = time.monotonic_ns()
        ways[way]()
        return [(at - began) / 1e6 for at in arrivals()]

    rows = []
    try:
        for load in loads:
            stop = threading.Event()
            burners = [threading.Thread(target=_burn, args=(stop,), daemon=True)
                       for _ in range(load)]
            for burner in burners:
                burner.start()
            for way in ways:  # warm both with the load running
                trial(way)
            seen: dict[str, list[list[float]]] = {way: [] for way in ways}
            for n in range(trials):
                for way in (("threads", "process") if n % 2 else ("process", "threads")):
                    seen[way].append(trial(way))
                    time.sleep(random.uniform(0.01, 0.03))
            stop.set()
            for burner in burners:
                burner.join()
            for way, runs in seen.items():
                first, last = [r[0] for r in runs], [r[-1] for r in runs]
                rows.append({
                    "way": way, "load_threads": load, "trials": len(runs),
                    "arrivals_per_trial": sorted({len(r) for r in runs}),
                    "first_ms": {"p50": _quantile(first, .5), "p99": _quantile(first, .99)},
                    "tenth_ms": {"p50": _quantile(last, .5), "p99": _quantile(last, .99),
                                 "max": _quantile(last, 1.0)}})
    finally:
        sender.kill()
        server.kill()
    return {"benchmark": f"{ORDERS} placements at once from a busy interpreter: "
                         "threads vs one hand-off to a sender process",
            "host": socket.gethostname(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handoff", description=__doc__)
    parser.add_argument("--trials", type=int, default=150, help="trials of each way per load")
    parser.add_argument("--loads", default="0,3",
                        help="comma-separated numbers of busy threads (default 0,3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        loads = [int(part) for part in args.loads.split(",")]
    except ValueError:
        parser.error(f"--loads: comma-separated whole numbers, not {args.loads!r}")
    if args.trials < 1 or any(load < 0 for load in loads):
        parser.error("--trials must be at least 1 and --loads not negative")
    result = run(args.trials, loads)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
