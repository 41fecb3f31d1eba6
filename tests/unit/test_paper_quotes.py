"""The paper quote API: DhanHQ wire shapes, its limits, and the failures it can be told to give."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import pytest

from broker.paper.market import PaperMarket
from broker.paper.quotes import PaperQuoteApi
from broker.ports import GatewayError, QuoteApi, QuoteThrottled, QuoteTimeout
from models.common import IST, Instrument, Segment

T0 = datetime(2025, 1, 6, 10, 0, tzinfo=IST)
FNO_1 = Instrument(segment=Segment.NSE_FNO, security_id="49081")
FNO_2 = Instrument(segment=Segment.NSE_FNO, security_id="49082")
EQ = Instrument(segment=Segment.NSE_EQ, security_id="11536")
PRICES = {FNO_1: Decimal("368.15"), FNO_2: Decimal("12.05"), EQ: Decimal("4012.50")}


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def api(clock: FakeClock) -> PaperQuoteApi:
    market = PaperMarket(list(PRICES), seed=1, start_prices=PRICES)
    return PaperQuoteApi(market, clock=clock)


def test_paper_quote_api_is_a_quote_api_with_dhan_limits(api: PaperQuoteApi) -> None:
    port: QuoteApi = api
    assert (port.max_instruments, port.min_interval_seconds) == (1000, 1.0)


def test_one_request_covers_several_segments(api: PaperQuoteApi) -> None:
    prices = api.ltp({Segment.NSE_FNO: [49081, 49082], Segment.NSE_EQ: [11536]})
    assert prices == PRICES
    assert api.calls == 1


def test_handle_json_answers_the_exact_dhan_success_shape(api: PaperQuoteApi) -> None:
    answer = api.handle_json('{"NSE_FNO": [49081], "NSE_EQ": [11536]}')
    assert answer == ('{"data": {"NSE_FNO": {"49081": {"last_price": 368.15}}, '
                      '"NSE_EQ": {"11536": {"last_price": 4012.50}}}, "status": "success"}')


def test_unknown_instruments_are_absent_from_the_answer(api: PaperQuoteApi) -> None:
    answer = json.loads(api.handle_json('{"NSE_FNO": [49081, 1], "BSE_EQ": [500325]}'))
    assert answer["data"] == {"NSE_FNO": {"49081": {"last_price": 368.15}}}


def test_ltp_leaves_out_unknown_instruments(api: PaperQuoteApi) -> None:
    assert api.ltp({Segment.NSE_FNO: [1, 49082]}) == {FNO_2: Decimal("12.05")}


def test_prices_travel_as_exact_decimals(api: PaperQuoteApi) -> None:
    api.market.set_price(FNO_1, Decimal("0.1234567890123456789"), T0)
    assert api.ltp({Segment.NSE_FNO: [49081]}) == {FNO_1: Decimal("0.1234567890123456789")}


def test_1000_instruments_over_all_segments_are_allowed(api: PaperQuoteApi) -> None:
    ids = list(range(1, 500))
    prices = api.ltp({Segment.NSE_FNO: [49081, *ids], Segment.NSE_EQ: [11536, *ids]})
    assert prices == {FNO_1: PRICES[FNO_1], EQ: PRICES[EQ]}


def test_1001_instruments_are_refused_as_too_many(api: PaperQuoteApi, clock: FakeClock) -> None:
    request = {Segment.NSE_FNO: list(range(600)), Segment.NSE_EQ: list(range(401))}
    with pytest.raises(GatewayError, match="too many instruments: 1001") as error:
        api.ltp(request)
    assert not isinstance(error.value, QuoteThrottled | QuoteTimeout)
    clock.now += 1
    answer = json.loads(api.handle_json(json.dumps({"NSE_FNO": list(range(1001))})))
    assert answer["status"] == "failed" and list(answer["data"]) == ["804"]


def test_a_second_request_within_a_second_is_throttled_with_the_429_shape(
        api: PaperQuoteApi, clock: FakeClock) -> None:
    api.handle_json('{"NSE_FNO": [49081]}')
    clock.now += 0.999
    answer = api.handle_json('{"NSE_FNO": [49081]}')
    parsed = json.loads(answer)
    assert parsed["status"] == "failed" and list(parsed["data"]) == ["805"]
    assert answer.startswith('{"data": {"805": "') and answer.endswith('"}, "status": "failed"}')


def test_a_request_a_whole_second_later_is_admitted_whatever_float_makes_of_it(
        api: PaperQuoteApi, clock: FakeClock) -> None:
    clock.now = 1.05
    api.ltp({Segment.NSE_FNO: [49081]})
    clock.now = 2.05  # 2.05 - 1.05 == 0.9999999999999998
    assert api.ltp({Segment.NSE_FNO: [49081]}) == {FNO_1: PRICES[FNO_1]}
    clock.now = 3.0499
    with pytest.raises(QuoteThrottled):
        api.ltp({Segment.NSE_FNO: [49081]})


def test_ltp_within_a_second_raises_quote_throttled(api: PaperQuoteApi, clock: FakeClock) -> None:
    api.ltp({Segment.NSE_FNO: [49081]})
    clock.now += 0.5
    with pytest.raises(QuoteThrottled, match="805"):
        api.ltp({Segment.NSE_FNO: [49081]})


def test_a_throttled_request_does_not_restart_the_one_second_window(
        api: PaperQuoteApi, clock: FakeClock) -> None:
    api.ltp({Segment.NSE_FNO: [49081]})
    clock.now += 0.5
    with pytest.raises(QuoteThrottled):
        api.ltp({Segment.NSE_FNO: [49081]})
    clock.now += 0.5
    assert api.ltp({Segment.NSE_FNO: [49081]}) == {FNO_1: PRICES[FNO_1]}
    assert api.calls == 3


def test_throttle_next_answers_429_even_after_a_pause(api: PaperQuoteApi,
                                                      clock: FakeClock) -> None:
    api.throttle_next(2)
    for _ in range(2):
        with pytest.raises(QuoteThrottled):
            api.ltp({Segment.NSE_FNO: [49081]})
        clock.now += 5
    assert api.ltp({Segment.NSE_FNO: [49081]}) == {FNO_1: PRICES[FNO_1]}


def test_timeout_next_raises_quote_timeout(api: PaperQuoteApi, clock: FakeClock) -> None:
    api.timeout_next(1)
    with pytest.raises(QuoteTimeout):
        api.ltp({Segment.NSE_FNO: [49081]})
    clock.now += 1
    assert api.ltp({Segment.NSE_FNO: [49081]}) == {FNO_1: PRICES[FNO_1]}


def test_fail_next_raises_a_plain_gateway_error(api: PaperQuoteApi, clock: FakeClock) -> None:
    api.fail_next(1)
    with pytest.raises(GatewayError, match="800") as error:
        api.ltp({Segment.NSE_FNO: [49081]})
    assert type(error.value) is GatewayError
    clock.now += 1
    assert api.ltp({Segment.NSE_FNO: [49081]}) == {FNO_1: PRICES[FNO_1]}


def test_calls_counts_every_request_answered_or_not(api: PaperQuoteApi,
                                                    clock: FakeClock) -> None:
    api.fail_next(1)
    with pytest.raises(GatewayError):
        api.ltp({Segment.NSE_FNO: [49081]})
    with pytest.raises(QuoteThrottled):
        api.ltp({Segment.NSE_FNO: [49081]})
    clock.now += 1
    api.ltp({})
    assert api.calls == 3


@pytest.mark.parametrize("body, reason", [
    ("not json", "not JSON"),
    ("[49081]", "must be a JSON object"),
    ('{"NSE_XX": [1]}', "unknown segment"),
    ('{"NSE_FNO": ["49081"]}', "integer security ids"),
    ('{"NSE_FNO": 49081}', "integer security ids"),
])
def test_a_malformed_request_is_answered_with_the_failed_shape(api: PaperQuoteApi, body: str,
                                                               reason: str) -> None:
    answer = json.loads(api.handle_json(body))
    assert answer["status"] == "failed"
    assert reason in answer["data"]["814"]
