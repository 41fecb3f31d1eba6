"""Accounts hash to partitions by CRC-32 mod 256: fixed values, any process agrees; account ids
are checked once, at the boundary."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.accounts import AccountError, check_account
from models.partitions import PARTITIONS, partition_name, partition_of

ROOT = Path(__file__).resolve().parents[2]


def test_when_account_hashed_then_partition_is_crc32_mod_256() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value of its standard
    assert partition_of("123456789") == 0xCBF43926 % 256 == 0x26
    assert partition_of("1000000001") == zlib.crc32(b"1000000001") % 256


@given(st.text(min_size=1))
def test_when_any_account_then_partition_in_range_and_stable(account: str) -> None:
    first = partition_of(account)
    assert 0 <= first < PARTITIONS
    assert partition_of(account) == first


def test_when_hashed_in_another_process_then_same_partition() -> None:
    # Python's own hash() is salted per process; the partition must not be.
    code = "from models.partitions import partition_of; print(partition_of('acct-42'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=ROOT, env={"PYTHONHASHSEED": "12345"})
    assert int(other.stdout) == partition_of("acct-42")


def test_when_many_accounts_then_every_partition_used_evenly() -> None:
    counts = Counter(partition_of(str(1_000_000_000 + n)) for n in range(25_600))
    assert len(counts) == PARTITIONS
    assert max(counts.values()) < 2 * 100  # 100 each on average


def test_when_empty_account_then_refused() -> None:
    with pytest.raises(ValueError):
        partition_of("")


def test_when_partition_named_then_zero_padded_and_bounded() -> None:
    assert partition_name(7) == "p007"
    assert partition_name(255) == "p255"
    for bad in (-1, 256):
        with pytest.raises(ValueError):
            partition_name(bad)


# Account ids -------------------------------------------------------------------------------------
@pytest.mark.parametrize("good", ["paper", "1100001234", "desk-b", "A_1", "x" * 64])
def test_a_well_formed_account_id_is_accepted(good: str) -> None:
    assert check_account(good) == good


@pytest.mark.parametrize("bad", ["", " 1100", "a.b", "a:b", "x" * 65, "-x", "_x", "a'b", "é"])
def test_a_malformed_account_id_is_refused_with_what_is_allowed(bad: str) -> None:
    with pytest.raises(AccountError, match="letters, digits"):
        check_account(bad)
