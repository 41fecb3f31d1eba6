"""``run.py runner --db-connections``: the cap on each account's store connections in a runner
(a System opens its workers' and reserve's at its start), 12 unless told."""

from __future__ import annotations

import pytest

from run import RUNNER_DB_CONNECTIONS, parser


def test_when_not_given_then_each_account_store_keeps_the_default_cap() -> None:
    args = parser().parse_args(["runner", "--nats", "nats://127.0.0.1:4222"])
    assert args.db_connections == RUNNER_DB_CONNECTIONS == 12


def test_when_given_then_it_is_the_cap() -> None:
    args = parser().parse_args(["runner", "--nats", "nats://127.0.0.1:4222",
                                "--db-connections", "4"])
    assert args.db_connections == 4


@pytest.mark.parametrize("bad", ["0", "-1", "2.5", "many"])
def test_when_not_a_whole_number_of_at_least_one_then_it_is_refused(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parser().parse_args(["runner", "--nats", "nats://127.0.0.1:4222",
                             "--db-connections", bad])
    assert refused.value.code == 2
    assert "--db-connections" in capsys.readouterr().err
