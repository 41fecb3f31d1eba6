"""The DhanHQ market feed's wire format (SPEC §10), pure: encoding (the fake) and decoding.

Requests are JSON text; answers are binary, little-endian, one or more packets per message, each
with an 8-byte header::

    byte 0      response code (u8)       2 ticker, 50 disconnect, … (DhanHQ annexure)
    bytes 1-2   message length (u16)     the packet's length, header included
    byte 3      exchange segment (u8)    0 IDX_I, 1 NSE_EQ, 2 NSE_FNO, 3 NSE_CURRENCY, 4 BSE_EQ,
                                         5 MCX_COMM, 7 BSE_CURRENCY, 8 BSE_FNO
    bytes 4-7   security id (u32)

    ticker (2)       + LTP float32, last trade time int32 (epoch seconds)    16 bytes
    disconnect (50)  + reason u16                                             10 bytes

Packets of known codes have a fixed size (whatever the length field says); for an unknown code the
length field is trusted and the packet skipped. Anything that cannot be cut into packets raises
``FeedDecodeError`` with a clear reason: a bad message never crashes the reader.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from models.common import Instrument, Segment

HEADER: Final = struct.Struct("<BHBI")
TICKER_BODY: Final = struct.Struct("<fi")
DISCONNECT_BODY: Final = struct.Struct("<H")

TICKER: Final = 2
DISCONNECT: Final = 50
SUBSCRIBE_TICKER: Final = 15
UNSUBSCRIBE_TICKER: Final = 16
MAX_PER_MESSAGE: Final = 100
MAX_PER_CONNECTION: Final = 5000

SEGMENT_CODES: Final[dict[Segment, int]] = {
    Segment.IDX_I: 0, Segment.NSE_EQ: 1, Segment.NSE_FNO: 2, Segment.NSE_CURRENCY: 3,
    Segment.BSE_EQ: 4, Segment.MCX_COMM: 5, Segment.BSE_CURRENCY: 7, Segment.BSE_FNO: 8,
}
SEGMENT_OF_CODE: Final = {code: segment for segment, code in SEGMENT_CODES.items()}

PACKET_SIZES: Final[dict[int, int]] = {
    1: 16,  # index packet
    TICKER: 16, 4: 50, 5: 12, 6: 16, 7: 8, 8: 162, DISCONNECT: 10,
}
"""Sizes of the packets DhanHQ documents, header included."""


class FeedDecodeError(ValueError):
    """A feed message that cannot be read; the message says where and why."""


@dataclass(frozen=True)
class TickerPacket:
    instrument: Instrument
    ltp: Decimal
    """From the float32's shortest decimal text; 0 means no price."""
    ltt: int


@dataclass(frozen=True)
class DisconnectPacket:
    reason: int


@dataclass(frozen=True)
class OtherPacket:
    """A packet we do not use (quote, OI, market status, …), skipped."""

    code: int


Packet = TickerPacket | DisconnectPacket | OtherPacket


def float32_decimal(value: float) -> Decimal:
    """The shortest decimal that reads back as the same float32 (``368.15``, not
    ``368.1499938964844``)."""
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if struct.pack("<f", float(text)) == packed:
            return Decimal(text)
    return Decimal(repr(value))


# Decoding ------------------------------------------------------------------------------------
def decode(message: bytes) -> list[Packet]:
    """Every packet of one binary feed message, in order."""
    packets: list[Packet] = []
    offset = 0
    while offset < len(message):
        if len(message) - offset < HEADER.size:
            raise FeedDecodeError(f"truncated header at byte {offset}: "
                                  f"{len(message) - offset} of {HEADER.size} bytes")
        code, length, segment_code, security_id = HEADER.unpack_from(message, offset)
        size = PACKET_SIZES.get(code, length)
        if size < HEADER.size:
            raise FeedDecodeError(f"packet code {code} at byte {offset} claims length {length}")
        if offset + size > len(message):
            raise FeedDecodeError(f"truncated packet code {code} at byte {offset}: needs "
                                  f"{size} bytes, {len(message) - offset} left")
        packets.append(_packet(message, offset, code, segment_code, security_id))
        offset += size
    return packets


def _packet(message: bytes, offset: int, code: int, segment_code: int,
            security_id: int) -> Packet:
    body = offset + HEADER.size
    if code == DISCONNECT:
        (reason,) = DISCONNECT_BODY.unpack_from(message, body)
        return DisconnectPacket(reason=reason)
    if code != TICKER:
        return OtherPacket(code=code)
    segment = SEGMENT_OF_CODE.get(segment_code)
    if segment is None:
        raise FeedDecodeError(f"ticker at byte {offset}: unknown exchange segment "
                              f"{segment_code}")
    ltp, ltt = TICKER_BODY.unpack_from(message, body)
    if ltp != ltp or ltp in (float("inf"), float("-inf")) or ltp < 0:
        raise FeedDecodeError(f"ticker at byte {offset} for {segment.value}:{security_id}: "
                              f"price {ltp} is not a price")
    return TickerPacket(instrument=Instrument(segment=segment, security_id=str(security_id)),
                        ltp=float32_decimal(ltp), ltt=ltt)


# Encoding (the fake's side) ------------------------------------------------------------------
def encode_ticker(instrument: Instrument, ltp: Decimal, ltt: int) -> bytes:
    return HEADER.pack(TICKER, PACKET_SIZES[TICKER], SEGMENT_CODES[instrument.segment],
                       int(instrument.security_id)) + TICKER_BODY.pack(float(ltp), ltt)


def encode_disconnect(reason: int) -> bytes:
    return HEADER.pack(DISCONNECT, PACKET_SIZES[DISCONNECT], 0, 0) + DISCONNECT_BODY.pack(reason)


# Requests ----------------------------------------------------------------------------------
def subscription_messages(instruments: Sequence[Instrument], *, subscribe: bool = True,
                          per_message: int = MAX_PER_MESSAGE) -> list[str]:
    """JSON requests of at most ``per_message`` instruments each."""
    code = SUBSCRIBE_TICKER if subscribe else UNSUBSCRIBE_TICKER
    messages = []
    for start in range(0, len(instruments), per_message):
        chunk = instruments[start:start + per_message]
        messages.append(json.dumps({
            "RequestCode": code, "InstrumentCount": len(chunk),
            "InstrumentList": [{"ExchangeSegment": i.segment.value, "SecurityId": i.security_id}
                               for i in chunk]}))
    return messages


def parse_subscription(text: str) -> tuple[int, list[Instrument]]:
    """The request code and instruments of one JSON request (the fake's side)."""
    try:
        document = json.loads(text)
    except ValueError:
        raise FeedDecodeError("feed request is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("RequestCode"), int):
        raise FeedDecodeError("feed request has no integer RequestCode")
    listed = document.get("InstrumentList", [])
    if not isinstance(listed, list):
        raise FeedDecodeError("InstrumentList must be a list")
    return document["RequestCode"], list(_instruments(listed))


def _instruments(listed: Iterable[object]) -> Iterable[Instrument]:
    for entry in listed:
        if not isinstance(entry, dict):
            raise FeedDecodeError(f"instrument entry is not an object: {str(entry)[:40]}")
        segment = str(entry.get("ExchangeSegment"))
        if segment not in Segment.__members__:
            raise FeedDecodeError(f"unknown ExchangeSegment {str(segment)[:40]!r}")
        yield Instrument(segment=Segment(segment), security_id=str(entry.get("SecurityId")))
