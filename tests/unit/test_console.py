"""The live status line shows what a trader watches."""

from __future__ import annotations

from decimal import Decimal

from app.console import status_line


def test_status_line_shows_state_positions_pnl_price_age_exits_and_alerts() -> None:
    line = status_line({"trading_state": "HALTED", "positions": {"ACTIVE": 3, "EXITING": 1,
                                                                 "EXITED": 2},
                        "exits_by_reason": {"STOP_LOSS": 2}, "day_net": Decimal("-1234.5"),
                        "unprotected": ["P1"], "quarantined": [], "max_price_age_s": 2.25,
                        "metrics": {"actor_restarts": 4},
                        "books": "books: DIFFER NSE_FNO:1/I broker +100 ours +0"}, "10:31:07")
    assert line == ("[10:31:07] HALTED | open 4 (exiting 1) | exited 2 | day net -1234.50 | "
                    "oldest price 2.2s | exits: STOP_LOSS 2 | unprotected 1 | quarantined 0 | "
                    "restarts 4 | books: DIFFER NSE_FNO:1/I broker +100 ours +0")


def test_status_line_shows_order_frames_waiting_for_the_store_only_when_there_are_some() -> None:
    base = {"trading_state": "RUNNING", "positions": {}, "exits_by_reason": {},
            "unprotected": [], "quarantined": []}
    waiting = status_line({**base, "metrics": {"unstored_frames": 12}}, "10:00:00")
    assert waiting.endswith(" | order frames not yet stored 12")
    assert "not yet stored" not in status_line({**base, "metrics": {"unstored_frames": 0}},
                                               "10:00:00")


def test_status_line_names_the_account_and_masks_a_client_id() -> None:
    base = {"trading_state": "RUNNING", "positions": {}, "exits_by_reason": {},
            "unprotected": [], "quarantined": [], "metrics": {}}
    assert status_line({**base, "account": "desk-b"}, "10:00:00").startswith(
        "[10:00:00] account desk-b | RUNNING | ")
    assert status_line({**base, "account": "1100001234"}, "10:00:00").startswith(
        "[10:00:00] account ******1234 | RUNNING | ")
