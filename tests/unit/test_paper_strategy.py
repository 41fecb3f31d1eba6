"""The simulated strategy and the paper broker facade: deterministic entry orders over time."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from broker.paper import PaperBroker, PaperConfig, default_instruments
from broker.paper.exchange import PaperExchange
from broker.paper.market import PaperMarket
from broker.paper.strategy import PaperStrategy
from models.common import IST, Instrument, Segment, TxnType
from models.orders import OrderStatus, OrderUpdate
from models.wire import parse_order_update

T0 = datetime(2025, 1, 6, 9, 16, tzinfo=IST)
INTERVAL = timedelta(milliseconds=200)
INSTRUMENTS = [Instrument(segment=Segment.NSE_FNO, security_id=str(40000 + i)) for i in range(5)]


def strategy(seed: int = 7, positions: int = 10, **options: object) -> PaperStrategy:
    market = PaperMarket(INSTRUMENTS, seed=1, start=T0)
    exchange = PaperExchange(market, latency=timedelta(0), start=T0)
    return PaperStrategy(exchange, INSTRUMENTS, seed=seed, positions=positions, start=T0,
                         **options)  # type: ignore[arg-type]


def run(subject: PaperStrategy, until: datetime, step: timedelta = INTERVAL) -> None:
    now = T0
    while now <= until:
        subject.advance(now)
        now += step


def placed(subject: PaperStrategy) -> list[tuple[str, Instrument, TxnType, int, datetime]]:
    return [(o.client_id, o.instrument, o.txn_type, o.quantity, o.placed_at)
            for o in subject.exchange.orders()]


def test_the_same_seed_places_the_same_orders() -> None:
    first, second = strategy(seed=3), strategy(seed=3)
    run(first, T0 + timedelta(seconds=3))
    run(second, T0 + timedelta(seconds=3))
    assert placed(first) == placed(second) and len(placed(first)) == 10


def test_another_seed_places_other_orders() -> None:
    first, second = strategy(seed=3), strategy(seed=4)
    run(first, T0 + timedelta(seconds=3))
    run(second, T0 + timedelta(seconds=3))
    assert placed(first) != placed(second)


def test_one_order_per_interval_from_start() -> None:
    subject = strategy(positions=3)
    assert subject.advance(T0) == ["S-1"]
    assert subject.advance(T0 + INTERVAL - timedelta(microseconds=1)) == []
    assert subject.advance(T0 + INTERVAL) == ["S-2"]
    assert not subject.done
    assert subject.advance(T0 + 2 * INTERVAL) == ["S-3"]
    assert subject.done and subject.advance(T0 + timedelta(hours=1)) == []


def test_a_late_advance_places_each_order_at_its_due_time() -> None:
    subject = strategy(positions=4)
    assert subject.advance(T0 + timedelta(seconds=10)) == ["S-1", "S-2", "S-3", "S-4"]
    assert [at for *_, at in placed(subject)] == [T0 + INTERVAL * n for n in range(4)]


def test_orders_do_not_depend_on_how_often_advance_is_called() -> None:
    fine, coarse = strategy(seed=5), strategy(seed=5)
    run(fine, T0 + timedelta(seconds=3), step=timedelta(milliseconds=10))
    coarse.advance(T0 + timedelta(seconds=3))
    assert placed(fine) == placed(coarse)


def test_client_ids_are_the_prefix_and_the_order_number() -> None:
    subject = strategy(positions=3, client_prefix="PAPER")
    subject.advance(T0 + timedelta(seconds=1))
    assert list(subject.order_nos) == ["PAPER-1", "PAPER-2", "PAPER-3"]
    assert list(subject.order_nos.values()) == ["PB1", "PB2", "PB3"]


@pytest.mark.parametrize("ratio, txn", [(1.0, TxnType.BUY), (0.0, TxnType.SELL)])
def test_long_ratio_sets_the_side_mix(ratio: float, txn: TxnType) -> None:
    subject = strategy(positions=20, long_ratio=ratio)
    subject.advance(T0 + timedelta(seconds=10))
    assert {o.txn_type for o in subject.exchange.orders()} == {txn}


def test_an_even_long_ratio_gives_both_sides() -> None:
    subject = strategy(positions=50, long_ratio=0.5)
    subject.advance(T0 + timedelta(seconds=20))
    buys = sum(o.txn_type is TxnType.BUY for o in subject.exchange.orders())
    assert 10 < buys < 40


def test_a_fixed_quantity_is_used_for_every_order() -> None:
    subject = strategy(positions=5, quantity=65)
    subject.advance(T0 + timedelta(seconds=2))
    assert {o.quantity for o in subject.exchange.orders()} == {65}


def test_a_quantity_rule_draws_from_the_strategy_rng() -> None:
    def lots(rng: random.Random, instrument: Instrument) -> int:
        return 75 * rng.randint(1, 3)

    subject = strategy(positions=30, quantity=lots)
    subject.advance(T0 + timedelta(seconds=10))
    assert {o.quantity for o in subject.exchange.orders()} <= {75, 150, 225}


def test_default_quantity_is_whole_lots_for_derivatives() -> None:
    subject = strategy(positions=30)
    subject.advance(T0 + timedelta(seconds=10))
    assert all(o.quantity in (25, 50, 75, 100) for o in subject.exchange.orders())


def test_instruments_are_drawn_from_the_given_ones() -> None:
    subject = strategy(positions=50)
    subject.advance(T0 + timedelta(seconds=20))
    assert {o.instrument for o in subject.exchange.orders()} == set(INSTRUMENTS)


def test_a_refused_order_is_recorded_and_not_retried() -> None:
    subject = strategy(positions=3)
    subject.exchange.reject_client_ids.add("S-2")
    subject.advance(T0 + timedelta(seconds=1))
    subject.advance(T0 + timedelta(seconds=2))
    assert list(subject.order_nos) == ["S-1", "S-3"]
    assert "S-2 refused" in subject.failures["S-2"]
    assert subject.done


@pytest.mark.parametrize("options, message", [
    ({"positions": -1}, "positions"), ({"long_ratio": 1.5}, "long_ratio"),
    ({"quantity": 0}, "quantity"),
])
def test_invalid_strategy_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        strategy(**options)  # type: ignore[arg-type]


# The facade ---------------------------------------------------------------------------------------
def frames_of(config: PaperConfig, seconds: int) -> tuple[list[str], list[object]]:
    broker = PaperBroker(config, start=T0)
    frames: list[str] = []
    broker.exchange.subscribe(frames.append)
    ticks: list[object] = []
    for k in range(seconds * 10 + 1):
        ticks.extend(broker.advance(T0 + timedelta(milliseconds=100 * k)))
    return frames, ticks


def test_the_same_config_gives_the_same_session() -> None:
    config = PaperConfig(positions=8, instruments=6, seed=11, partial_fills=2)
    assert frames_of(config, 3) == frames_of(config, 3)


def test_broker_advance_returns_ticks_and_orders_fill_through_the_exchange() -> None:
    config = PaperConfig(positions=5, instruments=4, seed=2, interval_ms=200, latency_ms=50)
    frames, ticks = frames_of(config, 2)
    assert len(ticks) == 4 * 21  # start prices, then one step per 100 ms for 2 s
    updates = [parse_order_update(frame) for frame in frames]
    traded = [u for u in updates if isinstance(u, OrderUpdate) and u.status is OrderStatus.TRADED]
    assert sorted(u.correlation_id or "" for u in traded) == [f"S-{n}" for n in range(1, 6)]


def test_an_order_fills_at_the_market_price_of_its_arrival() -> None:
    broker = PaperBroker(PaperConfig(positions=1, instruments=1, latency_ms=50), start=T0)
    broker.advance(T0)
    (order,) = broker.exchange.orders()
    broker.market.set_price(order.instrument, Decimal("321.45"), T0 + timedelta(milliseconds=20))
    broker.advance(T0 + timedelta(milliseconds=50))
    assert broker.exchange.order(order.order_no).avg_price == Decimal("321.45")


def test_default_instruments_are_fno_from_40000_and_a_few_equities() -> None:
    instruments = default_instruments(10)
    assert instruments[:8] == [Instrument(segment=Segment.NSE_FNO, security_id=str(40000 + i))
                               for i in range(8)]
    assert [i.segment for i in instruments[8:]] == [Segment.NSE_EQ] * 2


def test_paper_config_is_frozen_and_validated() -> None:
    config = PaperConfig()
    with pytest.raises(ValidationError):
        config.positions = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="partial_fills"):
        PaperConfig(partial_fills=0)
    with pytest.raises(ValidationError, match="unknown"):
        PaperConfig(unknown=1)  # type: ignore[call-arg]


def test_an_instrument_is_entered_on_one_side_only_so_entries_never_close_each_other() -> None:
    subject = strategy(positions=200, long_ratio=0.5)
    run(subject, T0 + timedelta(seconds=60))
    sides: dict[Instrument, set[TxnType]] = {}
    for order in subject.exchange.orders():
        sides.setdefault(order.instrument, set()).add(order.txn_type)
    assert all(len(txns) == 1 for txns in sides.values())
    assert {txn for txns in sides.values() for txn in txns} == {TxnType.BUY, TxnType.SELL}


def test_entries_fit_in_the_first_half_of_a_bounded_session_or_come_at_once() -> None:
    from broker.paper import entry_interval

    pace = timedelta(milliseconds=500)
    assert entry_interval(10, pace, timedelta(seconds=60)) == pace  # they fit at that pace
    squeezed = entry_interval(201, pace, timedelta(seconds=30))
    assert squeezed == timedelta(milliseconds=75) and squeezed * 200 <= timedelta(seconds=15)
    assert entry_interval(200, pace, timedelta(seconds=30), burst=True) == timedelta(0)
    assert entry_interval(200, pace, None) == pace  # until Ctrl-C: the configured pace
    with pytest.raises(ValueError, match="share"):
        entry_interval(2, pace, timedelta(seconds=1), share=0)
