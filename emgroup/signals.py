"""Signals that end a run: SIGTERM handled like Ctrl-C, and a block during which neither arrives.

Every emgroup command runs inside :func:`sigterm_interrupts`, so a job scheduler's SIGTERM unwinds it like Ctrl-C:
temporary files are deleted and the command says it was interrupted (exit status 130).
"""

import contextlib
import signal
import threading


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM raises KeyboardInterrupt (like Ctrl-C) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held():
    """Within the block, SIGINT and SIGTERM wait (main thread of a POSIX system); they arrive at its end."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
