"""Accounts to partitions (SPEC §13): the unit of ownership when several runners share the work.

An account belongs to one of ``PARTITIONS`` partitions for good: the CRC-32 of its id (UTF-8)
modulo 256. CRC-32 is fixed by its standard (``zlib.crc32``, the same in every process and
language, unlike Python's salted ``hash``), so every runner, connector and tool agrees on it.
A runner owns whole partitions (a lease each, ``store/leases.py``); every message of an account
travels on its partition's subject, so an account's exits never leave their owner.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

PARTITIONS = 256


def partition_of(account_id: str) -> int:
    """The partition of ``account_id``, in ``range(PARTITIONS)``."""
    if not account_id:
        raise ValueError("an account id is never empty")
    return zlib.crc32(account_id.encode("utf-8")) % PARTITIONS


def partition_name(partition: int) -> str:
    """``p007``: the partition as subjects and consumer names spell it (zero-padded, so names
    sort in partition order)."""
    if not 0 <= partition < PARTITIONS:
        raise ValueError(f"partition {partition} is outside 0..{PARTITIONS - 1}")
    return f"p{partition:03d}"


def lease_allows_send(deadline: float, now: float, margin: float) -> bool:
    """Whether an order may still be sent under a lease that ends at ``deadline`` (both on the
    runner's monotonic clock): only with more than ``margin`` to spare, so that the request has
    left before the lease can pass to another runner (SPEC §13; the pause between this check
    and the send is the gap ``margin`` bounds, docs/ARCHITECTURE.md "Scale-out")."""
    return now + margin < deadline


@dataclass(frozen=True, slots=True)
class Share:
    """What a runner does about its share of the partitions at one look: claim these free
    ones, and release that held one (``None``: none)."""

    claim: tuple[int, ...] = ()
    release: int | None = None


def fair_share(partitions: int, runners: int) -> int:
    """How many of ``partitions`` one of ``runners`` live runners holds at most:
    ``ceil(partitions / runners)``, so that together they hold every one."""
    return math.ceil(partitions / max(1, runners))


def plan_share(wanted: Collection[int], held: Collection[int], free: Mapping[int, float],
               runners: int | None, *, grace: float) -> Share:
    """A runner's next move (SPEC §13: accounts partitioned over runners). ``wanted``: the
    partitions it may serve; ``held``: those it holds; ``free``: partitions a claim would take
    now, each with the seconds it has been free; ``runners``: live runners, itself included
    (``None``: no sharing, every free partition is claimed and none released).

    It claims free partitions, lowest first, up to its fair share (``fair_share``), and any
    free for ``grace`` seconds or more whatever its share (no partition is left unserved
    because the count of live runners is stale). Over its share, it releases one partition,
    its highest, and only while none of ``wanted`` is free: one at a time, each released one
    taken by a runner under its share before the next goes."""
    mine = set(held)
    open_ = sorted(p for p in free if p in wanted and p not in mine)
    if runners is None:
        return Share(claim=tuple(open_))
    quota = fair_share(len(set(wanted)), runners)
    room = max(0, quota - len(mine))
    claim = (*open_[:room], *(p for p in open_[room:] if free[p] >= grace))
    if len(mine) > quota and not any(p in wanted for p in free):
        return Share(claim=claim, release=max(mine))
    return Share(claim=claim)
