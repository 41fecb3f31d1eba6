"""Accounts to partitions (SPEC §13): the unit of ownership when several runners share the work.

An account belongs to one of ``PARTITIONS`` partitions for good: the CRC-32 of its id (UTF-8)
modulo 256. CRC-32 is fixed by its standard (``zlib.crc32``, the same in every process and
language, unlike Python's salted ``hash``), so every runner, connector and tool agrees on it.
A runner owns whole partitions (a lease each, ``store/leases.py``); every message of an account
travels on its partition's subject, so an account's exits never leave their owner.
"""

from __future__ import annotations

import zlib

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
