"""The NUL escape of the PostgreSQL store: reversible, NUL-free, and a no-op on ordinary text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from store.pg_text import MARK, NUL, escape_nul, unescape_nul

# Text rich in the characters the escape is about.
texts = st.text(alphabet=st.sampled_from([NUL, MARK, "\\", "0", "a", "é", '"']) | st.characters(),
                max_size=40)


@given(texts)
def test_escaping_is_reversed_exactly_and_leaves_no_nul(text: str) -> None:
    escaped = escape_nul(text)
    assert NUL not in escaped
    assert unescape_nul(escaped) == text


@given(texts, texts)
def test_escaping_keeps_texts_apart(first: str, second: str) -> None:
    """One-to-one, so equality in SQL (``WHERE order_no = ?``) still finds the same rows."""
    assert (escape_nul(first) == escape_nul(second)) == (first == second)


@given(texts.filter(lambda t: NUL not in t and not t.startswith(MARK)))
def test_text_without_a_nul_or_the_mark_in_front_is_stored_as_is(text: str) -> None:
    assert escape_nul(text) == text


def test_an_escaped_frame_reads_as_the_documented_form() -> None:
    assert escape_nul('{"OrderNo":"E1\x00"} \\') == MARK + '{"OrderNo":"E1\\0"} \\\\'
    assert escape_nul(MARK + "x") == MARK + MARK + "x"
