"""A start-up's closed positions as digests (``models.closed``): a plain closed position gives
the order-update actor and the PnL writer exactly what it gave them whole; every other one,
and a plain one whose orders another position holds too, is taken whole."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.orders.actor import OrderUpdateActor
from actors.runtime.metrics import Metrics
from models.closed import digest_of, entangled, split_closed
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


E, X, O, R = OrderRole.ENTRY, OrderRole.EXIT, OrderRole.OPPOSITE, OrderRole.RETRACTED


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
        _position("EH", _order(E, "EH", 10), _order(O, "S", 10, "90")),
        _position("EI", _order(E, "EI", 5), _order(O, "S", 5, "90")),
        _position("S", _order(E, "S", 5, "90"), _order(X, "XS", 5, "92", 1), side=Side.SHORT),
        # a broker's reduction took all of it: not plain
        _position("EJ", _order(E, "EJ", 20), _order(O, "BJ", 20, "101")),
    ]
    open_ = [_position("XF", _order(E, "XF", 30, "170"), status=PositionStatus.ACTIVE,
                       side=Side.SHORT),
             _position("EK", _order(E, "EK", 25), status=PositionStatus.ACTIVE)]
    return closed, open_


def test_only_plain_closed_positions_are_digests() -> None:
    closed, open_ = _day()
    whole, digests = split_closed(closed, open_)
    assert sorted(d.position_id for d in digests) == ["PEA", "PEB", "PEC", "PED"]
    assert sorted(p.position_id for p in whole) == [
        "PEF", "PEG", "PEH", "PEI", "PEJ", "PS", "PXG"]
    # why each of the others is whole
    by_id = {p.position_id: p for p in closed}
    assert digest_of(by_id["PEF"]) is None  # over-filled
    assert digest_of(by_id["PEH"]) is None  # an opposite order
    assert digest_of(by_id["PXG"]) is None  # a retracted order
    assert digest_of(open_[1]) is None  # open
    plain = [digest_of(by_id[pid]) for pid in ("PEG", "PS")]
    assert all(d is not None for d in plain)
    assert entangled([d for d in plain if d is not None], [*open_, by_id["PXG"],
                                                          by_id["PEH"]]) == {"PEG", "PS"}


def _state(actor: OrderUpdateActor) -> dict[str, Any]:
    return {"owners": dict(actor.owners), "booked": dict(actor.booked),
            "allocations": dict(actor.allocations), "allocated": dict(actor.allocated),
            "remainders": set(actor.remainders), "positions": dict(actor.positions)}


class _Store:
    """What ``load`` asks of the store: nothing parked, no remainder elsewhere."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: [] if name.endswith("updates") else None


def test_the_order_actor_learns_the_same_from_digests_as_from_whole_positions() -> None:
    closed, open_ = _day()
    whole_day = OrderUpdateActor(_Store(), None, lambda: T0, Metrics())  # type: ignore[arg-type]
    whole_day.load(sorted([*closed, *open_], key=lambda p: p.position_id))
    whole, digests = split_closed(closed, open_)
    digested = OrderUpdateActor(_Store(), None, lambda: T0, Metrics())  # type: ignore[arg-type]
    digested.load(sorted([*whole, *open_], key=lambda p: p.position_id), digests)
    assert digests and _state(digested) == _state(whole_day)
    # and what it learnt is what the rest of the day needs: the plain ones' orders owned
    assert digested.owners["XB2"] == ("PEB", OrderRole.EXIT, 2)
    assert digested.booked["XC"].sign == 1 and digested.booked["XC"].traded == 75


def test_a_tangled_plain_position_given_as_a_digest_would_be_learnt_otherwise() -> None:
    """Why ``entangled`` matters: the split order's opened position taken as a digest gives
    the order-update actor another state than whole (a check that the test above can fail)."""
    closed, open_ = _day()
    whole_day = OrderUpdateActor(_Store(), None, lambda: T0, Metrics())  # type: ignore[arg-type]
    whole_day.load(sorted([*closed, *open_], key=lambda p: p.position_id))
    by_id = {p.position_id: p for p in closed}
    forced = digest_of(by_id["PS"])
    assert forced is not None
    digested = OrderUpdateActor(_Store(), None, lambda: T0, Metrics())  # type: ignore[arg-type]
    digested.load(sorted([p for p in [*closed, *open_] if p.position_id != "PS"],
                         key=lambda p: p.position_id), [forced])
    assert _state(digested) != _state(whole_day)


prices = st.decimals(min_value=Decimal("0.05"), max_value=Decimal("99999.95"), places=2)


@settings(max_examples=300, deadline=None)
@given(entry=st.lists(st.tuples(st.integers(1, 500), prices), min_size=1, max_size=1),
       exits=st.lists(st.tuples(st.integers(0, 500), prices), min_size=1, max_size=4),
       short=st.booleans(), fee=st.decimals(min_value=0, max_value=50, places=2))
def test_a_digest_makes_what_the_whole_position_made(
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
    digest = digest_of(position)
    assert digest is not None
    net = digest.net(policy)
    assert net == closed_net(position, policy)
    assert str(net) == str(closed_net(position, policy))  # the same Decimal, exponent too
