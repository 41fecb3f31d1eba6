"""``run.py connector`` and ``run.py feed``: bad input is a clear error with exit code 2,
before anything connects; a token is never echoed."""

from __future__ import annotations

import pytest

from run import main

NATS = "nats://127.0.0.1:9"  # nothing listens: the run must stop before it connects


def test_when_no_accounts_then_refused_naming_the_flag(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCOUNTS", raising=False)
    assert main(["connector", "--nats", NATS]) == 2
    assert "--accounts" in capsys.readouterr().err


def test_when_no_client_id_then_refused_naming_the_variable(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DHAN_CLIENT_ID", raising=False)
    monkeypatch.delenv("DHAN_TOKEN_DIR", raising=False)
    monkeypatch.setenv("DHAN_ACCESS_TOKEN", "eyJ.secret-token-value.sig")
    assert main(["connector", "--nats", NATS, "--accounts", "1100000001"]) == 2
    err = capsys.readouterr().err
    assert "DHAN_CLIENT_ID is not set" in err and "secret-token-value" not in err


def test_when_the_token_is_malformed_then_refused_without_echoing_it(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DHAN_TOKEN_DIR", raising=False)
    monkeypatch.setenv("DHAN_CLIENT_ID", "1100000001")
    monkeypatch.setenv("DHAN_ACCESS_TOKEN", "two secret-words")
    assert main(["connector", "--nats", NATS, "--accounts", "1100000001"]) == 2
    err = capsys.readouterr().err
    assert "DHAN_ACCESS_TOKEN" in err and "secret-words" not in err


@pytest.mark.parametrize("bad", ["0", "-1", "soon"])
def test_when_the_poll_period_is_not_positive_then_refused(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["connector", "--nats", NATS, "--poll-seconds", bad])
    assert refused.value.code == 2 and "--poll-seconds" in capsys.readouterr().err


def test_a_feed_without_postgresql_is_refused_naming_the_flag(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["feed", "--nats", NATS, "--accounts", "1100000001"]) == 2
    assert "PostgreSQL (--db / DATABASE_URL)" in capsys.readouterr().err


def test_a_feed_without_accounts_is_refused_naming_the_flag(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCOUNTS", raising=False)
    assert main(["feed", "--nats", NATS, "--db", "postgresql://u@127.0.0.1:1/x"]) == 2
    assert "--accounts" in capsys.readouterr().err
