"""SIGTERM handled like Ctrl-C: the run stops, its rows are kept, it says ``cancelled``.

``sigterm_as_interrupt()`` (used by ``alpha train``) installs a SIGTERM handler
in the main thread. While a ``Trainer.fit`` loop runs in the main thread the
first SIGTERM only *requests* a stop: the current step finishes, its row is
recorded, and the loop ends as if Ctrl-C had been pressed there (status
``interrupted``). Anywhere else (setup, a search waiting on its candidate
threads) the handler raises ``Terminated``, a ``KeyboardInterrupt``, so every
existing Ctrl-C path applies. A second SIGTERM during the loop raises at once,
and so does the first one when the step has not ended within ``STOP_GRACE_S``
(a huge step must not delay the stop for minutes); one that arrives while the
run is already shutting down is ignored, so the shutdown (flushing the lake)
is not cut short. Exit code 128 + 15 = 143.

Without the context manager nothing is installed: Prefect and other hosts keep
their own SIGTERM handling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

#: Exit code of a process stopped by SIGTERM (128 + signal number), as shells report it.
EXIT_SIGTERM = 128 + signal.SIGTERM
#: Seconds the current step may take to finish after a SIGTERM before it is interrupted.
STOP_GRACE_S = 10.0


class Terminated(KeyboardInterrupt):
    """Raised in the main thread for a SIGTERM."""


class _State:
    installed = False
    in_loop = False  # a fit() loop runs in the main thread
    requested = False  # a stop was requested while in the loop
    received = False  # any SIGTERM arrived while installed
    timer: threading.Timer | None = None


_state = _State()


def _handler(signum: int, frame: object) -> None:
    first = not _state.received
    _state.received = True
    if _state.in_loop and not _state.requested:
        _state.requested = True  # the loop stops after this step's row is recorded
        _state.timer = threading.Timer(STOP_GRACE_S, _escalate)
        _state.timer.daemon = True
        _state.timer.start()
        return
    if first or _state.in_loop:
        raise Terminated(signum)
    # Already stopping (flushing the lake, writing the run row): let it finish.


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Install the SIGTERM handler for the duration (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    _state.installed, _state.received, _state.requested = True, False, False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _state.installed = _state.requested = False


def _escalate() -> None:
    """The step did not end in time: a second SIGTERM interrupts it."""
    if _state.in_loop:
        os.kill(os.getpid(), signal.SIGTERM)


def received() -> bool:
    """True when a SIGTERM arrived inside the current (or last) ``sigterm_as_interrupt``."""
    return _state.received


@contextlib.contextmanager
def training_loop() -> Iterator[None]:
    """Marks a ``fit()`` loop: inside it, the first SIGTERM is a stop request."""
    main = threading.current_thread() is threading.main_thread()
    if not (main and _state.installed):
        yield
        return
    _state.in_loop, _state.requested = True, False
    try:
        yield
    finally:
        _state.in_loop = False
        if _state.timer is not None:
            _state.timer.cancel()
            _state.timer = None


def stop_requested() -> bool:
    """Checked once per step by the trainer (two attribute reads)."""
    return _state.requested and _state.in_loop
