"""Text PostgreSQL can hold: a reversible escape for U+0000 (NUL).

A PostgreSQL ``text`` value cannot contain NUL, and a broker frame may (a raw NUL byte, or a
JSON ``\\u0000`` that parsing turns into one inside an order number). The store must still keep
it, exactly (SPEC §4.1: a bad payload is stored raw). So the PostgreSQL store writes every text
through ``escape_nul`` and reads it back through ``unescape_nul``:

- text without NUL that does not start with ``␀`` (U+2400, SYMBOL FOR NULL) -- every ordinary
  frame, id and JSON document -- is stored as is, so the table reads as before;
- any other text is stored as ``␀`` followed by the text with ``\\`` written ``\\\\`` and NUL
  written ``\\0``. Text that merely starts with ``␀`` is escaped too, so reading back is never
  ambiguous: ``unescape_nul(escape_nul(t)) == t`` for every ``t``.

In ``psql``, ``WHERE raw LIKE '␀%'`` lists the escaped frames; equality still works on escaped
columns (the escape is one-to-one), ordering and ``LIKE`` inside them do not, and none of the
store's queries need them to.
"""

from __future__ import annotations

import re

NUL = "\x00"
MARK = "\u2400"
"""Starts every escaped text (and only escaped text)."""

_PAIRS = re.compile(r"\\([\\0])")


def needs_escape(text: str) -> bool:
    return NUL in text or text.startswith(MARK)


def escape_nul(text: str) -> str:
    """``text`` without NUL, reversibly (see the module docstring)."""
    if not needs_escape(text):
        return text
    return MARK + text.replace("\\", "\\\\").replace(NUL, "\\0")


def unescape_nul(text: str) -> str:
    """The text ``escape_nul`` was given."""
    if not text.startswith(MARK):
        return text
    return _PAIRS.sub(lambda pair: NUL if pair[1] == "0" else "\\", text[1:])
