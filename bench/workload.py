"""Generated workloads: open positions on instruments and price paths. Never special-cased in
product code: the system under test sees ordinary positions and prices."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

from models.common import IST, Instrument, Segment, Side, position_id_for
from models.orders import OrderProgress, OrderStatus
from models.position import OrderRole, Position, PositionStatus, TrackedOrder

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=IST)  # a Monday, in session


def instruments(count: int) -> list[Instrument]:
    """Mostly NSE_FNO, one in five NSE_EQ, a few BSE_FNO: several segments, as in real books."""
    out = []
    for n in range(count):
        segment = (Segment.NSE_EQ if n % 5 == 4 else Segment.BSE_FNO if n % 17 == 16
                   else Segment.NSE_FNO)
        out.append(Instrument(segment=segment, security_id=str(60000 + n)))
    return out


def positions(count: int, on: list[Instrument], *, seed: int = 1,
              price: Decimal = Decimal(100)) -> list[Position]:
    """ACTIVE positions entered at ``price``, long and short, spread over the instruments."""
    rng = random.Random(seed)
    made = []
    for n in range(count):
        instrument = on[n % len(on)]
        order_no = f"B{n}"
        qty = rng.choice((25, 50, 75, 100))
        progress = OrderProgress(order_no=order_no, status=OrderStatus.TRADED, traded_qty=qty,
                                 traded_value=price * qty, updated_at=T0)
        made.append(Position(
            position_id=position_id_for(order_no), entry_order_no=order_no,
            segment=instrument.segment, security_id=instrument.security_id,
            side=Side.LONG if n % 2 == 0 else Side.SHORT, product="I",
            status=PositionStatus.ACTIVE, created_at=T0 + timedelta(microseconds=n),
            opened_at=T0, orders=(TrackedOrder(role=OrderRole.ENTRY, progress=progress),),
            version=1))
    return made


QUIET_PERIOD = 7
"""Steps of ``quiet_prices``' wiggle: after one period every peak it reaches has been seen."""


def quiet_prices(on: list[Instrument], step: int, base: Decimal = Decimal(100)
                 ) -> dict[Instrument, Decimal]:
    """Prices that move every step but stay inside every rule's band (no exits): steady state
    once the first ``QUIET_PERIOD`` steps have set each position's peak (those steps move the
    marks of the long positions, a delivery each)."""
    wiggle = Decimal(step % QUIET_PERIOD - 3) / Decimal(100)  # -0.03 … +0.03
    return {instrument: base + wiggle for instrument in on}
