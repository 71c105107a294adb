"""Child processes that do not outlive whoever started them."""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from collections.abc import Callable

__all__ = ["parent_death_signal_hook"]

_PR_SET_PDEATHSIG = 1


def parent_death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies.

    Only from the main thread: the signal fires when the *thread* that forked exits, so a
    child started from a worker thread (``asyncio.to_thread``) would be killed when that
    thread ends. ``prctl`` is resolved here, in the parent, so the child only calls it.
    Returns None where it does not apply (not Linux, not the main thread).
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return hook
