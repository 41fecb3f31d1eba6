"""What a message looks like in a trace (SPEC §8): a short, redacted summary of its fields.

Rendering runs off the actors' path but shares the GIL with them (see ``actors.tracing.render``),
so it is kept cheap: how each type is shown is worked out once per type (a ``Plan``), including
a summariser generated for its fields; values are shown without pydantic's ``repr`` (an
instrument as ``NSE_FNO:123``, a datetime in ISO form, a position as its id, status and
quantity); long sequences stop once the text would be cut anyway; and the redaction regexes run
only on text that could hold a secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from enum import Enum
from keyword import iskeyword
from typing import Any

_ROOM = 400  # characters of summary kept; also how far a nested sequence is formatted
_OMIT = ("message_id", "correlation_id", "causation_id", "sent_at")
_KEYED = ("position", "position_id", "update", "order_no", "instrument", "progress")
_SECRET = re.compile(r"(?i)((?:password|passwd|token|secret|access[_-]?token|api[_-]?key)"
                     r"['\"]?\s*[:=]\s*['\"]?)([^'\",\s)]+)")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")

Show = Callable[[Any], str]
Read = Callable[[Any], tuple[Any, ...]]


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
    """How a type is rendered, worked out once: its declared fields (None for a type without:
    shown by ``repr``, read by ``getattr``), readers for its ids and domain keys, its summary."""

    __slots__ = ("constant", "fields", "has", "ids", "keyed", "keys", "shape", "show",
                 "type_json")

    def __init__(self, cls: type) -> None:
        self.fields = _declared(cls)
        known = self.fields is not None
        self.has = frozenset(self.fields or ())
        self.ids = _reader(_OMIT, self.has if known else None)
        self.keyed = not known or bool(self.has.intersection(_KEYED))
        self.keys = _reader(_KEYED, self.has if known else None)
        self.shape = _shape(cls, self.fields)
        self.show: Show = repr
        if self.fields is not None:
            names = tuple(n for n in self.fields if n not in _OMIT)
            self.show = _lazy(cls, names, lambda show: setattr(self, "show", show))
        self.type_json = json.dumps(cls.__name__)
        self.constant: str | None = None  # the head of a type without fields, once rendered
        if self.shape == "str" and _frozen(cls):
            _MEMO_TYPES.add(cls)
        if issubclass(cls, Enum):
            _PLAIN.setdefault(cls, _enum_show(cls))
        elif self.shape in _LEAF:
            _PLAIN.setdefault(cls, _LEAF[self.shape])
        elif self.shape == "model":  # as a value inside another message: every field
            _PLAIN.setdefault(cls, _lazy(cls, self.fields or (),
                                         lambda show: _PLAIN.__setitem__(cls, show)))


def _reader(names: tuple[str, ...], has: frozenset[str] | None) -> Read:
    """Reads ``names`` in one call, None for a name the type lacks (``getattr`` with a default
    for a type without declared fields); generated like ``_compile_show``."""
    reads = ", ".join("None" if has is not None and name not in has
                      else f"value.{name}" if has is not None
                      else f"getattr(value, {name!r}, None)" for name in names)
    namespace: dict[str, Any] = {}
    exec(f"def read(value):\n    return ({reads}{',' if names else ''})\n", namespace)
    read: Read = namespace["read"]
    return read


def _frozen(cls: type) -> bool:
    """A frozen pydantic model or dataclass: its text cannot change."""
    config = getattr(cls, "model_config", None)
    params = getattr(cls, "__dataclass_params__", None)
    return bool((isinstance(config, dict) and config.get("frozen"))
                or (params is not None and getattr(params, "frozen", False)))


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


def _enum_show(cls: type[Enum]) -> Show:
    """An enum member's repr, looked up: ``Enum.__repr__`` is Python code, members are few and
    live as long as their class."""
    shown = {id(member): repr(member) for member in cls}
    return lambda member: shown.get(id(member)) or repr(member)


def _position(value: Any) -> str:
    """A position's id, status and quantity, and the numbers a trace's story is told with."""
    text = (f"<{value.position_id} {value.status} {value.side} qty={value.quantity} "
            f"order={value.entry_order_no}")
    entry, exit_ = value.entry_price, value.exit_price
    if entry is not None:
        text += f" entry={_number(entry)}"
    if exit_ is not None:
        text += f" exit={_number(exit_)} exited={value.exit_qty}"
    if value.peak_price is not None:
        text += f" peak={_number(value.peak_price)}"
    if value.trail_stop is not None:
        text += f" stop={_number(value.trail_stop)}"
    if value.exit_reason is not None:
        text += f" reason={value.exit_reason}"
    return text + ">"


def _number(value: Decimal) -> str:
    """A price as a trader reads it: plain digits, at most 6 decimals (an average of fills)."""
    return f"{value.quantize(_MICRO).normalize():f}" if abs(value) < _HUGE else f"{value:f}"


_MICRO, _HUGE = Decimal("0.000001"), Decimal(10) ** 15


def short(value: Any) -> str:
    """``str(value)``, remembered for the frozen domain values that define a short form."""
    # Instruments are few, long-lived and shown in most messages. Like ``iso``, the memo holds
    # the value, so its id is not reused meanwhile; only frozen values are held, so no actor
    # (an ActorRef has a short form too) is kept alive by it.
    if type(value) not in _MEMO_TYPES:
        return str(value)
    hit = _str_memo.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    if len(_str_memo) >= 4096:
        _str_memo.clear()
    text = _str_memo[id(value)] = (value, str(value))
    return text[1]


_str_memo: dict[int, tuple[Any, str]] = {}
_MEMO_TYPES: set[type] = set()
_LEAF: dict[str, Show] = {"repr": repr, "iso": iso, "str": short, "position": _position}
# How a value of each type is shown, filled in as plans are made (sequences and mappings are
# not here: they need to know how much room is left).
_PLAIN: dict[type, Show] = {str: repr, Decimal: repr, int: repr, type(None): repr, bool: repr,
                            float: repr, datetime: iso}


def _value(value: Any, room: int = _ROOM) -> str:
    plain = _PLAIN.get(type(value))
    if plain is not None:
        return plain(value)
    shape = plan_of(type(value)).shape  # the plan registers how to show most types in _PLAIN
    if shape == "items":
        return f"[{_items(value, room)}]" if isinstance(value, list) else f"({_items(value, room)})"
    if shape == "mapping":
        return f"{{{_items(value.items(), room, _pair)}}}"
    return _PLAIN[type(value)](value)


def _items(values: Iterable[Any], room: int,
           show: Callable[[Any, int], str] = _value) -> str:
    """Items until the text would be cut anyway; each item is whole, so a secret (never split by
    ", ") is either redacted whole or not shown."""
    parts: list[str] = []
    used = 0
    for value in values:
        if used > room:
            parts.append("...")
            break
        parts.append(show(value, room - used))
        used += len(parts[-1]) + 2
    return ", ".join(parts)


def _pair(item: tuple[Any, Any], room: int) -> str:
    return f"{_value(item[0], room)}: {_value(item[1], room)}"


def _lazy(cls: type, names: tuple[str, ...], install: Callable[[Show], None]) -> Show:
    """A summariser compiled when first used (and then installed in place of this one)."""
    def first(value: Any) -> str:
        show = _compile_show(cls, names)
        install(show)
        return show(value)
    return first


def _compile_show(cls: type, names: tuple[str, ...]) -> Show:
    """``Type(name=value, ...)`` for ``names``, as straight-line code generated once per type
    (as dataclasses generate ``__repr__``): this runs for every traced message, and a loop over
    the fields costs three times as much. Field names are identifiers (pydantic, dataclasses
    and NamedTuples require it), so they are safe in the source."""
    if not all(name.isidentifier() and not iskeyword(name) for name in names):
        return repr
    reads = "".join(f"    a{i} = value.{name}\n    f{i} = _PLAIN.get(type(a{i}))\n"
                    for i, name in enumerate(names))
    shown = ", ".join(f"{name}={{f{i}(a{i}) if f{i} is not None else _value(a{i})}}"
                      for i, name in enumerate(names))
    title = cls.__name__.replace("{", "{{").replace("}", "}}")
    source = f"def show(value):\n{reads}    return f{f'{title}({shown})'!r}\n"
    namespace: dict[str, Any] = {"_PLAIN": _PLAIN, "_value": _value}
    exec(source, namespace)  # the source is built above from identifiers only
    show: Show = namespace["show"]
    return show


def summarize(message: Any, limit: int = _ROOM) -> str:
    """Type and fields, with a nested position shortened to its id, status and quantity."""
    return summary_of(message, plan_of(type(message)), limit)


def summary_of(message: Any, plan: Plan, limit: int = _ROOM) -> str:
    text = redact(plan.show(message))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_bulky(message: Any) -> bool:
    """Whether a message holds collections (a batch of prices, a bulk load), judged by the first
    message of its type. Such a message is summarised when it is handled rather than kept, so a
    flight recorder does not keep whole batches alive (and the garbage collector busy). Cheap:
    it runs on the actor's path, for every message."""
    bulky = _bulky.get(type(message))
    if bulky is None:
        fields = _declared(type(message)) or ()
        values = [getattr(message, name, None) for name in fields]
        bulky = _bulky[type(message)] = any(
            isinstance(value, _COLLECTIONS) and _declared(type(value)) is None
            for value in values)
    return bulky


_bulky: dict[type, bool] = {}
_COLLECTIONS = (tuple, list, set, frozenset, dict)


def field_of(value: Any, name: str) -> Any:
    """``getattr(value, name, None)`` without pydantic's slow path for a missing field."""
    if value is None:
        return None
    plan = plan_of(type(value))
    if plan.fields is not None and name not in plan.has:
        return None
    return getattr(value, name, None)
