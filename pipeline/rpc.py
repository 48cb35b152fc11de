"""TVM RPC for tuning: a tracker on this host, and for the `local` board an RPC server beside it.

MetaSchedule's RPCRunner asks the tracker for a board by key and times each candidate there, so the
same runner serves a real board once its `python -m tvm.exec.rpc_server` registers with the tracker.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import PipelineError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RpcBoard:
    """Where MetaSchedule's RPCRunner finds the board: the tracker's address and the board's key."""

    tracker_host: str
    tracker_port: int
    key: str


@contextmanager
def local_rpc_board(key: str, timeout_s: float = 60.0) -> Iterator[RpcBoard]:
    """A tracker and one RPC server on loopback, both children of this process and stopped on exit."""
    tracker_port, server_port = _free_port(), _free_port()
    tracker = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", LOOPBACK, "--silent"]
    server = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", LOOPBACK, "--key", key, "--silent"]
    with _child([*tracker, "--port", str(tracker_port), "--port-end", str(tracker_port + 1)], "RPC tracker"):
        _wait_for(lambda: _free_servers(tracker_port, key) is not None, timeout_s, "the RPC tracker to start")
        with _child(
            [*server, "--tracker", f"{LOOPBACK}:{tracker_port}", "--port", str(server_port),
             "--port-end", str(server_port + 1)],
            "RPC server",
        ):
            _wait_for(lambda: (_free_servers(tracker_port, key) or 0) >= 1, timeout_s, f"an RPC server '{key}'")
            yield RpcBoard(LOOPBACK, tracker_port, key)


@contextmanager
def _child(command: list[str], what: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, so stopping it also stops the workers it forks."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _free_servers(tracker_port: int, key: str) -> int | None:
    """Idle servers registered under `key`, or None while the tracker does not answer."""
    from tvm import rpc

    try:
        socket.create_connection((LOOPBACK, tracker_port), timeout=1.0).close()  # TVM would log and retry
        summary = rpc.connect_tracker(LOOPBACK, tracker_port).summary()
    except Exception:  # TVM raises its own error types while the tracker is not up yet
        return None
    return int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def _wait_for(ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise PipelineError(f"timed out after {timeout_s:.0f} s waiting for {what}", "check that TVM runs here")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])
