"""The transport port: order updates per partition, at least once and de-duplicated, and prices
per instrument, at most once (the newest price matters, a lost one is replaced by the next).

Subjects (``namespace`` prefixes them, so test runs and deployments do not mix):

- ``orders.pNNN``: an account's order updates on its partition's subject
  (``models.partitions``); each carries a message id (the connector's, stable across a
  re-send) by which the transport drops a repeat. A runner pulls its partitions' updates and
  acks each only once the state change it caused is stored: an update that was pulled and not
  acked (the runner died) is delivered again, to the partition's next owner.
- ``prices.<segment>.<security>``: each runner subscribes to the instruments its positions
  need and unsubscribes when they close.

Error tree::

    TransportError     the transport failed (unreachable, refused, timed out); retry later
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from models.partitions import partition_name, partition_of

PriceHandler = Callable[[bytes], None]


class TransportError(Exception):
    """The transport could not do what was asked; nothing is known to have been sent."""


def _token(value: str) -> str:
    if not value or any(c in value for c in ".*> \t\r\n"):
        raise ValueError(f"{value!r} cannot be a subject token")
    return value


def _prefixed(namespace: str, subject: str) -> str:
    return f"{_token(namespace)}.{subject}" if namespace else subject


def order_subject(partition: int, namespace: str = "") -> str:
    return _prefixed(namespace, f"orders.{partition_name(partition)}")


def orders_wildcard(namespace: str = "") -> str:
    return _prefixed(namespace, "orders.>")


def price_subject(segment: str, security_id: str, namespace: str = "") -> str:
    return _prefixed(namespace, f"prices.{_token(segment)}.{_token(security_id)}")


class Delivery(Protocol):
    """One order update handed to a runner; ``ack`` once its state change is stored."""

    @property
    def partition(self) -> int: ...

    @property
    def subject(self) -> str: ...

    @property
    def msg_id(self) -> str: ...

    @property
    def account(self) -> str:
        """The account the update belongs to (as published)."""

    @property
    def data(self) -> bytes: ...

    @property
    def redelivered(self) -> bool:
        """Delivered before and not acked then (its first owner died, or asked again)."""

    def ack(self) -> None:
        """Done with it: never delivered again."""

    def nak(self) -> None:
        """Not done: deliver it again (the state change could not be stored)."""


class Subscription(Protocol):
    def unsubscribe(self) -> None: ...


class Transport(Protocol):
    def publish_order_update(self, account_id: str, msg_id: str, data: bytes) -> bool:
        """Publish on the account's partition; durable when this returns. False when a message
        with ``msg_id`` was published before (a repeat, dropped)."""

    def pull_order_updates(self, partition: int, *, batch: int = 100,
                           timeout: float = 1.0) -> list[Delivery]:
        """Up to ``batch`` updates of ``partition`` in publishing order, waiting up to
        ``timeout`` for the first; ``[]`` when none came."""

    def waiting_order_updates(self, partition: int) -> int:
        """How many updates of ``partition`` the stream holds not yet acknowledged (never
        delivered, or delivered and not acknowledged): 0 means a pull now would bring none,
        so a partition just started need not wait for one (``Runner._drain``)."""

    def publish_price(self, segment: str, security_id: str, data: bytes) -> None: ...

    def subscribe_prices(self, segment: str, security_id: str,
                         handler: PriceHandler) -> Subscription:
        """Call ``handler`` with each price of the instrument published from now on (on the
        transport's thread: hand it on, do not work in it)."""

    def close(self) -> None: ...


def subject_of_account(account_id: str, namespace: str = "") -> str:
    """The subject an account's order updates travel on."""
    return order_subject(partition_of(account_id), namespace)
