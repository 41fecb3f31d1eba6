"""The DhanHQ token: read from env or file, expiry without verifying, never shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from loguru import logger

from broker.dhan.token import (
    Refusal,
    Secret,
    TokenError,
    TokenSource,
    expires_at,
    expiry_warning_due,
    scrub,
    time_left,
)

NOW = datetime(2026, 1, 5, 4, 0, tzinfo=UTC)


def make_token(exp: datetime | None) -> str:
    claims = {"iss": "dhan", "dhanClientId": "1000000001"}
    if exp is not None:
        claims["exp"] = int(exp.timestamp())  # type: ignore[assignment]
    return jwt.encode(claims, "a-test-key-that-is-not-dhans-own-32b", algorithm="HS256")


def test_expiry_is_read_without_verifying_the_signature() -> None:
    token = Secret(make_token(NOW + timedelta(hours=2)))
    assert expires_at(token) == NOW + timedelta(hours=2)
    assert time_left(token, NOW) == timedelta(hours=2)
    assert not expiry_warning_due(token, NOW)
    assert expiry_warning_due(token, NOW + timedelta(minutes=91))
    assert expiry_warning_due(token, NOW + timedelta(hours=3))  # expired


def test_a_token_without_exp_or_not_a_jwt_has_no_expiry() -> None:
    assert expires_at(Secret(make_token(None))) is None
    assert expires_at(Secret("plain-opaque-token")) is None
    assert not expiry_warning_due(Secret("x"), NOW)


def test_secret_never_shows_its_value() -> None:
    secret = Secret("eyJhbGciOi.secret.value")
    assert "secret" not in str(secret) and "secret" not in repr(secret)
    assert f"{secret}" == "***" and secret.reveal() == "eyJhbGciOi.secret.value"


def test_source_prefers_the_environment_then_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert TokenSource(path=path, environ={}).current().reveal() == "from-file"
    source = TokenSource(path=path, environ={"DHAN_ACCESS_TOKEN": "from-env"})
    assert source.current().reveal() == "from-env"


def test_reload_rereads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one")
    source = TokenSource(path=path, environ={})
    assert source.current().reveal() == "one"
    path.write_text("two")
    assert source.current().reveal() == "one"
    assert source.reload().reveal() == "two"


def test_missing_token_is_a_clear_error_without_the_value(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="DHAN_ACCESS_TOKEN"):
        TokenSource(environ={}).current()
    with pytest.raises(TokenError, match="cannot read the token file"):
        TokenSource(path=tmp_path / "absent", environ={}).current()
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(TokenError, match="is empty"):
        TokenSource(path=tmp_path / "empty", environ={}).current()


def test_scrub_removes_the_token_and_urls_embedding_it() -> None:
    token = "eyJ0eXAi.payload.sig"
    text = (f"failed wss://api-feed.dhan.co?version=2&token={token}&clientId=1 and "
            f"header {token}; other ws://x?access_token=abc")
    cleaned = scrub(text, [Secret(token)])
    assert token not in cleaned and "abc" not in cleaned
    assert "token=***&clientId=1" in cleaned and "access_token=***" in cleaned


def test_an_expiring_token_is_warned_about_once() -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="WARNING")
    try:
        source = TokenSource(token=make_token(NOW + timedelta(minutes=45)))
        assert source.warn_if_expiring(NOW) == timedelta(minutes=45)
        assert lines == []
        assert source.warn_if_expiring(NOW + timedelta(minutes=20)) == timedelta(minutes=25)
        source.warn_if_expiring(NOW + timedelta(minutes=21))
        assert len(lines) == 1 and "expires in 25 min" in lines[0]
        assert source.current().reveal() not in lines[0]
    finally:
        logger.remove(sink)


def test_a_refusal_holds_until_the_source_gives_another_token() -> None:
    tokens = TokenSource(token="first")
    refusal = Refusal(tokens)
    assert not refusal.active and not refusal.cleared_by(Secret("other"))  # none refused
    assert refusal.refuse() and not refusal.refuse()  # said once
    assert refusal.active and not refusal.cleared_by(Secret("first"))  # the same one again
    assert refusal.cleared_by(Secret("second")) and not refusal.active


def test_a_token_that_cannot_be_read_counts_as_refused(tmp_path: Path) -> None:
    refusal = Refusal(TokenSource(path=tmp_path / "missing"))
    assert refusal.refuse() and refusal.active
