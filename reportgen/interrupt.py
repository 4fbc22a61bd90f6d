"""Ctrl-C that is not lost.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT comes. Raised inside a finaliser or a
callback that C code calls, it is printed and dropped ("Exception ignored in …") and the build runs on: seen
once in CI, a build that went on from feature vis to the explorers after Ctrl-C. `handling_ctrl_c()` (the CLI)
remembers the signal; `check()` (the build's timer calls it after every phase and layer) raises it again.
"""

import signal
import threading
from contextlib import contextmanager

_requested = False


def _on_sigint(signum, frame):
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextmanager
def handling_ctrl_c():
    """Within: SIGINT raises KeyboardInterrupt as usual, and is remembered for `check()`."""
    global _requested
    if threading.current_thread() is not threading.main_thread():   # signals are the main thread's only
        yield
        return
    _requested = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came, even where its first raise was swallowed."""
    if _requested:
        raise KeyboardInterrupt
