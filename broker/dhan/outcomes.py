"""What a DhanHQ REST answer means (SPEC §10 "Outcomes"), as values, never exceptions.

``classify`` is pure: it turns (HTTP status, parsed body, transport failure) into an ``Outcome``:

=============  ====================================================================================
OK             2xx (a placement also needs an ``orderId``): placed / modified / cancelled / read
REJECTED       DH-903, DH-905, DH-906, another 4xx refusal, or no connection made: not taken
NOT_FOUND      a look-up that found nothing (404, an empty answer, a data error)
UNKNOWN        timeout, reset, 5xx, DH-904 / 429 / 805, DH-908..910, an unreadable body: the order
               may or may not exist; resolve it by look-up, never retry blindly
TOKEN_INVALID  DH-901, 807..809, HTTP 401 / 403
IP_REFUSED     an answer saying the static IP is not whitelisted
LIMITED        our own limiter had no slot in time: nothing was sent
=============  ====================================================================================
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Outcome(StrEnum):
    OK = "OK"
    REJECTED = "REJECTED"
    NOT_FOUND = "NOT_FOUND"
    UNKNOWN = "UNKNOWN"
    TOKEN_INVALID = "TOKEN_INVALID"
    IP_REFUSED = "IP_REFUSED"
    LIMITED = "LIMITED"


@dataclass(frozen=True)
class Answer(Generic[T]):
    """One call's outcome; ``detail`` is safe to log (no token)."""

    outcome: Outcome
    value: T | None = None
    code: str | None = None
    """DhanHQ's error code (``DH-905``, ``805``), the HTTP status, or ``timeout``/``transport``."""
    detail: str = ""
    http_status: int | None = None
    elapsed: float = 0.0
    """Seconds from sending to the answer (or the failure)."""
    waited: float = 0.0
    """Seconds the call waited for its rate-limit slot before it was sent."""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


TOKEN_CODES = frozenset({"DH-901", "807", "808", "809"})
REJECT_CODES = frozenset({"DH-902", "DH-903", "DH-905", "DH-906", "DH-907"})
UNKNOWN_CODES = frozenset({"DH-904", "805", "DH-908", "DH-909", "DH-910", "800"})
NOT_FOUND_CODES = frozenset({"DH-905", "DH-906", "DH-907"})
_IP_WORDS = re.compile(r"(?i)static[\s_-]*ip|white[\s_-]*list|ip[\s_-]*(address)?[\s_-]*not")


@dataclass(frozen=True)
class Classified:
    outcome: Outcome
    code: str | None
    detail: str


def error_of(body: object) -> tuple[str | None, str]:
    """DhanHQ's error code and message from an error body, in any of its shapes:
    ``{"errorType", "errorCode", "errorMessage"}`` (trading API, any casing) or
    ``{"data": {"805": "message"}, "status": "failed"}`` (data API)."""
    if not isinstance(body, Mapping):
        return None, ""
    fields = normalised(body)
    code, message = fields.get("errorcode"), fields.get("errormessage") or fields.get("message")
    kind = fields.get("errortype")
    if code is None and str(fields.get("status", "")).lower() in ("failed", "failure"):
        data = fields.get("data")
        if isinstance(data, Mapping) and data:
            code, message = next(iter(data.items()))
    text = " ".join(str(part) for part in (kind, message) if part not in (None, ""))
    return (str(code).strip() if code not in (None, "") else None), text


def normalised(row: Mapping[Any, Any]) -> dict[str, Any]:
    """Keys folded to lower case without ``_``/``-``: ``orderId``, ``OrderId`` and ``order_id``
    are one key."""
    return {_folded(key): value for key, value in row.items()}


@functools.lru_cache(maxsize=4096)
def _folded(key: object) -> str:
    """One key folded (the same few keys come in every row of a book: folded once each)."""
    return str(key).lower().replace("_", "").replace("-", "")


def classify(status: int | None, body: object, *, transport: str | None = None,
             sent: bool = True, placement: bool = False, lookup: bool = False,
             readable: bool = True) -> Classified:
    """The outcome of one call. ``transport`` names a failure with no answer; ``sent=False``
    says the request never left (no connection). ``placement`` needs an ``orderId`` in a 2xx;
    ``lookup`` turns "no such order" answers into NOT_FOUND."""
    if transport is not None:
        if not sent:
            return Classified(Outcome.REJECTED, "not-sent", f"not sent: {transport}")
        return Classified(Outcome.UNKNOWN, "timeout" if "timeout" in transport.lower()
                          else "transport", f"no answer: {transport}")
    assert status is not None, "an answer without a transport failure has a status"
    code, message = error_of(body)
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if 200 <= status < 300 and code is None:
        return _success(status, body, placement=placement, lookup=lookup, readable=readable)
    if _IP_WORDS.search(message):
        return Classified(Outcome.IP_REFUSED, code or str(status), detail)
    if code in TOKEN_CODES or status in (401, 403):
        return Classified(Outcome.TOKEN_INVALID, code or str(status), detail)
    if code in UNKNOWN_CODES or status == 429 or status >= 500 or not readable:
        return Classified(Outcome.UNKNOWN, code or str(status),
                          detail if readable else f"HTTP {status}: unreadable body")
    if lookup and (status == 404 or code in NOT_FOUND_CODES):
        return Classified(Outcome.NOT_FOUND, code or str(status), detail)
    if 400 <= status < 500 or code in REJECT_CODES:
        return Classified(Outcome.REJECTED, code or str(status), detail)
    return Classified(Outcome.UNKNOWN, code or str(status), detail)


def _success(status: int, body: object, *, placement: bool, lookup: bool,
             readable: bool) -> Classified:
    if not readable:
        return Classified(Outcome.UNKNOWN, str(status), f"HTTP {status}: unreadable body")
    if lookup and body in (None, [], {}, ""):
        return Classified(Outcome.NOT_FOUND, str(status), f"HTTP {status}: empty answer")
    if placement:
        fields = normalised(body) if isinstance(body, Mapping) else {}
        if fields.get("orderid") in (None, ""):
            return Classified(Outcome.UNKNOWN, str(status), f"HTTP {status}: no orderId")
    return Classified(Outcome.OK, None, f"HTTP {status}")
