"""The record of operator actions (SPEC §12): who, from where, when, what, and the outcome.

One JSON line per action, appended to ``operator-actions.jsonl`` under the data directory and
logged; the commands themselves are traced by the actors that handle them.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from loguru import logger


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.recent: list[dict[str, Any]] = []
        """The last actions, newest last (shown in the page)."""

    def record(self, at: datetime, operator: str, address: str, action: str,
               target: str | None, outcome: str, ok: bool) -> dict[str, Any]:
        entry = {"at": at.isoformat(), "operator": operator, "address": address,
                 "action": action, "target": target, "ok": ok, "outcome": outcome}
        logger.bind(operator=operator).warning("operator action {} {} from {}: {}", action,
                                               target or "", address, outcome)
        with self._lock:
            self.recent = [*self.recent[-49:], entry]
            if self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    with self.path.open("a", encoding="utf-8") as out:
                        out.write(json.dumps(entry) + "\n")
                except OSError as error:
                    logger.error("operator action not written to {}: {}", self.path,
                                 error.strerror)
        return entry
