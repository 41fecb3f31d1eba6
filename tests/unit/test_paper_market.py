"""The paper market: a deterministic seeded walk on the tick grid, and the replay tape."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.paper.market import TICK, PaperMarket, TapeError, TapeMarket, Tick, to_tick
from models.common import IST, Instrument, Segment

T0 = datetime(2025, 1, 6, 10, 0, tzinfo=IST)
FNO = Instrument(segment=Segment.NSE_FNO, security_id="49081")
EQ = Instrument(segment=Segment.NSE_EQ, security_id="11536")
INSTRUMENTS = [FNO, EQ, Instrument(segment=Segment.MCX_COMM, security_id="1")]


def ms(value: int) -> timedelta:
    return timedelta(milliseconds=value)


def walk(seed: int, advances: list[datetime]) -> list[Tick]:
    market = PaperMarket(INSTRUMENTS, seed=seed)
    return [tick for now in advances for tick in market.advance(now)]


def test_same_seed_and_times_give_the_same_ticks() -> None:
    times = [T0 + ms(250 * i) for i in range(20)]
    assert walk(42, times) == walk(42, times)


def test_another_seed_gives_another_walk() -> None:
    times = [T0 + ms(250 * i) for i in range(20)]
    assert [p for _, p, _ in walk(1, times)] != [p for _, p, _ in walk(2, times)]


def test_ticks_do_not_depend_on_how_often_advance_is_called() -> None:
    fine = walk(5, [T0 + ms(10 * i) for i in range(301)])
    coarse = walk(5, [T0, T0 + ms(1000), T0 + ms(3000)])
    assert fine == coarse


def test_first_advance_reports_every_start_price_at_now() -> None:
    market = PaperMarket(INSTRUMENTS, seed=3)
    ticks = market.advance(T0)
    assert [(i, at) for i, _, at in ticks] == [(i, T0) for i in INSTRUMENTS]
    assert all(price == market.price(i) for i, price, _ in ticks)


def test_drawn_start_prices_are_between_50_and_500_on_the_tick_grid() -> None:
    many = [Instrument(segment=Segment.NSE_FNO, security_id=str(40000 + i)) for i in range(300)]
    market = PaperMarket(many, seed=11)
    prices = [market.price(i) for i in many]
    assert all(Decimal(50) <= p <= Decimal(500) and p % TICK == 0 for p in prices)
    assert len(set(prices)) > 100


def test_given_start_prices_are_kept() -> None:
    market = PaperMarket([FNO, EQ], seed=1, start_prices={FNO: Decimal("368.15")})
    assert market.price(FNO) == Decimal("368.15")


def test_one_step_per_instrument_per_step_seconds_elapsed() -> None:
    market = PaperMarket(INSTRUMENTS, seed=1, step_seconds=0.1)
    market.advance(T0)
    ticks = market.advance(T0 + ms(350))
    assert [at for _, _, at in ticks] == [T0 + ms(100 * k) for k in (1, 2, 3) for _ in INSTRUMENTS]
    assert market.advance(T0 + ms(399)) == []
    assert [at for _, _, at in market.advance(T0 + ms(400))] == [T0 + ms(400)] * 3


def test_start_fixes_the_walk_origin() -> None:
    market = PaperMarket([FNO], seed=1, start=T0)
    ticks = market.advance(T0 + ms(200))
    assert [at for _, _, at in ticks] == [T0, T0 + ms(100), T0 + ms(200)]


def test_current_price_is_the_last_tick() -> None:
    market = PaperMarket([FNO], seed=9)
    ticks = market.advance(T0) + market.advance(T0 + timedelta(seconds=5))
    assert market.price(FNO) == ticks[-1][1]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), start=st.sampled_from(["0.05", "0.10", "1.00", "250.00"]))
def test_walk_prices_stay_on_the_tick_grid_and_never_below_one_tick(seed: int,
                                                                   start: str) -> None:
    market = PaperMarket([FNO], seed=seed, start_prices={FNO: Decimal(start)}, volatility=0.5)
    ticks = market.advance(T0) + market.advance(T0 + timedelta(seconds=10))
    assert all(p >= TICK and p % TICK == 0 for _, p, _ in ticks[1:])


def test_zero_volatility_keeps_the_price() -> None:
    market = PaperMarket([FNO], seed=1, start_prices={FNO: Decimal("100")}, volatility=0)
    ticks = market.advance(T0) + market.advance(T0 + timedelta(seconds=1))
    assert {p for _, p, _ in ticks} == {Decimal("100")}


def test_set_price_is_current_at_once_and_reported_by_the_next_advance() -> None:
    market = PaperMarket([FNO], seed=1, start_prices={FNO: Decimal("100")}, volatility=0)
    market.advance(T0)
    market.set_price(FNO, Decimal("101.5"), T0 + ms(50))
    assert market.price(FNO) == Decimal("101.5")
    assert market.advance(T0 + ms(50)) == [(FNO, Decimal("101.5"), T0 + ms(50))]


def test_set_price_adds_an_unknown_instrument() -> None:
    market = PaperMarket([], seed=1)
    assert market.get(FNO) is None
    market.set_price(FNO, Decimal("10"), T0)
    assert market.get(FNO) == Decimal("10")


def test_price_of_an_unknown_instrument_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="49081"):
        PaperMarket([], seed=1).price(FNO)


def test_naive_times_are_refused() -> None:
    market = PaperMarket([FNO], seed=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        market.advance(datetime(2025, 1, 6, 10, 0))  # noqa: DTZ001 - the naive time under test
    with pytest.raises(ValueError, match="positive"):
        market.set_price(FNO, Decimal(0), T0)


@pytest.mark.parametrize("price, expected", [("100.02", "100.00"), ("100.03", "100.05"),
                                             ("0.01", "0.05"), ("-3", "0.05")])
def test_to_tick_rounds_to_the_nearest_tick_and_at_least_one(price: str, expected: str) -> None:
    assert to_tick(Decimal(price)) == Decimal(expected)


# Tape ---------------------------------------------------------------------------------------------
def tape(tmp_path: Path, *rows: str, header: str = "ts,segment,security_id,ltp") -> Path:
    path = tmp_path / "tape.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_tape_rows_are_read_in_file_order_with_exact_prices(tmp_path: Path) -> None:
    path = tape(tmp_path, "2025-01-06T10:00:01+05:30,NSE_FNO,49081,368.15",
                "2025-01-06T10:00:00+05:30,NSE_EQ,11536,4012.5")
    market = TapeMarket.from_csv(path)
    assert market.rows == [(FNO, Decimal("368.15"), T0 + timedelta(seconds=1)),
                           (EQ, Decimal("4012.5"), T0)]


def test_tape_advance_yields_rows_up_to_now_and_updates_prices(tmp_path: Path) -> None:
    path = tape(tmp_path, "2025-01-06T10:00:00+05:30,NSE_FNO,49081,100",
                "2025-01-06T10:00:01+05:30,NSE_FNO,49081,101",
                "2025-01-06T04:30:02+00:00,NSE_FNO,49081,102")
    market = TapeMarket.from_csv(path)
    assert market.get(FNO) is None
    assert market.advance(T0 + ms(1000)) == [(FNO, Decimal(100), T0),
                                             (FNO, Decimal(101), T0 + ms(1000))]
    assert market.price(FNO) == Decimal(101)
    assert market.advance(T0 + ms(1999)) == []
    assert [p for _, p, _ in market.advance(T0 + ms(2000))] == [Decimal(102)]
    assert market.remaining == 0


def test_an_unsorted_tape_never_reports_a_row_before_its_time(tmp_path: Path) -> None:
    path = tape(tmp_path, "2025-01-06T10:00:05+05:30,NSE_FNO,49081,105",
                "2025-01-06T10:00:01+05:30,NSE_FNO,49081,101")
    market = TapeMarket.from_csv(path)
    assert [p for _, p, _ in market.advance(T0 + timedelta(seconds=2))] == [Decimal(101)]
    assert [p for _, p, _ in market.advance(T0 + timedelta(seconds=5))] == [Decimal(105)]


def test_tape_skips_blank_lines_and_counts_them_in_line_numbers(tmp_path: Path) -> None:
    path = tape(tmp_path, "2025-01-06T10:00:00+05:30,NSE_FNO,49081,100", "",
                "2025-01-06T10:00:00+05:30,NSE_FNO,49081,oops")
    with pytest.raises(TapeError, match=r"tape\.csv:4: ltp 'oops' is not a number"):
        TapeMarket.from_csv(path)


@pytest.mark.parametrize("row, message", [
    ("yesterday,NSE_FNO,49081,100", "ts 'yesterday' is not an ISO-8601 time"),
    ("2025-01-06T10:00:00,NSE_FNO,49081,100", "ts '2025-01-06T10:00:00' has no UTC offset"),
    ("2025-01-06T10:00:00+05:30,NSE_XYZ,49081,100", "unknown segment 'NSE_XYZ'"),
    ("2025-01-06T10:00:00+05:30,NSE_FNO,49081,abc", "ltp 'abc' is not a number"),
    ("2025-01-06T10:00:00+05:30,NSE_FNO,49081,NaN", "ltp 'NaN' is not a number"),
    ("2025-01-06T10:00:00+05:30,NSE_FNO,49081,", "ltp '' is not a number"),
    ("2025-01-06T10:00:00+05:30,NSE_FNO,49081,0", "ltp must be positive, got 0"),
    ("2025-01-06T10:00:00+05:30,NSE_FNO,49081,-1.5", "ltp must be positive, got -1.5"),
    ("2025-01-06T10:00:00+05:30,NSE_FNO,,100", "security_id is empty"),
    ("2025-01-06T10:00:00+05:30,NSE_FNO,49081", "expected 4 fields"),
])
def test_a_bad_tape_row_is_an_error_naming_its_line(tmp_path: Path, row: str,
                                                    message: str) -> None:
    path = tape(tmp_path, "2025-01-06T10:00:00+05:30,NSE_FNO,49081,100", row)
    with pytest.raises(TapeError) as error:
        TapeMarket.from_csv(path)
    assert f"tape.csv:3: {message}" in str(error.value)


def test_a_tape_without_the_header_is_an_error_naming_line_1(tmp_path: Path) -> None:
    path = tape(tmp_path, "2025-01-06T10:00:00+05:30,NSE_FNO,49081,100", header="time,seg,id,px")
    with pytest.raises(TapeError, match=r"tape\.csv:1: the header must be ts,segment"):
        TapeMarket.from_csv(path)


def test_a_missing_tape_file_is_a_tape_error(tmp_path: Path) -> None:
    with pytest.raises(TapeError, match="cannot read"):
        TapeMarket.from_csv(tmp_path / "absent.csv")
