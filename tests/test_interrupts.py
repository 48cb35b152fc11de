"""Ctrl-C during a board command is raised at a safe point of ours, never inside a library's locking."""

import os
import signal
import threading

import pytest

from pipeline.interrupts import deferred_interrupts, raise_if_interrupted


def press_ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_inside_the_block_waits_for_the_safe_point() -> None:
    reached_safe_point = False
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        press_ctrl_c()
        reached_safe_point = True
        raise_if_interrupted()
    assert reached_safe_point


def test_a_ctrl_c_the_block_did_not_act_on_is_raised_when_it_ends() -> None:
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        press_ctrl_c()


def test_after_the_block_ctrl_c_raises_at_once_again() -> None:
    with deferred_interrupts():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        press_ctrl_c()
        raise AssertionError("the interrupt should have been raised already")


def test_a_thread_that_pumps_a_background_command_is_not_interrupted() -> None:
    raised: list[BaseException] = []

    def pump() -> None:
        try:
            raise_if_interrupted()
        except BaseException as exc:
            raised.append(exc)

    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        press_ctrl_c()
        worker = threading.Thread(target=pump)
        worker.start()
        worker.join()
        assert raised == []
        raise_if_interrupted()
