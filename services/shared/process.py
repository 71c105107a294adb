"""Child processes that do not outlive whoever started them."""

from __future__ import annotations

import shutil
import sys
import threading

__all__ = ["mark_long_lived", "parent_death_argv", "unmark_long_lived"]

_LONG_LIVED: set[int] = set()  # thread idents (see mark_long_lived)


def mark_long_lived() -> None:
    """Declare that the calling thread lives as long as the children it starts.

    Linux sends the parent-death signal when the *thread* that forked exits, so children
    get one only when started from the main thread or from a thread marked here (the
    launcher's supervisor, which restarts crashed processes and ends only after they
    were stopped). The mark is removed when the thread calls :func:`unmark_long_lived`.
    """
    _LONG_LIVED.add(threading.get_ident())


def unmark_long_lived() -> None:
    """Undo :func:`mark_long_lived` for the calling thread (call it before the thread ends)."""
    _LONG_LIVED.discard(threading.get_ident())


def _may_set_parent_death() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return threading.current_thread() is threading.main_thread() or threading.get_ident() in _LONG_LIVED


def parent_death_argv() -> list[str]:
    """An argv prefix asking Linux to SIGTERM the child when its parent dies.

    Only from the main thread (or one marked with :func:`mark_long_lived`): the signal
    fires when the *thread* that forked exits. Used instead of a ``preexec_fn`` calling
    ``prctl``: a ``preexec_fn`` runs Python in the forked child before ``exec``, which is unsafe in
    a multi-threaded parent (the child can crash or deadlock); util-linux's ``setpriv
    --pdeathsig`` sets the signal and then execs the program, with no Python in between.
    Empty where it does not apply (not Linux, not the main thread, no ``setpriv``).
    """
    if not _may_set_parent_death():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
