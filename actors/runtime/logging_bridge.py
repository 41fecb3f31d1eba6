"""Route the standard library's logging (pykka logs actor crashes there) into loguru."""

from __future__ import annotations

import logging

from loguru import logger


class InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def route_stdlib_logging(level: int = logging.INFO) -> None:
    """Idempotent: installs one handler on the root logger."""
    root = logging.getLogger()
    if not any(isinstance(handler, InterceptHandler) for handler in root.handlers):
        root.addHandler(InterceptHandler())
    root.setLevel(level)
