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
