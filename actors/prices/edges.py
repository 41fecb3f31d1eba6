"""PriceEdges: each instrument's nearest exit thresholds, from the index to the batcher's
mailbox, so a tick that may be an exit does not wait for the next 50 ms flush.

The index publishes an instrument's edges whenever it (re)builds its ``Reach`` (the highest
stop below the price and the lowest target above it, over every position on the instrument;
``models.bands``) and withdraws them when the reach is dropped. The feed's thread checks each
tick against them (``crossed``): a tick beyond an edge is *urgent* and makes the batcher flush at
once (``_TickMailbox``). An edge fires once: it is taken when crossed, and the index publishes it
again when the positions' bands change (an exit does that), so a price that stays beyond it
does not flush at every tick. The edges only ever make a flush come sooner; the index still
decides, from the bands, who hears which price.

On for live and paper sessions (``Parts.urgent_prices``); off in replays and stepped
benchmarks, whose batches must stay the ones their clock makes.
"""

from __future__ import annotations

import threading
from decimal import Decimal

from models.common import Instrument


class PriceEdges:
    """Thread-safe: the index writes, the feed's thread reads and takes."""

    __slots__ = ("_edges", "_lock", "fired")

    def __init__(self) -> None:
        self._edges: dict[Instrument, tuple[Decimal | None, Decimal | None]] = {}
        self._lock = threading.Lock()
        self.fired = 0
        """Ticks found urgent so far."""

    def publish(self, instrument: Instrument, low: Decimal | None, high: Decimal | None) -> None:
        """Some position on ``instrument`` may exit below ``low`` or above ``high``."""
        with self._lock:
            if low is None and high is None:
                self._edges.pop(instrument, None)
            else:
                self._edges[instrument] = (low, high)

    def withdraw(self, instrument: Instrument) -> None:
        with self._lock:
            self._edges.pop(instrument, None)

    def crossed(self, instrument: Instrument, ltp: Decimal) -> bool:
        """Is ``ltp`` beyond an edge of ``instrument``? If so the edges are taken (they fire
        once, until published again)."""
        edges = self._edges.get(instrument)  # a dict read is atomic: no lock on the quiet path
        if edges is None:
            return False
        low, high = edges
        if not ((low is not None and ltp < low) or (high is not None and ltp > high)):
            return False
        with self._lock:
            if self._edges.get(instrument) is not edges:
                return False  # taken or replaced meanwhile
            del self._edges[instrument]
            self.fired += 1
        return True

    def get(self, instrument: Instrument) -> tuple[Decimal | None, Decimal | None] | None:
        return self._edges.get(instrument)
