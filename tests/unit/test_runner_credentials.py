"""A runner's credentials per account (``run.runner_credentials``): one token file per account in
``token_dir``, each checked before anything connects, its errors naming the file and never its
content; without ``token_dir``, one token for every account."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings, load_settings
from run import InputError, runner_credentials

GOOD_A = "eyJhbGciOiJIUzI1NiJ9.account-a-token.sig"
GOOD_B = "eyJhbGciOiJIUzI1NiJ9.account-b-token.sig"


def settings_with(token_dir: Path | None, **environ: str) -> Settings:
    env = {"DHAN_CLIENT_ID": "1000000001", **environ}
    if token_dir is not None:
        env["DHAN_TOKEN_DIR"] = str(token_dir)
    return load_settings(config_file=None, environ=env, flags={})


def test_when_token_dir_set_then_each_account_reads_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "1100000001").write_text(GOOD_A + "\n", encoding="utf-8")
    (tmp_path / "1100000002").write_text(GOOD_B, encoding="utf-8")
    settings = settings_with(tmp_path)
    tokens = runner_credentials(settings, ["1100000001", "1100000002"], {})
    assert tokens["1100000001"].current().reveal() == GOOD_A
    assert tokens["1100000002"].current().reveal() == GOOD_B


def test_when_token_dir_unset_then_every_account_shares_the_one_token() -> None:
    settings = settings_with(None)
    tokens = runner_credentials(settings, ["a", "b"], {"DHAN_ACCESS_TOKEN": GOOD_A})
    assert tokens["a"] is tokens["b"] and tokens["a"].current().reveal() == GOOD_A


@pytest.mark.parametrize(("content", "expected"), [
    (None, "no token for account ******0002: expected the file"),
    ("", "account ******0002: its token file cannot be read or is empty"),
    ("two words", "account ******0002: its token file is malformed"),
])
def test_when_an_accounts_token_file_is_missing_or_bad_then_a_clear_error_without_it(
        tmp_path: Path, content: str | None, expected: str) -> None:
    (tmp_path / "1100000001").write_text(GOOD_A, encoding="utf-8")
    if content is not None:
        (tmp_path / "1100000002").write_text(content, encoding="utf-8")
    settings = settings_with(tmp_path)
    with pytest.raises(InputError) as raised:
        runner_credentials(settings, ["1100000001", "1100000002"], {})
    message = str(raised.value)
    assert expected in message
    assert GOOD_A not in message and "two words" not in message


def test_when_token_dir_is_not_a_directory_then_refused(tmp_path: Path) -> None:
    settings = settings_with(tmp_path / "missing")
    with pytest.raises(InputError, match="is not a directory"):
        runner_credentials(settings, ["a"], {})
