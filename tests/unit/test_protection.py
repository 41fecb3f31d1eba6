"""The exit order's protective LIMIT price (SPEC §10 "Exit orders")."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.common import TxnType
from models.protection import chase_price, protective_price

D = Decimal


def test_a_sell_is_priced_below_the_last_price_and_rounded_down_to_the_tick() -> None:
    assert protective_price(D("94.10"), TxnType.SELL, D("0.01")) == D("93.15")  # 93.159
    assert protective_price(D("100"), TxnType.SELL, D("0.01")) == D("99.00")


def test_a_buy_is_priced_above_and_rounded_up() -> None:
    assert protective_price(D("94.10"), TxnType.BUY, D("0.01")) == D("95.05")  # 95.041


def test_circuit_limits_clamp_the_price() -> None:
    assert protective_price(D("100"), TxnType.SELL, D("0.05"), lower_circuit=D("96")) == D("96")
    assert protective_price(D("100"), TxnType.BUY, D("0.05"), upper_circuit=D("103")) == D("103")


def test_a_chase_stops_at_the_circuit_limit() -> None:
    # the market at the lower circuit (96): 1 % below it would be rejected by the exchange
    assert chase_price(D("97.50"), D("96"), TxnType.SELL, D("0.01"),
                       lower_circuit=D("96")) == D("96")
    assert chase_price(D("96"), D("96"), TxnType.SELL, D("0.01"), lower_circuit=D("96")) is None
    assert chase_price(D("103"), D("104"), TxnType.BUY, D("0.01"),
                       upper_circuit=D("104")) == D("104")


def test_bad_inputs_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="positive"):
        protective_price(D(0), TxnType.SELL, D("0.01"))
    with pytest.raises(ValueError, match="protection"):
        protective_price(D(1), TxnType.SELL, D("1.5"))


def test_a_chase_only_moves_toward_the_market() -> None:
    assert chase_price(D("93.05"), D("92"), TxnType.SELL, D("0.01")) == D("91.05")
    assert chase_price(D("93.05"), D("96"), TxnType.SELL, D("0.01")) is None
    assert chase_price(D("95.05"), D("97"), TxnType.BUY, D("0.01")) == D("98.00")
    assert chase_price(D("95.05"), D("90"), TxnType.BUY, D("0.01")) is None


@given(st.decimals(min_value=D("0.05"), max_value=D("100000"), places=2),
       st.decimals(min_value=D(0), max_value=D("0.1"), places=3),
       st.sampled_from(list(TxnType)))
def test_the_price_is_on_the_tick_and_on_the_protective_side(last: Decimal, pct: Decimal,
                                                             txn: TxnType) -> None:
    price = protective_price(last, txn, pct)
    assert price % D("0.05") == 0
    if txn is TxnType.SELL:
        assert price <= max(last, D("0.05"))
    else:
        assert price >= last
