"""The PnL cache (SPEC §6): the latest valuation of every open position, for dashboards and
other processes. One flush of the PnL writer is one ``write``: one pipelined Redis round trip.

A cache outage degrades the cache only: ``write`` never raises and never blocks longer than one
socket timeout. While Redis is down the failed batch is kept (latest entry per position, pending
deletes), merged into the next write and sent again at most every ``retry_after_seconds``.

Redis layout: hash ``pnl:tracker:<position_id>`` with ``pnl``, ``pnl_pct``, ``ltp``, ``hwm_pnl``,
``peak_price`` (empty when unknown) and ``updated_at`` (ISO-8601 with offset), money as exact
decimal strings; TTL 6 h, refreshed by every write. An account other than the default keeps
its hashes under ``pnl:tracker:<account>:<position_id>`` (``key_prefix``), so accounts sharing
one Redis never overwrite each other's entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation

import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from models.accounts import DEFAULT_ACCOUNT, check_account
from store.ports import PnLCache
from store.records import PnLEntry
from store.urls import redact_text, redact_url

PREFIX = "pnl:tracker:"


class PendingWrites:
    """What awaits a write: the latest entry per position and the keys to delete. A delete
    cancels an entry of that position and a later entry cancels a delete, so its size is bounded
    by the number of positions ever valued since the last successful write."""

    def __init__(self) -> None:
        self.entries: dict[str, PnLEntry] = {}
        self.deletes: dict[str, None] = {}  # an ordered set: oldest first

    def merge(self, entries: Sequence[PnLEntry], deletes: Sequence[str]) -> None:
        for entry in entries:
            self.entries[entry.position_id] = entry
            self.deletes.pop(entry.position_id, None)
        for position_id in deletes:
            self.entries.pop(position_id, None)
            self.deletes[position_id] = None

    def trim_deletes(self, limit: int) -> int:
        """Forget the oldest deletes past ``limit`` (their keys still expire by TTL)."""
        dropped = 0
        while len(self.deletes) > limit:
            del self.deletes[next(iter(self.deletes))]
            dropped += 1
        return dropped

    def clear(self) -> None:
        self.entries, self.deletes = {}, {}

    def __len__(self) -> int:
        return len(self.entries) + len(self.deletes)


class InMemoryPnLCache:
    """The in-process cache used when no Redis URL is configured; ``roundtrips`` counts the
    non-empty writes (the round trips Redis would have made)."""

    def __init__(self) -> None:
        self._data: dict[str, PnLEntry] = {}
        self._roundtrips = 0

    def write(self, entries: Sequence[PnLEntry], deletes: Sequence[str] = ()) -> bool:
        if not entries and not deletes:
            return True
        batch = PendingWrites()
        batch.merge(entries, deletes)
        self._roundtrips += 1
        self._data.update(batch.entries)
        for position_id in batch.deletes:
            self._data.pop(position_id, None)
        return True

    def read(self, position_id: str) -> PnLEntry | None:
        return self._data.get(position_id)

    def read_all(self) -> dict[str, PnLEntry]:
        return dict(self._data)

    @property
    def roundtrips(self) -> int:
        return self._roundtrips

    @property
    def failures(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing to release; what was written stays readable."""


def encode_entry(entry: PnLEntry) -> dict[FieldT, EncodableT]:
    """The hash fields of an entry: exact decimal strings, ISO-8601 time with offset."""
    return {"pnl": str(entry.pnl), "pnl_pct": str(entry.pnl_pct), "ltp": str(entry.ltp),
            "hwm_pnl": str(entry.hwm_pnl),
            "peak_price": "" if entry.peak_price is None else str(entry.peak_price),
            "updated_at": entry.updated_at.isoformat()}


_PER_SCRIPT = 1_000
"""Entries per script call: one call per thousand keeps each one short on the server."""
_WRITE_SCRIPT = """
local ttl, refused, first = ARGV[1], 0, nil
for i, key in ipairs(KEYS) do
  local record, f, at = ARGV[i + 1], {}, 1
  for n = 1, 6 do
    local stop = string.find(record, '\\31', at, true) or (#record + 1)
    f[n] = string.sub(record, at, stop - 1)
    at = stop + 1
  end
  local reply = redis.pcall('HSET', key, 'pnl', f[1], 'pnl_pct', f[2], 'ltp', f[3],
                            'hwm_pnl', f[4], 'peak_price', f[5], 'updated_at', f[6])
  if type(reply) == 'table' and reply.err then
    refused = refused + 1
    first = first or (key .. ': ' .. reply.err)
  else
    redis.call('EXPIRE', key, ttl)
  end
end
if refused > 0 then
  return redis.error_reply(refused .. ' keys refused, first ' .. first)
end
return #KEYS
"""
"""HSET and EXPIRE of many keys in one command: the pipeline of two commands per key cost
~12 us of Python per position (packing and reading 2 replies each); this is one command and
one reply per thousand positions. Each position's six fields travel as one argument, joined
by the unit separator (``\\x1f``, which no field's text holds: decimals, an ISO time, or
nothing), and are split on the server: the client packs two arguments per position, not
seven (packing is ~1 us an argument in redis-py)."""
_SEP = "\x1f"


def _record(entry: PnLEntry, times: dict[datetime, str]) -> str:
    """``encode_entry``'s six values as one argument of ``_WRITE_SCRIPT``; ``times`` memoises
    the ISO text of the few distinct times of one write."""
    at = times.get(entry.updated_at)
    if at is None:
        at = times[entry.updated_at] = entry.updated_at.isoformat()
    peak = entry.peak_price
    return _SEP.join((str(entry.pnl), str(entry.pnl_pct), str(entry.ltp), str(entry.hwm_pnl),
                      "" if peak is None else str(peak), at))


def decode_entry(position_id: str, fields: Mapping[str, str]) -> PnLEntry | None:
    """The entry stored in a hash, or None (logged) when the hash is not one of ours."""
    try:
        peak = fields["peak_price"]
        updated_at = datetime.fromisoformat(fields["updated_at"])
        if updated_at.tzinfo is None:
            raise ValueError("updated_at has no UTC offset")
        return PnLEntry(position_id=position_id, pnl=Decimal(fields["pnl"]),
                        pnl_pct=Decimal(fields["pnl_pct"]), ltp=Decimal(fields["ltp"]),
                        hwm_pnl=Decimal(fields["hwm_pnl"]),
                        peak_price=Decimal(peak) if peak else None, updated_at=updated_at)
    except (KeyError, ValueError, InvalidOperation) as error:
        logger.warning("PnL cache: unreadable hash for {}: {!r}", position_id, error)
        return None


class RedisPnLCache:
    """The Redis cache. ``client`` is a seam for tests; the cache owns it and closes it."""

    max_pending_deletes = 100_000
    """Deletes kept through an outage; past it the oldest are forgotten (their keys expire)."""

    def __init__(self, url: str, *, ttl_seconds: int = 6 * 3600, key_prefix: str = PREFIX,
                 socket_timeout: float = 0.5, retry_after_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 client: redis.Redis | None = None) -> None:
        self._safe_url = redact_url(url)
        self._ttl, self._prefix = ttl_seconds, key_prefix
        self._retry_after, self._clock = retry_after_seconds, clock
        # No client-side retries: one write is one attempt; the back-off below is ours.
        self._client = client if client is not None else redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
            decode_responses=True, retry=Retry(NoBackoff(), 0))
        self._pending = PendingWrites()
        self._roundtrips = self._failures = 0
        self._down = False
        self._retry_at = 0.0

    @property
    def roundtrips(self) -> int:
        return self._roundtrips

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def pending(self) -> tuple[dict[str, PnLEntry], frozenset[str]]:
        """Copies of what awaits the next successful write: entries by position, deletes."""
        return dict(self._pending.entries), frozenset(self._pending.deletes)

    def write(self, entries: Sequence[PnLEntry], deletes: Sequence[str] = ()) -> bool:
        if not entries and not deletes:
            return not self._pending  # no round trip; True only when nothing is owed
        self._pending.merge(entries, deletes)
        dropped = self._pending.trim_deletes(self.max_pending_deletes)
        if dropped:
            logger.warning("PnL cache: {} pending deletes dropped (keys expire by TTL)", dropped)
        if self._down and self._clock() < self._retry_at:
            return False
        return self._flush()

    def _flush(self) -> bool:
        pipe = self._client.pipeline(transaction=False)
        entries = list(self._pending.entries.items())
        times: dict[datetime, str] = {}
        for start in range(0, len(entries), _PER_SCRIPT):
            chunk = entries[start:start + _PER_SCRIPT]
            keys = [self._prefix + position_id for position_id, _ in chunk]
            records = [_record(entry, times) for _, entry in chunk]
            pipe.eval(_WRITE_SCRIPT, len(keys), *keys, self._ttl, *records)
        for position_id in self._pending.deletes:
            pipe.delete(self._prefix + position_id)
        self._roundtrips += 1
        try:
            replies = pipe.execute(raise_on_error=False)
        # The contract is "never raises": whatever broke, only the cache is degraded.
        except Exception as error:
            self._failed(error)
            return False
        if self._down:
            logger.info("PnL cache recovered at {}; {} pending writes flushed",
                        self._safe_url, len(self._pending))
            self._down = False
        self._pending.clear()
        return self._accepted(replies)

    def _accepted(self, replies: Sequence[object]) -> bool:
        """Commands Redis refused (a key of another type) are dropped, not retried: sending them
        again would fail again and hold back every later write."""
        refused = [reply for reply in replies if isinstance(reply, redis.ResponseError)]
        if refused:
            self._failures += 1
            logger.warning("PnL cache: Redis refused {} commands, dropped; first: {}",
                           len(refused), _describe(refused[0]))
        return not refused

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        self._retry_at = self._clock() + self._retry_after
        if not self._down:
            self._down = True
            logger.warning("PnL cache unavailable at {}: {}; keeping {} pending writes, retrying "
                           "every {}s", self._safe_url, _describe(error), len(self._pending),
                           self._retry_after)

    def read(self, position_id: str) -> PnLEntry | None:
        self._roundtrips += 1
        try:
            fields = self._client.hgetall(self._prefix + position_id)
        except Exception as error:  # dashboards and tests never see an outage as an exception
            logger.warning("PnL cache read failed at {}: {}", self._safe_url, _describe(error))
            return None
        return decode_entry(position_id, _as_str(fields)) if fields else None

    def read_all(self) -> dict[str, PnLEntry]:
        try:
            keys = self._scan()
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            self._roundtrips += 1 if keys else 0
            hashes = pipe.execute(raise_on_error=False) if keys else []
        except Exception as error:  # as in read
            logger.warning("PnL cache read failed at {}: {}", self._safe_url, _describe(error))
            return {}
        # A key of another type under our prefix replies with an error; an expired one with {}.
        # Another account's keys share the default account's prefix: ``<prefix><account>:<id>``
        # (a position id has no ``:``), so a rest with a ``:`` is not this account's.
        found = (decode_entry(key.removeprefix(self._prefix), _as_str(fields))
                 for key, fields in zip(keys, hashes, strict=True)
                 if isinstance(fields, dict) and fields
                 and ":" not in key.removeprefix(self._prefix))
        return {entry.position_id: entry for entry in found if entry is not None}

    def _scan(self) -> list[str]:
        keys: list[str] = []
        cursor: int = 0
        while True:
            self._roundtrips += 1
            cursor, page = self._client.scan(cursor, match=f"{self._prefix}*", count=1000)
            keys.extend(_text(key) for key in page)
            if cursor == 0:
                return keys

    def close(self) -> None:
        if self._pending:
            logger.warning("PnL cache closed with {} pending writes (Redis at {} was down)",
                           len(self._pending), self._safe_url)
        try:
            self._client.close()
        except Exception as error:  # closing a broken connection must not fail a shutdown
            logger.debug("PnL cache close: {}", _describe(error))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _as_str(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in fields.items()}


def _describe(error: Exception) -> str:
    """An error as text with any URL password redacted (redis-py names hosts, not passwords,
    but a wrapped error may carry the URL)."""
    return f"{type(error).__name__}: {redact_text(str(error))}"


def key_prefix(account: str) -> str:
    """The Redis keys of an account's positions: ``pnl:tracker:<position_id>`` for the default
    account (SPEC §6, as before accounts), ``pnl:tracker:<account>:<position_id>`` for any
    other, since a position id is unique per account only."""
    return PREFIX if account == DEFAULT_ACCOUNT else f"{PREFIX}{check_account(account)}:"


def open_pnl_cache(redis_url: str | None, account: str = DEFAULT_ACCOUNT) -> PnLCache:
    """The Redis cache of ``account`` for a URL, the in-process cache for None. Nothing
    connects until the first write."""
    if redis_url is None:
        return InMemoryPnLCache()
    return RedisPnLCache(redis_url, key_prefix=key_prefix(account))
