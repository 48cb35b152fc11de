"""Ctrl-C at a safe point. Python raises KeyboardInterrupt wherever the main thread happens to be; in the
middle of paramiko's or rich's bookkeeping (a run on the board reports progress thousands of times a
second) that can leave a lock held, and the clean exit then waits on it forever. Inside
`deferred_interrupts()`, SIGINT only takes note, and the loop that polls the board raises
KeyboardInterrupt from `raise_if_interrupted()`, where no library lock is held."""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_pressed = threading.Event()


def _take_note(number: int, frame: FrameType | None) -> None:
    _pressed.set()


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Defer Ctrl-C for the block; a Ctrl-C the block did not act on is raised when it ends. Only the
    main thread's default handler is replaced: an inner block, a worker thread, a process that ignores
    SIGINT or one with a handler of its own (tuning) keep what they have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return
    _pressed.clear()
    signal.signal(signal.SIGINT, _take_note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    raise_if_interrupted()


def raise_if_interrupted() -> None:
    """The safe point: raise the Ctrl-C that arrived since the block began (in the main thread only,
    where Python delivers it; a thread that pumps a background command goes on)."""
    if _pressed.is_set() and threading.current_thread() is threading.main_thread():
        _pressed.clear()
        raise KeyboardInterrupt
