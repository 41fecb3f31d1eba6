"""Summaries are short and cheap, keep what the trace views read back, and redaction skips its
regexes only where they would change nothing."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.runtime.pykka_compat import ProxyCall
from actors.tracing.text import redact, scrub, summarize
from models.common import IST, Frozen, Instrument, Segment
from models.position import ExitReason

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=IST)


class Mark(Frozen):
    ltp: Decimal
    at: datetime


class Sample(Frozen):
    message_id: str
    instrument: Instrument
    mark: Mark
    reason: ExitReason
    detail: str
    legs: tuple[Mark, ...]
    sent_at: datetime


def test_summary_shows_values_in_short_forms_and_keeps_enum_reprs() -> None:
    mark = Mark(ltp=Decimal("100.05"), at=T0)
    sample = Sample(message_id="m1", instrument=Instrument(segment=Segment.NSE_FNO,
                                                           security_id="47012"),
                    mark=mark, reason=ExitReason.STOP_LOSS, detail="pnl -12%", legs=(mark,),
                    sent_at=T0)
    assert summarize(sample) == (
        "Sample(instrument=NSE_FNO:47012, mark=Mark(ltp=Decimal('100.05'), "
        "at=2026-11-23T10:00:00+05:30), reason=<ExitReason.STOP_LOSS: 'STOP_LOSS'>, "
        "detail='pnl -12%', legs=(Mark(ltp=Decimal('100.05'), at=2026-11-23T10:00:00+05:30)))")


class Counted:
    shown = 0

    def __repr__(self) -> str:
        Counted.shown += 1
        return "Counted()"


def test_when_a_message_is_huge_then_its_summary_is_cut_before_all_of_it_is_formatted() -> None:
    call = ProxyCall(attr_path=("load",), args=([Counted() for _ in range(10_000)],),
                     kwargs={})
    text = summarize(call)
    assert len(text) <= 400 and text.endswith("...")
    assert text.startswith("ProxyCall(attr_path=('load'), args=([Counted(), Counted()")
    assert Counted.shown < 100


# Secrets as they appear in text: a keyword, a separator and a value, or a URL with a password;
# keywords also in letters that (?i) matches but lower() does not make ASCII (long s, dotless i).
_KEYWORDS = st.sampled_from([
    "password", "PassWD", "token", "TOKEN", "Secret", "api_key", "API-KEY", "apikey",
    "access-token", "\u017fecret", "pa\u017f\u017fword", "ap\u0131_key", "tokens", "PriceUpdate"])
_SEPARATORS = st.sampled_from(["=", ": ", "='", '": "', " = ", ""])
_VALUES = st.text(alphabet="ab.12-_\u017f\u0131@:/'é)", max_size=8)
_URLS = st.tuples(st.sampled_from(["postgresql", "redis", "\u017f", ""]), st.just("://"), _VALUES,
                  st.sampled_from([":", ""]), _VALUES, st.sampled_from(["@", ""]), _VALUES)
_TEXTS = st.lists(st.one_of(st.tuples(_KEYWORDS, _SEPARATORS, _VALUES).map("".join),
                            _URLS.map("".join), _VALUES), max_size=5).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(_TEXTS)
def test_redact_skips_the_regexes_only_where_they_would_change_nothing(text: str) -> None:
    assert redact(text) == scrub(text)
