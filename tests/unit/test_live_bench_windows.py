"""The live benchmark's counting at the fake (``bench.live_exits``): requests in a moving
1 s window, and whether an exit found the order limiter's window free all along."""

from __future__ import annotations

from bench.live_exits import in_window, max_in_window, slot_free_throughout, slot_waits
from bench.live_stages import STAGES, stages


def test_a_window_is_half_open_and_the_fullest_is_found() -> None:
    times = [0.0, 0.5, 0.999, 1.0, 1.2, 3.0]
    assert in_window(times, 1.0, 1.0) == 3  # (0, 1]: 0.0 is out, 1.0 is in
    assert in_window(times, 0.999, 1.0) == 3  # (-0.001, 0.999]
    assert max_in_window(times, 1.0) == 4  # (0.2, 1.2]: 0.5, 0.999, 1.0, 1.2
    assert max_in_window(times, 60.0) == 6
    assert max_in_window([], 1.0) == 0


def test_ten_in_the_second_before_means_no_slot() -> None:
    burst = [0.01 * k for k in range(10)]  # ten requests in 90 ms
    # A price at 0.5 s: the window (-0.5, 0.5] holds all ten, so the exit had to wait.
    waited = 1.095
    assert not slot_free_throughout(sorted([*burst, waited]), 0.5, waited)
    # A price at 1.2 s: all ten have left the window (0.2, 1.2].
    at_once = 1.21
    assert slot_free_throughout(sorted([*burst, at_once]), 1.2, at_once)


def test_a_request_between_the_price_and_the_exit_that_fills_the_window_counts() -> None:
    nine = [0.3 + 0.01 * k for k in range(9)]
    other = 1.0  # the tenth arrives after our price and before our request
    ours = 1.05
    times = sorted([*nine, other, ours])
    assert in_window(times, 0.95, 1.0) == 9  # at the price there was room...
    assert not slot_free_throughout(times, 0.95, ours)  # ...then there was none
    assert slot_free_throughout(sorted([*nine, ours]), 0.95, ours)


def test_a_slot_is_held_past_its_second_as_the_limiter_holds_it() -> None:
    burst = [0.060 + 0.001 * k for k in range(10)]  # ten requests arrive by 69 ms
    # A price at 1.08 s, its request at 1.09 s: a bare second after the burst has passed, but
    # the limiter counts each slot from the answer for 1.01 s, so that exit waited.
    times = sorted([*burst, 1.09])
    assert in_window(times, 1.08, 1.0) == 0
    assert not slot_free_throughout(times, 1.08, 1.09)
    assert slot_free_throughout(times, 1.08, 1.09, held=1.0)


def test_the_sessions_own_slot_waits_are_read_from_its_log() -> None:
    log = ("2026-11-23 10:00:21 | INFO | exit X-PPB1-1 placed as order PB201: SELL 75 60000 "
           "LIMIT 93.05 (last 94; slot wait 0.0 ms)\n"
           "2026-11-23 10:00:22 | INFO | exit X-PPB12-1 placed as order PB212: SELL 75 60011 "
           "LIMIT 93.05 (last 94; slot wait 981.4 ms)\n")
    assert slot_waits(log) == {"X-PPB1-1": 0.0, "X-PPB12-1": 981.4}


def test_an_exits_stages_are_read_from_the_trace_after_its_tick() -> None:
    """``bench.live_stages``: each stage in ms after the crossing tick was written, from the
    trace's records (ns on the same clock) and the fake's stamps; a price that crossed nothing
    (100) and an exit outside ``only`` are not counted."""
    ms = 1_000_000
    records = [
        {"type": "PriceUpdate", "payload": "PriceUpdate(mark=PriceMark(ltp=Decimal('100')))",
         "instrument": "NSE_FNO:7", "enqueued_ns": 0, "start_ns": 0},
        {"type": "PriceUpdate", "payload": "PriceUpdate(mark=PriceMark(ltp=Decimal('94')))",
         "instrument": "NSE_FNO:7", "enqueued_ns": 1002 * ms, "start_ns": 1003 * ms},
        {"type": "StoreIntent", "sender": "tracker:P7#0", "enqueued_ns": 1004 * ms},
        {"type": "PlaceExitOrder", "instrument": "NSE_FNO:7", "position_id": "P7",
         "enqueued_ns": 1010 * ms, "start_ns": 1012 * ms},
        {"type": "PriceUpdate", "payload": "PriceUpdate(mark=PriceMark(ltp=Decimal('94')))",
         "instrument": "NSE_FNO:8", "enqueued_ns": 1001 * ms, "start_ns": 1001 * ms},
    ]
    found = stages(records, "94", {"7": 1.0, "8": 1.0},
                   {"7": (1.014, 1.015, 1.016), "8": (None, 1.5, None)}, only={"7"})
    assert found["stages_ms"] == STAGES
    assert found["slowest"] == [{"security_id": "7",
                                 "after_tick_ms": [2.0, 3.0, 4.0, 10.0, 12.0, 14.0, 15.0, 16.0]}]
    assert found["after_tick_ms"]["committed"] == {"p50": 10.0, "p90": 10.0, "max": 10.0}
