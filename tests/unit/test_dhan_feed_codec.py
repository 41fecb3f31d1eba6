"""The DhanHQ feed codec: packets round-trip, several per message, bad input is a clear error."""

from __future__ import annotations

import json
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.dhan.feed_codec import (
    HEADER,
    DisconnectPacket,
    FeedDecodeError,
    OtherPacket,
    TickerPacket,
    decode,
    encode_disconnect,
    encode_ticker,
    float32_decimal,
    parse_subscription,
    subscription_messages,
)
from models.common import Instrument, Segment

FNO = Instrument(segment=Segment.NSE_FNO, security_id="49081")
MCX = Instrument(segment=Segment.MCX_COMM, security_id="432293")


def test_ticker_round_trips_with_the_price_as_its_shortest_decimal() -> None:
    [packet] = decode(encode_ticker(FNO, Decimal("368.15"), 1_700_000_000))
    assert packet == TickerPacket(instrument=FNO, ltp=Decimal("368.15"), ltt=1_700_000_000)


def test_header_is_little_endian_with_dhan_segment_codes() -> None:
    message = encode_ticker(MCX, Decimal("1"), 0)
    assert message[0] == 2 and message[3] == 5  # ticker, MCX_COMM
    assert struct.unpack_from("<H", message, 1)[0] == 16
    assert struct.unpack_from("<I", message, 4)[0] == 432293


def test_several_packets_in_one_message_come_out_in_order() -> None:
    message = (encode_ticker(FNO, Decimal("100.05"), 1) + encode_ticker(MCX, Decimal("7215"), 2)
               + encode_disconnect(805))
    assert decode(message) == [
        TickerPacket(FNO, Decimal("100.05"), 1), TickerPacket(MCX, Decimal("7215"), 2),
        DisconnectPacket(reason=805)]


def test_a_zero_price_is_decoded_as_zero_for_the_client_to_drop() -> None:
    assert decode(encode_ticker(FNO, Decimal(0), 5)) == [TickerPacket(FNO, Decimal(0), 5)]


def test_unknown_packet_codes_are_skipped_by_their_length_field() -> None:
    other = HEADER.pack(99, 12, 2, 1) + b"\x00" * 4
    assert decode(other + encode_ticker(FNO, Decimal("1.5"), 0)) == [
        OtherPacket(code=99), TickerPacket(FNO, Decimal("1.5"), 0)]


@pytest.mark.parametrize(("message", "match"), [
    (b"\x02\x10\x00", "truncated header"),
    (encode_ticker(FNO, Decimal("1"), 0)[:12], "truncated packet"),
    (encode_ticker(FNO, Decimal("1"), 0) + b"\x02", "truncated header at byte 16"),
    (HEADER.pack(99, 3, 2, 1), "claims length 3"),
    (HEADER.pack(2, 16, 6, 1) + struct.pack("<fi", 1.0, 0), "unknown exchange segment 6"),
    (HEADER.pack(2, 16, 2, 1) + struct.pack("<fi", float("nan"), 0), "not a price"),
])
def test_bad_messages_raise_a_clear_error(message: bytes, match: str) -> None:
    with pytest.raises(FeedDecodeError, match=match):
        decode(message)


@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_a_decode_error(message: bytes) -> None:
    try:
        packets = decode(message)
    except FeedDecodeError:
        return
    assert all(isinstance(p, TickerPacket | DisconnectPacket | OtherPacket) for p in packets)


@given(st.decimals(min_value=Decimal("0.05"), max_value=Decimal("99999.95"), places=2))
def test_tick_sized_prices_survive_float32(price: Decimal) -> None:
    value = struct.unpack("<f", struct.pack("<f", float(price)))[0]
    # float32 keeps ~7 significant digits: prices up to 99,999.95 read back exactly
    if len(price.normalize().as_tuple().digits) <= 7:
        assert float32_decimal(value) == price


def test_subscriptions_go_in_messages_of_at_most_100() -> None:
    instruments = [Instrument(segment=Segment.NSE_FNO, security_id=str(40000 + i))
                   for i in range(250)]
    messages = subscription_messages(instruments)
    assert [json.loads(m)["InstrumentCount"] for m in messages] == [100, 100, 50]
    first = json.loads(messages[0])
    assert first["RequestCode"] == 15
    assert first["InstrumentList"][0] == {"ExchangeSegment": "NSE_FNO", "SecurityId": "40000"}
    code, parsed = parse_subscription(messages[2])
    assert code == 15 and parsed == instruments[200:]
    assert json.loads(subscription_messages(instruments[:1], subscribe=False)[0])[
        "RequestCode"] == 16


@pytest.mark.parametrize("text", ["nope", "[]", '{"RequestCode": 15, "InstrumentList": 3}',
                                  '{"RequestCode": 15, "InstrumentList": '
                                  '[{"ExchangeSegment": "XX", "SecurityId": "1"}]}'])
def test_bad_subscription_requests_are_refused_clearly(text: str) -> None:
    with pytest.raises(FeedDecodeError):
        parse_subscription(text)
