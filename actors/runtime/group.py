"""A singleton that gathers the messages of one kind waiting in its mailbox and handles them in
one go (``GroupWriter``): the stop writer and the exit-intent writer store many positions in one
write this way.

``intercept`` keeps each message of ``kind`` and, when the mailbox holds nothing more, calls
``write`` with everything kept; any other message (a settle's question, a proxy call, a stop)
first writes what was kept, so mailbox order holds. ``write`` runs again at the stop."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar, cast

from loguru import logger

from actors.protocol import Snapshot
from actors.runtime.dispatch import SingletonActor

M = TypeVar("M")


class GroupWriter(SingletonActor, Generic[M]):
    kind: ClassVar[type]
    """The messages gathered; ``write`` takes every one kept since the last."""
    label: ClassVar[str] = "group writer"

    def __init__(self) -> None:
        super().__init__()
        self._due: list[M] = []

    def intercept(self, message: Any) -> bool:
        if not isinstance(message, self.kind):
            self.flush()  # a question, a proxy call or a stop comes after what was told before
            return False
        self._due.append(cast(M, message))
        if self.actor_inbox.empty() and not self.more_coming():
            self.flush()  # the last of those waiting: handle them all at once
        return True

    def more_coming(self) -> bool:
        """Asked when the mailbox is empty and messages are kept: True when another has come
        meanwhile, to be kept with them (the write waits for it). By default none is waited
        for."""
        return False

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Snapshot):  # a settle's question: answered once written
            logger.warning("{} ignores {}", self.label, type(message).__name__)
        return None

    def on_stop(self) -> None:
        self.flush()

    def flush(self) -> None:
        due, self._due = self._due, []
        if due:
            self.write(due)

    def write(self, due: list[M]) -> None:
        raise NotImplementedError
