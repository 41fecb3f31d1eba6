"""A start-up's plain closed positions (``models.closed``): a plain closed position gives the
order-update actor and the PnL writer, with little work, exactly what they take of it whole;
every other one, and a plain one whose orders another position holds too, is taken whole."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.orders.actor import OrderUpdateActor
from actors.runtime.metrics import Metrics
from models.closed import (
    digest,
    entangled,
    is_plain,
    plain_net,
    plain_of,
    read_digest,
    split_closed,
)
from models.common import Segment, Side, position_id_for
from models.orders import OrderProgress, OrderStatus
from models.policy import RiskConfig
from models.position import OrderRole, Position, PositionStatus, TrackedOrder
from models.rules import closed_net
from tests.actors.test_tracker_flow import T0

POLICY = RiskConfig().policy


def _order(role: OrderRole, number: str, qty: int, price: str = "100",
           attempt: int | None = None) -> TrackedOrder:
    return TrackedOrder(role=role, attempt=attempt, progress=OrderProgress(
        order_no=number, status=OrderStatus.TRADED if qty else OrderStatus.CANCELLED,
        traded_qty=qty, traded_value=Decimal(price) * qty, updated_at=T0, quantity=qty or None))


def _position(entry: str, *orders: TrackedOrder, status: PositionStatus = PositionStatus.EXITED,
              side: Side = Side.LONG, pid: str | None = None) -> Position:
    closed = status is PositionStatus.EXITED
    return Position(position_id=pid or position_id_for(entry), entry_order_no=entry,
                    segment=Segment.NSE_FNO, security_id="60000", side=side, product="I",
                    status=status, orders=orders, created_at=T0, opened_at=T0,
                    exited_at=T0 + timedelta(minutes=5) if closed else None,
                    exit_attempt=1 if closed else 0)


E, X, OPP, R = OrderRole.ENTRY, OrderRole.EXIT, OrderRole.OPPOSITE, OrderRole.RETRACTED


def _day() -> tuple[list[Position], list[Position]]:
    """A day's positions, closed and open, with every kind the start-up reasons about."""
    closed = [
        # plain: one exit; two exit attempts; short; an exit attempt that traded nothing
        _position("EA", _order(E, "EA", 50), _order(X, "XA", 50, "99", 1)),
        _position("EB", _order(E, "EB", 50), _order(X, "XB1", 20, "98", 1),
                  _order(X, "XB2", 30, "97.5", 2)),
        _position("EC", _order(E, "EC", 75, "210.35"), _order(X, "XC", 75, "205.1", 1),
                  side=Side.SHORT),
        _position("ED", _order(E, "ED", 10), _order(X, "XD1", 0, "0", 1),
                  _order(X, "XD2", 10, "101", 2)),
        # over-filled: its exit XF took 130 of 100; the excess opened PXF (open, below)
        _position("EF", _order(E, "EF", 100), _order(X, "XF", 130, "170", 1)),
        # a plain one whose exit order is also a closed remainder's entry (given back)
        _position("EG", _order(E, "EG", 40), _order(X, "XG", 40, "95", 1)),
        _position("XG", _order(R, "XG", 0), _order(X, "XXG", 0, "0", 1)),
        # an untracked order S split: it reduced PEH and PEI, and opened PS (plain)
        _position("EH", _order(E, "EH", 10), _order(OPP, "S", 10, "90")),
        _position("EI", _order(E, "EI", 5), _order(OPP, "S", 5, "90")),
        _position("S", _order(E, "S", 5, "90"), _order(X, "XS", 5, "92", 1), side=Side.SHORT),
        # a broker's reduction took all of it: not plain
        _position("EJ", _order(E, "EJ", 20), _order(OPP, "BJ", 20, "101")),
    ]
    open_ = [_position("XF", _order(E, "XF", 30, "170"), status=PositionStatus.ACTIVE,
                       side=Side.SHORT),
             _position("EK", _order(E, "EK", 25), status=PositionStatus.ACTIVE)]
    return closed, open_


def test_only_plain_closed_positions_are_taken_apart() -> None:
    closed, open_ = _day()
    whole, plain, fetch = split_closed(closed, open_)
    assert sorted(p.position_id for p in plain) == ["PEA", "PEB", "PEC", "PED"] and not fetch
    assert sorted(p.position_id for p in whole) == [
        "PEF", "PEG", "PEH", "PEI", "PEJ", "PS", "PXG"]
    # why each of the others is whole
    by_id = {p.position_id: p for p in closed}
    assert not is_plain(by_id["PEF"])  # over-filled
    assert not is_plain(by_id["PEH"])  # an opposite order
    assert not is_plain(by_id["PXG"])  # a retracted order
    assert not is_plain(open_[1])  # open
    tangled = [by_id["PEG"], by_id["PS"]]
    assert all(is_plain(p) for p in tangled)
    assert entangled([plain_of(p) for p in tangled],
                     [*open_, by_id["PXG"], by_id["PEH"]]) == {"PEG", "PS"}
    # stored plain, as their digests: the same split, the tangled ones to be read whole
    stored = [p for p in closed if digest(p) is None]
    digests = [read_digest(p.position_id, text) for p in closed
               if (text := digest(p)) is not None]
    whole_too, plain_too, fetch = split_closed(stored, open_, digests)
    assert sorted(fetch) == ["PEG", "PS"]
    assert sorted(p.position_id for p in plain_too) == ["PEA", "PEB", "PEC", "PED"]
    assert sorted(p.position_id for p in whole_too) == ["PEF", "PEH", "PEI", "PEJ", "PXG"]
    assert plain_too == plain


def _state(actor: OrderUpdateActor) -> dict[str, Any]:
    return {"owners": dict(actor.owners), "booked": dict(actor.booked),
            "allocations": dict(actor.allocations), "allocated": dict(actor.allocated),
            "remainders": set(actor.remainders), "positions": dict(actor.positions)}


class _Store:
    """What ``load`` asks of the store: nothing parked, no remainder elsewhere."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: [] if name.endswith("updates") else None


def test_the_order_actor_learns_the_same_of_plain_positions_as_of_whole_ones() -> None:
    closed, open_ = _day()
    whole_day = OrderUpdateActor(_Store(), None, lambda: T0, Metrics())
    whole_day.load(sorted([*closed, *open_], key=lambda p: p.position_id))
    whole, plain, _ = split_closed(closed, open_)
    apart = OrderUpdateActor(_Store(), None, lambda: T0, Metrics())
    apart.load(sorted([*whole, *open_], key=lambda p: p.position_id), plain)
    assert plain and _state(apart) == _state(whole_day)
    # and what it learnt is what the rest of the day needs: the plain ones' orders owned
    assert apart.owners["XB2"] == ("PEB", OrderRole.EXIT, 2)
    assert apart.booked["XC"].sign == 1 and apart.booked["XC"].traded == 75


def test_a_tangled_plain_position_taken_apart_would_be_learnt_otherwise() -> None:
    """Why ``entangled`` matters: the split order's opened position taken as a plain one
    gives the order-update actor another state than whole (the test above can fail)."""
    closed, open_ = _day()
    whole_day = OrderUpdateActor(_Store(), None, lambda: T0, Metrics())
    whole_day.load(sorted([*closed, *open_], key=lambda p: p.position_id))
    by_id = {p.position_id: p for p in closed}
    forced = by_id["PS"]
    assert is_plain(forced)
    apart = OrderUpdateActor(_Store(), None, lambda: T0, Metrics())
    apart.load(sorted([p for p in [*closed, *open_] if p.position_id != "PS"],
                         key=lambda p: p.position_id), [plain_of(forced)])
    assert _state(apart) != _state(whole_day)


prices = st.decimals(min_value=Decimal("0.05"), max_value=Decimal("99999.95"), places=2)


@settings(max_examples=300, deadline=None)
@given(entry=st.lists(st.tuples(st.integers(1, 500), prices), min_size=1, max_size=1),
       exits=st.lists(st.tuples(st.integers(0, 500), prices), min_size=1, max_size=4),
       short=st.booleans(), fee=st.decimals(min_value=0, max_value=50, places=2))
def test_a_plain_net_is_what_the_whole_position_made(
        entry: list[tuple[int, Decimal]], exits: list[tuple[int, Decimal]], short: bool,
        fee: Decimal) -> None:
    qty = entry[0][0]
    # the exits close exactly what was entered: the last takes what the others left
    parts = [min(q, qty) for q, _ in exits[:-1]]
    while sum(parts) > qty:
        parts[parts.index(max(parts))] -= 1
    parts.append(qty - sum(parts))
    orders = [_order(E, "EP", qty, str(entry[0][1]))]
    orders += [_order(X, f"XP{n}", part, str(price), n + 1)
               for n, (part, (_, price)) in enumerate(zip(parts, exits, strict=True))]
    position = _position("EP", *orders, side=Side.SHORT if short else Side.LONG)
    policy = POLICY.model_copy(update={"fee_per_order": fee})
    assert is_plain(position)
    net = plain_net(read_digest(position.position_id, digest(position) or ""), policy)
    assert net == closed_net(position, policy)
    assert str(net) == str(closed_net(position, policy))  # the same Decimal, exponent too


def test_a_digest_is_stored_only_for_a_plain_closed_position_and_read_back_exactly() -> None:
    closed, open_ = _day()
    by_id = {p.position_id: p for p in closed}
    assert digest(open_[1]) is None and digest(by_id["PEF"]) is None  # open; over-filled
    text = digest(by_id["PEC"])
    assert text is not None and len(text) < len(by_id["PEC"].model_dump_json()) / 3
    back = read_digest("PEC", text)
    assert back == plain_of(by_id["PEC"])
    assert back.orders[0].traded_value == Decimal("210.35") * 75  # exact, as stored
    head = '[1, "EC", "LONG", "NSE_FNO", "1", null, '
    for bad in ("", "[]", "[2, 1, 2, 3, 4, 5, [], null, 0]",
                head + '[["XC", "EXIT", 1, 75.5, "1"]], null, 0]',
                '[1, "EC", "UP", "NSE_FNO", "1", null, [], null, 0]',
                head + '[["XC", "EXIT", 1, 75, "x"]], null, 0]', head + '[], "1", 1.5]',
                head + '[], "1.x", 1]', head + '[]]'):
        with pytest.raises(ValueError, match="PEC: not a closed position's digest"):
            read_digest("PEC", bad)
