"""The hand-off micro-benchmark (``bench.handoff``) runs both ways and times every request."""

from __future__ import annotations

import pytest

from bench.handoff import ORDERS, main, run


def test_both_ways_send_every_order_and_are_timed_at_the_server() -> None:
    result = run(trials=3, loads=[0, 1])
    rows = {(row["way"], row["load_threads"]): row for row in result["rows"]}
    assert set(rows) == {("threads", 0), ("process", 0), ("threads", 1), ("process", 1)}
    for row in rows.values():
        assert row["trials"] == 3
        assert row["arrivals_per_trial"] == [ORDERS]  # every request of every trial arrived
        assert 0 <= row["first_ms"]["p50"] <= row["tenth_ms"]["p50"] <= row["tenth_ms"]["max"]


def test_bad_arguments_are_refused_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--loads", "two"])
    assert exit_.value.code == 2
    assert "--loads: comma-separated whole numbers" in capsys.readouterr().err
