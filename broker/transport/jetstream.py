"""The transport on NATS (nats-py): order updates on a JetStream stream, prices on plain subjects.

- One stream (``ORDERS``, or ``<NAMESPACE>_ORDERS``) holds ``orders.>``; a publish carries the
  ``Nats-Msg-Id`` header, so the server drops a repeat within ``duplicate_window`` (the
  connector re-sending after a lost answer publishes once).
- One durable pull consumer per partition (``<consumer>-pNNN``), explicit ack: an update pulled
  and not acked within ``ack_wait`` is delivered again, to whoever pulls the partition next (its
  new owner, after a crash). ``ack`` waits for the server's confirmation, so an acked update is
  never delivered again.
- Prices are core NATS: at most once, to whoever subscribes now.

nats-py is asyncio; the rest of the tracker runs on threads. The client runs on an event loop
of its own thread, and every method here is a blocking call that waits for its coroutine there
(bounded by ``timeout``). Price handlers run on that thread: they must only hand the price on.

A read loop that dies must never go unnoticed: the client would still say it is connected while
nothing it is sent is read, every call timing out, and a runner would hold its partitions with
neither order updates nor prices. So:

- No ``nc.flush``: one that timed out (or whose wait was given up) leaves its PING's future,
  cancelled, in nats-py's queue of PONG waiters, and the late PONG then ends the read loop
  (nats-py 2.16: an ``InvalidStateError`` in ``_process_pong``, which ``_read_loop`` logs and
  stops on). ``_round_trip`` asks the server instead: a request to an inbox nobody listens on,
  answered "no responders" once the server has read everything sent before it.
- A watch on the loop sends such a round trip every ``probe_every`` seconds; ``PROBE_MISSES``
  in a row unanswered while the client says it is connected, and it forces a reconnect (which
  starts a new read loop and subscribes again), logged as an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from broker.transport.ports import (
    Delivery,
    PriceHandler,
    Subscription,
    TransportError,
    order_subject,
    orders_wildcard,
    price_subject,
)
from models.partitions import partition_name, partition_of

T = TypeVar("T")
PROBE_MISSES = 2
"""Unanswered round trips in a row before the watch forces a reconnect (one alone may be a
pause of this process: the answer read after the wait's timer fired)."""
MSG_ID = "Nats-Msg-Id"
ACCOUNT = "Tracker-Account"
"""The header naming the update's account (several accounts share a partition's subject)."""


async def _on_error(error: Exception) -> None:
    # one line, no traceback: the client keeps reconnecting (and logged one per attempt)
    logger.warning("NATS: {}: {}", type(error).__name__, error)


async def _on_reconnected() -> None:
    logger.info("NATS: reconnected")


async def _round_trip(nc: Client, timeout: float) -> None:
    """Returns once the server has read everything this client sent before: a request to a
    fresh inbox, which nobody listens on, answered by the server with "no responders" (a
    ``nats.errors.TimeoutError`` after ``timeout`` seconds). In place of ``nc.flush``, whose
    time-out can end nats-py's read loop (the module's text)."""
    try:
        await nc.request(nc.new_inbox(), b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        return
    raise TransportError("NATS: a round trip to a fresh inbox was answered by a subscriber")


class _Loop:
    """An event loop on a daemon thread of its own; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError as error:
            if future.done():  # the call's own time-out (nats-py's), not this wait's
                raise TransportError(f"NATS call timed out: {error or 'no answer'}") from error
            future.cancel()
            raise TransportError(f"NATS call timed out after {timeout:g} s") from error
        except (nats.errors.Error, OSError) as error:
            raise TransportError(f"NATS: {error}") from error

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class _Delivery:
    loop: _Loop
    msg: Msg
    partition: int
    timeout: float

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def msg_id(self) -> str:
        return (self.msg.headers or {}).get(MSG_ID, "")

    @property
    def account(self) -> str:
        return (self.msg.headers or {}).get(ACCOUNT, "")

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def redelivered(self) -> bool:
        return self.msg.metadata.num_delivered > 1

    def ack(self) -> None:
        self.loop.run(self.msg.ack_sync(timeout=self.timeout), self.timeout + 1)

    def nak(self) -> None:
        self.loop.run(self.msg.nak(), self.timeout)


@dataclass
class _PriceSubscription:
    loop: _Loop
    sub: NatsSubscription
    nc: Client
    timeout: float

    def unsubscribe(self) -> None:
        async def unsubscribe() -> None:
            await self.sub.unsubscribe()
            await _round_trip(self.nc, self.timeout)

        self.loop.run(unsubscribe(), self.timeout)


class JetStreamTransport:
    """``JetStreamTransport("nats://127.0.0.1:4222")``: connects at once (a ``TransportError``
    when it cannot) and makes the order stream if it is missing. ``probe_every``: seconds
    between the watch's round trips (each given ``min(timeout, 1)`` seconds)."""

    def __init__(self, url: str, *, namespace: str = "", consumer: str = "runner",
                 ack_wait: float = 30.0, duplicate_window: float = 120.0,
                 timeout: float = 5.0, probe_every: float = 1.0) -> None:
        if probe_every <= 0:
            raise ValueError(f"probe_every must be positive, not {probe_every}")
        self._namespace, self._consumer = namespace, consumer
        self._stream = f"{namespace.upper()}_ORDERS" if namespace else "ORDERS"
        self._ack_wait, self._timeout = ack_wait, timeout
        self._probe_every, self._probe_timeout = probe_every, min(timeout, 1.0)
        self.reconnects_forced = 0
        """How many times the watch found the client deaf and reconnected it."""
        self._loop = _Loop()
        self._pulls: dict[int, Any] = {}
        self._closing = False
        self._watch: concurrent.futures.Future[None] | None = None
        try:
            self._nc: Client = self._loop.run(
                nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=-1,
                             allow_reconnect=True, error_cb=_on_error,
                             disconnected_cb=self._on_disconnected,
                             reconnected_cb=_on_reconnected), timeout + 1)
        except BaseException:
            self._loop.stop()
            raise
        self._js = self._nc.jetstream(timeout=timeout)
        self._watch = asyncio.run_coroutine_threadsafe(self._watch_reads(), self._loop.loop)
        try:
            self._run(self._ensure_stream(duplicate_window))
        except BaseException:
            self.close()  # no client, watch or loop left behind by a transport never made
            raise

    async def _watch_reads(self) -> None:
        misses = 0
        while not self._closing:
            await asyncio.sleep(self._probe_every)
            if not self._nc.is_connected:
                misses = 0  # the client knows, and is reconnecting
                continue
            try:
                await _round_trip(self._nc, self._probe_timeout)
                misses = 0
            except nats.errors.TimeoutError:
                misses += 1
            except Exception as error:  # the watch must outlive any failure
                # not a deaf client (closing, reconnecting, refused): looked at next time
                logger.debug("NATS: round trip not made: {}: {}", type(error).__name__, error)
                misses = 0
            if misses >= PROBE_MISSES and self._nc.is_connected and not self._closing:
                logger.error("NATS: {} round trips in a row unanswered while connected: the "
                             "client reads nothing; reconnecting", misses)
                self.reconnects_forced += 1
                misses = 0
                try:
                    await self._nc.force_reconnect()
                except Exception as error:  # the watch goes on: tried again after the next misses
                    logger.error("NATS: reconnect not started: {}: {}",
                                 type(error).__name__, error)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            logger.warning("NATS: disconnected, reconnecting")

    @property
    def stream(self) -> str:
        return self._stream

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro, self._timeout + 1)

    async def _ensure_stream(self, duplicate_window: float) -> None:
        try:
            await self._js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(StreamConfig(
                name=self._stream, subjects=[orders_wildcard(self._namespace)],
                duplicate_window=duplicate_window))

    def publish_order_update(self, account_id: str, msg_id: str, data: bytes) -> bool:
        subject = order_subject(partition_of(account_id), self._namespace)
        ack = self._run(self._js.publish(subject, data, stream=self._stream,
                                         headers={MSG_ID: msg_id,
                                                  ACCOUNT: account_id}))
        return not ack.duplicate

    def waiting_order_updates(self, partition: int) -> int:
        """The partition's durable consumer's own count (one request to the server):
        messages not yet delivered and those delivered but not acknowledged."""
        pull = self._pull(partition)

        async def count() -> int:
            info = await pull.consumer_info()
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

        return self._run(count())

    def _pull(self, partition: int) -> Any:
        """The partition's pull subscription: its durable consumer is made (or found) once,
        in a call of its own."""
        async def subscribe() -> Any:
            return await self._js.pull_subscribe(
                order_subject(partition, self._namespace),
                durable=f"{self._consumer}-{partition_name(partition)}",
                stream=self._stream,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                      ack_wait=self._ack_wait, max_deliver=-1))

        pull = self._pulls.get(partition)
        if pull is None:
            pull = self._pulls[partition] = self._run(subscribe())
        return pull

    def pull_order_updates(self, partition: int, *, batch: int = 100,
                           timeout: float = 1.0) -> list[Delivery]:
        pull = self._pull(partition)

        async def fetch() -> list[Msg]:
            try:
                msgs: list[Msg] = await pull.fetch(batch, timeout=timeout)
            except (nats.errors.TimeoutError, TimeoutError):
                # nats-py ends a fetch whose time ran out with either (its own, or asyncio's
                # when the wait left for its second request is gone): nothing came.
                return []
            return msgs

        msgs = self._loop.run(fetch(), timeout + self._timeout + 1)
        return [_Delivery(self._loop, msg, partition, self._timeout) for msg in msgs]

    def publish_price(self, segment: str, security_id: str, data: bytes) -> None:
        self._run(self._nc.publish(price_subject(segment, security_id, self._namespace), data))

    def subscribe_prices(self, segment: str, security_id: str,
                         handler: PriceHandler) -> Subscription:
        async def subscribe() -> NatsSubscription:
            async def on_price(msg: Msg) -> None:
                handler(msg.data)

            sub = await self._nc.subscribe(
                price_subject(segment, security_id, self._namespace), cb=on_price)
            # the server has the subscription before this returns
            await _round_trip(self._nc, self._timeout)
            return sub

        return _PriceSubscription(self._loop, self._run(subscribe()), self._nc, self._timeout)

    def flush(self) -> None:
        """Wait until the server has every message published so far (prices are sent in the
        background otherwise)."""
        self._run(_round_trip(self._nc, self._timeout))

    def delete_stream(self) -> None:
        """Remove the order stream and its consumers (a namespace's tear-down)."""
        self._run(self._js.delete_stream(self._stream))

    def close(self) -> None:
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
        try:
            self._run(self._nc.close())
        except TransportError:
            pass  # closing anyway: the loop goes with it
        finally:
            self._loop.stop()
