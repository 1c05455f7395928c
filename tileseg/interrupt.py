"""Ctrl-C and SIGTERM for a job: the signal becomes an `Interrupted` exception in the main thread, so the
job can stop where it is, shut Ray down, release its lock and say what it left, instead of dying mid-way.

    with interruptible():        # SIGINT and SIGTERM raise Interrupted(signum) (once)
        ...
        hold()                   # a step that must not be cut short: a signal is only noted
        rearm()                  # raise again (and put the handlers back: ray.init sets its own SIGTERM one)

A second signal while the first is being handled (or one during a held step) is noted on stderr and does
not raise there, so the clean shutdown is not itself cut short; a held step's signal raises at `rearm()`.
Outside the main thread nothing is installed.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The job was asked to stop by a signal; `exit_status` is the shell's 128 + signal number."""

    def __init__(self, signum: int, message: str = "interrupted"):
        super().__init__(message)
        self.signum = int(signum)
        self.message = message
        self.summary: Any = None  # what the job recorded before stopping, when it got that far

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message


class _State:
    active = False  # inside interruptible()
    armed = True  # the next signal raises
    pending: int | None = None  # a signal that came while held


def _handler(signum: int, frame: FrameType | None) -> None:
    if _State.armed:
        _State.armed = False
        raise Interrupted(signum)
    _State.pending = _State.pending or signum
    print(f"\n{signal.Signals(signum).name}: stopping cleanly, please wait", file=sys.stderr, flush=True)


def hold() -> None:
    """Until `rearm()`, a signal is noted but does not raise (for steps that must not be cut short)."""
    if _State.active:
        _State.armed = False


def rearm() -> None:
    """Let the next signal raise again (one that came while held raises now), and put the handlers back if
    something replaced them (ray.init does)."""
    if not _State.active:
        return
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    if _State.pending:  # a signal came while held: it raises now
        signum, _State.pending = _State.pending, None
        raise Interrupted(signum)
    _State.armed = True


@contextmanager
def interruptible() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise Interrupted in the main thread; the caller's handlers come back
    afterwards. A nested use (or one outside the main thread) changes nothing."""
    if _State.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _State.active, _State.armed, _State.pending = True, True, None
    try:
        for signum in SIGNALS:
            signal.signal(signum, _handler)
        yield
    finally:
        _State.active = False
        for signum, previous in saved.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
