"""Accounts (SPEC §13): the id every position, order, exit attempt, kill switch and metric
carries.

An account id is fixed per ``System``: a live session's is its DhanHQ client id
(``dhanClientId``), a paper session's or a replay's ``DEFAULT_ACCOUNT`` unless configured.
It travels in store keys, Redis keys, metric labels and (later) NATS subjects, so it is
restricted to letters, digits, ``_`` and ``-`` (no ``.``, a NATS subject's separator; no
space, quote or ``:``), 1 to 64 characters, starting with a letter or digit.
"""

from __future__ import annotations

import re

DEFAULT_ACCOUNT = "paper"
"""The account of a paper session or a replay that names none, and of every row stored before
accounts existed (schema version 3)."""

_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class AccountError(ValueError):
    """A malformed account id; the message says what is allowed (and quotes the id only when
    it is short and printable)."""


def check_account(account_id: str) -> str:
    """``account_id`` when it is well formed; ``AccountError`` otherwise."""
    if _ACCOUNT.fullmatch(account_id):
        return account_id
    shown = f" {account_id!r}" if len(account_id) <= 80 and account_id.isprintable() else ""
    raise AccountError(f"malformed account id{shown}: 1 to 64 letters, digits, '_' or '-', "
                       "starting with a letter or digit")


def shown(account_id: str) -> str:
    """The account as a status line or a log names it: a DhanHQ client id (digits) masked
    but for its last four, as the live session logs it; any other id as is."""
    if account_id.isdigit():
        return "*" * max(0, len(account_id) - 4) + account_id[-4:]
    return account_id
