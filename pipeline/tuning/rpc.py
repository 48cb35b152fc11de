"""TVM RPC for tuning: a tracker on this host and the board's `python -m tvm.exec.rpc_server`, started
on the board over SSH, registered with the tracker under the board's name.

MetaSchedule's RPCRunner asks the tracker for a board by key and times each candidate there. The
board connects to the tracker at this host's address as the board sees it (the local end of the SSH
connection), and the runner then connects to the server's port on the board: a real board needs both
directions open (docs/records.md, "Tuning a fleet"). The server runs in its own process group on the
board and is killed with all its workers when tuning ends, fails or is interrupted.
"""

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline.board.remote import Background
from pipeline.board.session import Board
from pipeline.board.tuning_python import BoardPython
from pipeline.errors import PipelineError

TRACKER_START_S = 60.0


@dataclass(frozen=True)
class RpcBoard:
    """Where MetaSchedule's RPCRunner finds the board: the tracker's address and the board's key."""

    tracker_host: str
    tracker_port: int
    key: str


@contextmanager
def board_rpc(board: Board, python: BoardPython) -> Iterator[RpcBoard]:
    """A tracker on this host and one RPC server on the board registered with it under the board's name,
    on the profile's cores and threads, as a deploy runs; both are stopped when the block ends."""
    key, start_timeout_s = board.name, board.profile.tuning.start_timeout_s
    host = board.address_seen_by_board()
    port = _free_port(host)
    tracker = [
        sys.executable,
        "-m",
        "tvm.exec.rpc_tracker",
        "--host",
        host,
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
        "--silent",
    ]
    with _child(tracker) as process:
        _wait_for(
            lambda: _free_servers(host, port, key) is not None,
            lambda: _tracker_problem(process, host, port),
            TRACKER_START_S,
            PipelineError(
                f"the RPC tracker on {host}:{port} did not answer within {TRACKER_START_S:.0f} s",
                "check the load on this host and retry",
            ),
        )
        arguments = _server_arguments(board, python, host, port)
        with board.background_runtime(python.command, arguments, prefix=python.under_prefix) as server:
            _wait_for(
                lambda: (_free_servers(host, port, key) or 0) >= 1,
                lambda: _server_problem(server, key),
                start_timeout_s,
                PipelineError(
                    f"the board's RPC server did not register with the tracker on {host}:{port} within "
                    f"{start_timeout_s:g} s",
                    "check that the board can open a TCP connection to this host "
                    "(firewall), or raise tuning.start_timeout_s in the board profile",
                ),
            )
            yield RpcBoard(host, port, key)


def _server_arguments(board: Board, python: BoardPython, host: str, port: int) -> list[str]:
    """The board listens on loopback when it is this machine, else on every interface."""
    listen = host if ipaddress.ip_address(host).is_loopback else "0.0.0.0"
    words = [
        "-m",
        "tvm.exec.rpc_server",
        "--tracker",
        f"{host}:{port}",
        "--key",
        board.name,
        "--host",
        listen,
        "--silent",
    ]
    if python.load_library is not None:
        words += ["--load-library", python.load_library]
    return words


@contextmanager
def _child(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
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


def _free_servers(host: str, port: int, key: str) -> int | None:
    """Idle servers registered under `key`, or None while the tracker does not answer."""
    from tvm import rpc

    try:
        socket.create_connection((host, port), timeout=1.0).close()  # TVM would log and retry
        summary = rpc.connect_tracker(host, port).summary()
    except Exception:  # TVM raises its own error types while the tracker is not up yet
        return None
    return int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def _tracker_problem(process: subprocess.Popen[bytes], host: str, port: int) -> PipelineError | None:
    if process.poll() is None:
        return None
    lines = (process.stderr.read() if process.stderr else b"").decode(errors="replace").strip().splitlines()
    return PipelineError(
        f"the RPC tracker on {host}:{port} exited: {lines[-1] if lines else 'no output'}",
        "check that TVM imports on this host (run scripts/install.sh)",
    )


def _server_problem(server: Background, key: str) -> PipelineError | None:
    if server.error is not None:
        return server.error
    code = server.exit_code()
    if code is None:
        return None
    return PipelineError(
        f"the RPC server on the board exited with code {code}: {server.stderr_tail() or 'no output'}",
        f"check that `python -m tvm.exec.rpc_server --key {key}` runs on the board "
        f"(tuning.python in the profile) and can reach this host",
    )


def _wait_for(
    ready: Callable[[], bool], problem: Callable[[], PipelineError | None], timeout_s: float, timed_out: PipelineError
) -> None:
    """Poll until ready; fail at once when `problem` names one, else with `timed_out` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        error = problem()
        if error is not None:
            raise error
        if time.monotonic() > deadline:
            raise timed_out
        time.sleep(0.5)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
