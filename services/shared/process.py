"""Child processes that do not outlive whoever started them."""

from __future__ import annotations

import ctypes
import shutil
import signal
import sys
import threading
from collections.abc import Callable

__all__ = ["parent_death_argv", "parent_death_signal_hook"]

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


def parent_death_argv() -> list[str]:
    """An argv prefix with the same effect as :func:`parent_death_signal_hook`, for
    processes started while other threads run (gRPC's, for one).

    A ``preexec_fn`` runs Python in the forked child before ``exec``, which is unsafe in
    a multi-threaded parent (the child can crash or deadlock); util-linux's ``setpriv
    --pdeathsig`` sets the signal and then execs the program, with no Python in between.
    Empty where it does not apply (not Linux, not the main thread, no ``setpriv``).
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
