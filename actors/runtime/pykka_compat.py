"""Every touch of pykka's private API, in this one module (STYLE §18).

pykka has no public hook for a custom inbox, a pooled run loop or an actor that outlives a
failed ``tell``; the runtime needs all three (``actors/runtime/dispatch.py``). The private names
used are listed in ``PRIVATE_NAMES``; ``pyproject.toml`` pins pykka to ``SUPPORTED`` and
``tests/unit/test_pykka_compat.py`` fails loudly, naming what moved, on any other version.

The rest of the code sees pykka's internals only under public names, through ``Hooks``:

=====================================  ===============================================
pykka (private)                        here (public)
=====================================  ===============================================
``Actor._create_actor_inbox()``        ``Hooks.make_inbox()``
``Actor._handle_receive(message)``     ``Hooks.receive(message)`` (override and call
                                       ``super().receive``; pykka's dispatch of stops,
                                       proxy calls and ``on_receive`` is the default),
                                       and ``Hooks.intercept(message)`` before it
``Actor._handle_failure(*exc_info)``   ``Hooks.handle_failure(*exc_info)`` (default:
                                       pykka's, log and stop; ``quiet_failures``: one
                                       line, then stopped as pykka does)
``Actor._actor_loop_setup()``          ``run_setup(actor)``
``Actor._actor_loop_teardown()``       ``Hooks.teardown()`` (a ``ThreadingActor``'s last
                                       act: answer what is left in the inbox)
``Actor._stop()``                      ``stop_now(actor)``
``Actor._start_actor_loop()``          ``PoolHooks.start_loop()``
``Actor._create_future()``             ``PoolHooks`` (a ``ThreadingFuture``)
``pykka._envelope.Envelope``           ``Envelope`` (an opaque type), ``envelope(message,
                                       reply_to)``, ``contents(envelope)``
``pykka.messages._ActorStop``          ``is_stop(message)``
the body of ``_actor_loop_running``    ``handle_envelope(actor, envelope)``
=====================================  ===============================================
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from types import TracebackType
from typing import Any

import pykka
from pykka import ActorRegistry
from pykka import messages as _messages
from pykka._envelope import Envelope

__all__ = ["PRIVATE_NAMES", "PRIVATE_USE", "SUPPORTED", "Envelope", "Hooks", "PoolHooks",
           "answer_stopped", "contents", "envelope", "handle_envelope", "inbox_of", "is_stop",
           "run_setup", "stop_now", "stopped_of"]

SUPPORTED = "4.5"
"""The pykka minor version these hooks were written against (``pyproject.toml`` pins it)."""

PRIVATE_NAMES = (
    ("pykka._envelope", "Envelope"),
    ("pykka._envelope.Envelope", "message"),
    ("pykka._envelope.Envelope", "reply_to"),
    ("pykka.messages", "_ActorStop"),
    ("pykka.Actor", "_create_actor_inbox"),
    ("pykka.Actor", "_create_future"),
    ("pykka.Actor", "_start_actor_loop"),
    ("pykka.Actor", "_handle_receive"),
    ("pykka.Actor", "_handle_failure"),
    ("pykka.Actor", "_actor_loop_setup"),
    ("pykka.Actor", "_actor_loop_teardown"),
    ("pykka.Actor", "_stop"),
)
"""What this module relies on, for the upgrade test."""

PRIVATE_USE = re.compile(r"pykka\._|\b_ActorStop\b|\._(handle_receive|handle_failure"
                         r"|actor_loop_setup|create_actor_inbox|create_future|start_actor_loop"
                         r"|stop)\b"
                         # an envelope's fields (pykka's private type): read through ``contents``
                         r"|(?<!self)\.reply_to\b|\bEnvelope\("
                         # pykka's own messages (a proxy's call): named here only
                         r"|pykka\.messages\b|\bpykka import messages\b")
"""A line of code that touches pykka's private API: the guard test looks for it in every module
but this one (kept here, so that this is the only module that spells those names)."""

ProxyCall = _messages.ProxyCall
"""The message a proxy's method call sends (what a trace shows of such a call)."""

_log = logging.getLogger("pykka")


def is_stop(message: object) -> bool:
    """Whether ``message`` is pykka's stop request (``ActorRef.stop``)."""
    return isinstance(message, _messages._ActorStop)


def answer_stopped(envelope: Envelope[Any], actor: object) -> None:
    """Answer an ask that reached a stopped actor as pykka's teardown does: a stop is done
    (None), anything else fails with ``ActorDeadError``."""
    message, reply_to = contents(envelope)
    assert reply_to is not None
    if is_stop(message):
        reply_to.set(None)
    else:
        reply_to.set_exception(exc_info=(
            pykka.ActorDeadError,
            pykka.ActorDeadError(f"{actor} stopped before handling the message"), None))


def envelope(message: Any, reply_to: pykka.Future[Any] | None = None) -> Envelope[Any]:
    """What pykka puts in an inbox: ``message``, and the future of an ask (None if told)."""
    return Envelope(message, reply_to=reply_to)


def contents(item: Envelope[Any]) -> tuple[Any, pykka.Future[Any] | None]:
    """An envelope's message and the future of its ask (None if it was told)."""
    return item.message, item.reply_to


def inbox_of(ref: pykka.ActorRef[Any]) -> Any:
    """The inbox of ``ref``'s actor, from outside it (``ActorRef.actor_inbox``): what is put
    there without telling, and how deep it is."""
    return ref.actor_inbox


def stopped_of(ref: pykka.ActorRef[Any]) -> threading.Event:
    """Set once ``ref``'s actor has stopped (``ActorRef.actor_stopped``)."""
    return ref.actor_stopped


def run_setup(actor: pykka.Actor) -> None:
    """What pykka runs before an actor's first message: ``on_start``, failures handled."""
    actor._actor_loop_setup()


def stop_now(actor: pykka.Actor) -> None:
    """Stop ``actor`` at once, without the rest of its inbox (pykka's ``_stop``)."""
    actor._stop()


class Hooks:
    """Mixin in front of a ``pykka.Actor`` class: pykka's private hooks under public names."""

    def make_inbox(self) -> Any:
        """The actor's inbox; defaults to what the pykka actor class makes."""
        return super()._create_actor_inbox()  # type: ignore[misc]

    def _create_actor_inbox(self) -> Any:
        # pykka calls this on the instance from Actor.__init__.
        return self.make_inbox()

    def intercept(self, message: Any) -> bool:
        """Called before pykka's dispatch of every message, a stop or a proxy call too (inside
        ``receive``, so inside its trace record); True: handled here, not dispatched."""
        return False

    def receive(self, message: Any) -> Any:
        """Handle one message: ``intercept``, then pykka's dispatch (stop, proxy calls,
        ``on_receive``)."""
        try:
            if self.intercept(message):
                return None
            return super()._handle_receive(message)  # type: ignore[misc]
        finally:
            # Handled: no longer in flight (a replay's settle, ``actors.runtime.inflight``).
            inflight = getattr(self.actor_inbox, "inflight", None)  # type: ignore[attr-defined]
            if inflight is not None:
                inflight.done()

    def _handle_receive(self, message: Any) -> Any:
        return self.receive(message)

    quiet_failures: tuple[type[BaseException], ...] = ()
    """Failures expected in the course of things (a lease lost): ``handle_failure`` logs one
    line for them, not pykka's ERROR with the traceback, and stops the actor all the same."""

    def handle_failure(self, exception_type: type[BaseException] | None,
                       exception_value: BaseException | None,
                       traceback: TracebackType | None) -> None:
        """A told message's handler raised (or ``on_start``/``on_stop`` did); pykka's default
        logs it and stops the actor (``quiet_failures``: one WARNING line, no traceback)."""
        if isinstance(exception_value, self.quiet_failures):
            _log.warning(f"{self} stopped: {type(exception_value).__name__}: {exception_value}")
            ActorRegistry.unregister(self.actor_ref)  # type: ignore[attr-defined]
            self.actor_stopped.set()  # type: ignore[attr-defined]
            return
        super()._handle_failure(exception_type, exception_value, traceback)  # type: ignore[misc]

    def _handle_failure(self, exception_type: type[BaseException] | None,
                        exception_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.handle_failure(exception_type, exception_value, traceback)

    def teardown(self) -> None:
        """Run by a ``ThreadingActor``'s thread once the actor stopped, its last act; pykka's
        default answers the asks left in the inbox (a stop with None, others with
        ``ActorDeadError``) and drops told messages."""
        super()._actor_loop_teardown()  # type: ignore[misc]

    def _actor_loop_teardown(self) -> None:
        self.teardown()


class PoolHooks(Hooks):
    """For an actor type without a thread of its own: pykka's start hook under a public name
    and a threading future (the pooled actor answers asks from worker threads)."""

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def start_loop(self) -> None:
        raise NotImplementedError("a pooled actor type schedules its mailbox here")

    def _start_actor_loop(self) -> None:
        self.start_loop()


def handle_envelope(actor: Any, item: Envelope[Any]) -> None:
    """One message, with the exact failure semantics of pykka's ``_actor_loop_running``: an ask
    gets the exception back; a raising tell is handled as a failure (``on_failure`` follows);
    a ``BaseException`` stops every actor."""
    try:
        response = actor._handle_receive(item.message)
        if item.reply_to is not None:
            item.reply_to.set(response)
    except Exception:
        if item.reply_to is not None:
            _log.info(f"Exception returned from {actor} to caller:", exc_info=sys.exc_info())
            item.reply_to.set_exception()
        else:
            actor._handle_failure(*sys.exc_info())
            try:
                actor.on_failure(*sys.exc_info())
            except Exception:
                actor._handle_failure(*sys.exc_info())
    except BaseException:
        _log.debug(f"{sys.exc_info()[1]!r} in {actor}. Stopping all actors.")
        actor._stop()
        ActorRegistry.stop_all(block=False)
