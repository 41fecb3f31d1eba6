"""What a message looks like in a trace (SPEC §8): a short, redacted summary of its fields.

Rendering runs off the actors' path but shares the GIL with them (see ``actors.trace_render``),
so it is kept cheap: how each type is shown is worked out once per type (its fields, read in one
``attrgetter`` call; a ``%`` template when every value is shown by its ``repr``), values are
formatted without pydantic's ``repr``, long sequences stop once the text would be cut anyway,
and the redaction regexes run only on text that could hold a secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from enum import Enum
from operator import attrgetter
from typing import Any

_OMIT = ("message_id", "correlation_id", "causation_id", "sent_at")
_KEYED = ("position", "position_id", "update", "order_no", "instrument")
_SECRET = re.compile(r"(?i)((?:password|passwd|token|secret|access[_-]?token|api[_-]?key)"
                     r"['\"]?\s*[:=]\s*['\"]?)([^'\",\s)]+)")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def redact(text: str) -> str:
    """Tokens and passwords never reach a record, a log line or a report."""
    # Every match of the patterns contains "://", "passw", "token", "secret" or "api" in ASCII
    # letters of any case, so ASCII text without them cannot hold a secret and skips the
    # regexes: most trace text is prices and ids. Other text always runs them, since (?i) also
    # matches letters that lower() leaves alone (the long s, the dotless i).
    if text.isascii():
        lowered = text.lower()
        if not ("://" in lowered or "passw" in lowered or "token" in lowered
                or "secret" in lowered or "api" in lowered):
            return text
    return scrub(text)


def scrub(text: str) -> str:
    """The redaction itself, on any text."""
    return _URL_PASSWORD.sub(r"\1***\3", _SECRET.sub(r"\1***", text))


class Plan:
    """What rendering a type needs, worked out once per type: its fields (None when it has no
    declared fields: rendered through ``repr`` and ``getattr``) and how its values are shown."""

    __slots__ = ("all", "constant", "fields", "has", "ids", "keyed", "keys", "shape", "summary",
                 "type_json")

    def __init__(self, cls: type) -> None:
        self.fields = _declared(cls)
        self.has = frozenset(self.fields or ())
        self.all = _Fields(cls, self.fields or ())
        self.summary = _Fields(cls, tuple(n for n in self.fields or () if n not in _OMIT))
        known = self.fields is not None
        self.ids = _reader(_OMIT, self.has if known else None)
        self.keyed = tuple(n for n in _KEYED if not known or n in self.has)
        self.keys = _reader(self.keyed, self.has if known else None)
        self.shape = _shape(cls, self.fields)
        self.type_json = json.dumps(cls.__name__)
        self.constant: str | None = None  # the head of a type without fields, once rendered
        if self.shape in _LEAF:
            _PLAIN.setdefault(cls, _LEAF[self.shape])
        if self.shape == "repr":
            _REPRS.add(cls)


class _Fields:
    """Some fields of a type: their labels, their values read in one call, and a template for
    when every value is shown by its ``repr`` (one ``%`` in C instead of a loop)."""

    __slots__ = ("labels", "template", "values")

    def __init__(self, cls: type, names: tuple[str, ...]) -> None:
        self.labels = tuple(f"{name}=" for name in names)
        self.template = f"{cls.__name__}({', '.join(f'{name}=%r' for name in names)})"
        self.values: Callable[[Any], tuple[Any, ...]] = _none
        if len(names) == 1:
            one = attrgetter(names[0])
            self.values = lambda value: (one(value),)
        elif names:
            self.values = attrgetter(*names)


def _none(value: Any) -> tuple[Any, ...]:
    return ()


def _reader(names: tuple[str, ...], has: frozenset[str] | None) -> Callable[[Any], tuple[Any, ...]]:
    """Reads ``names`` in one call (None for a name the type lacks): one C call when the type
    declares them all, ``getattr`` one by one otherwise (types without declared fields)."""
    if has is not None and has.issuperset(names):
        return _Fields(object, names).values
    present = tuple(name if has is None or name in has else "" for name in names)
    return lambda value: tuple(getattr(value, name, None) if name else None for name in present)


def _declared(cls: type) -> tuple[str, ...] | None:
    """The fields of a pydantic model, a dataclass or a NamedTuple (pykka's proxy calls)."""
    declared = getattr(cls, "model_fields", None)
    if not isinstance(declared, dict):
        declared = getattr(cls, "__dataclass_fields__", None)
    if isinstance(declared, dict):
        return tuple(declared)
    named = getattr(cls, "_fields", None) if issubclass(cls, tuple) else None
    return tuple(named) if isinstance(named, tuple) else None


_plans: dict[type, Plan] = {}


def plan_of(cls: type) -> Plan:
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = Plan(cls)
    return plan


def _shape(cls: type, fields: tuple[str, ...] | None) -> str:
    if cls in (str, int, float, bool, Decimal, type(None)) or issubclass(cls, Enum):
        return "repr"  # enums keep their repr: the trace views read "ExitReason.X: " back
    if issubclass(cls, datetime):
        return "iso"
    if issubclass(cls, (tuple, list, set, frozenset)) and fields is None:
        return "items"
    if issubclass(cls, dict):
        return "mapping"
    if fields is not None and {"position_id", "orders"} <= set(fields):
        return "position"
    if "__str__" in vars(cls):
        return "str"  # a domain value with its own short form (Instrument: "NSE_FNO:123")
    return "model" if fields is not None else "repr"


def iso(value: Any) -> str:
    # Many messages share one datetime (the fan-out of a batch shares its sent_at, a tick's
    # mark travels on in the batch and the updates), and isoformat is one of the dearer steps.
    # The memo holds the datetime itself, so its id cannot be reused while the entry is there.
    hit = _iso_memo.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    if len(_iso_memo) >= 64:
        _iso_memo.clear()
    text = _iso_memo[id(value)] = (value, str(value.isoformat()))
    return text[1]


_iso_memo: dict[int, tuple[Any, str]] = {}


_LEAF: dict[str, Callable[[Any], str]] = {"repr": repr, "iso": iso, "str": str}
# How a value of each leaf type is shown, filled in as plans are made: most values are found
# here at once.
_PLAIN: dict[type, Callable[[Any], str]] = {
    str: repr, Decimal: repr, int: repr, type(None): repr, bool: repr, float: repr,
    datetime: iso}
_REPRS = {cls for cls, show in _PLAIN.items() if show is repr}


def _value(value: Any, room: int) -> str:
    plain = _PLAIN.get(type(value))
    if plain is not None:
        return plain(value)
    plan = plan_of(type(value))
    shape = plan.shape
    if shape in _LEAF:
        return _LEAF[shape](value)
    if shape == "position":
        return f"<{value.position_id} {value.status} qty={value.quantity}>"
    if shape == "items":
        return f"[{_items(value, room)}]" if isinstance(value, list) else f"({_items(value, room)})"
    if shape == "mapping":
        return f"{{{_items(value.items(), room, _pair)}}}"
    return _model(value, plan.all, room)


def _items(values: Iterable[Any], room: int,
           show: Callable[[Any, int], str] | None = None) -> str:
    """Items until the text would be cut anyway; each item is whole, so a secret (never split by
    ", ") is either redacted whole or not shown."""
    parts: list[str] = []
    used = 0
    for value in values:
        if used > room:
            parts.append("...")
            break
        parts.append((show or _value)(value, room - used))
        used += len(parts[-1]) + 2
    return ", ".join(parts)


def _pair(item: tuple[Any, Any], room: int) -> str:
    return f"{_value(item[0], room)}: {_value(item[1], room)}"


def _model(value: Any, fields: _Fields, room: int) -> str:
    values = fields.values(value)
    if _REPRS.issuperset(map(type, values)):
        return fields.template % values
    parts = []
    for label, field in zip(fields.labels, values, strict=True):
        plain = _PLAIN.get(type(field))
        parts.append(label + (plain(field) if plain is not None else _value(field, room)))
    return f"{type(value).__name__}({', '.join(parts)})"


def summarize(message: Any, limit: int = 400) -> str:
    """Type and fields, with a nested position shortened to its id, status and quantity."""
    return summary_of(message, plan_of(type(message)), limit)


def summary_of(message: Any, plan: Plan, limit: int = 400) -> str:
    text = repr(message) if plan.fields is None else _model(message, plan.summary, limit)
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_of(value: Any, name: str) -> Any:
    """``getattr(value, name, None)`` without pydantic's slow path for a missing field."""
    if value is None:
        return None
    plan = plan_of(type(value))
    if plan.fields is not None and name not in plan.has:
        return None
    return getattr(value, name, None)
