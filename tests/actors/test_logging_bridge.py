"""pykka logs actor crashes through the standard library: they must reach loguru."""

from __future__ import annotations

import logging

from loguru import logger

from actors.runtime.logging_bridge import InterceptHandler, route_stdlib_logging


def test_when_pykka_logs_an_error_then_loguru_receives_it_once() -> None:
    seen: list[str] = []
    sink = logger.add(lambda message: seen.append(str(message)), level="ERROR")
    try:
        route_stdlib_logging()
        route_stdlib_logging()  # idempotent: one handler, one line
        logging.getLogger("pykka").error("Unhandled exception in TrackerActor")
    finally:
        logger.remove(sink)
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, InterceptHandler)]:
            root.removeHandler(handler)
    assert sum("Unhandled exception in TrackerActor" in line for line in seen) == 1
