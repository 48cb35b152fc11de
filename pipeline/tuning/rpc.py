"""TVM RPC for tuning, with nothing opened on any network: a tracker on this host's loopback and TVM's
RPC server on the board's loopback, started there over SSH, and every RPC byte inside the board's
verified SSH connection (pipeline/board/forwards.py).

TVM's RPC has no authentication: whoever reaches the server can run code on the board, and whoever
reaches the tracker can register a server and answer with invented timings. So:
- the server registers with the tracker through a remote forward (the board's loopback port R -> this
  host's tracker), and MetaSchedule's runner reaches the server through a local forward (this host's
  loopback port Q -> the board's loopback server port P);
- the tracker hands clients the address the server announces, so the server announces 127.0.0.1:Q, the
  local forward's end, while it listens on the board's 127.0.0.1:P (a free port the board picks);
  TVM's rpc_server announces the port it listens on, so a few lines (SERVER) start TVM's own listen
  loop with the two apart;
- the server's key carries a random token per run (`<board>-<token>`): a server started by hand under
  the board's key is never handed to the runner.
The server runs in its own process group on the board and is killed with all its workers, the
forwards closed and the tracker stopped when tuning ends, fails or is interrupted.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from pipeline.board.forwards import LOOPBACK, forward_local, forward_remote
from pipeline.board.remote import Background
from pipeline.board.session import Board
from pipeline.board.tuning_python import BoardPython
from pipeline.errors import PipelineError

TRACKER_START_S = 60.0
PORT_MARK = "tvm-pipeline-rpc-port"
# TVM's rpc_server, except that it listens on a free loopback port of its own choosing (printed) and
# announces another (the local forward's) to the tracker. `_listen_loop` is the loop rpc_server runs
# (same signature in 0.26 and 0.27). Arguments: tracker port, announced port, key, library or "".
SERVER = f"""
import logging, socket, sys
from tvm.rpc import server
server.logger.setLevel(logging.ERROR)
tracker, announced, key, library = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] or None
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("{LOOPBACK}", 0))
sock.listen(1)
print("{PORT_MARK}", sock.getsockname()[1], flush=True)
server._listen_loop(sock, announced, key, ("{LOOPBACK}", tracker), library, "{LOOPBACK}")
"""
KEYS_FILE = "rpc-keys.jsonl"  # in the work folder: which board and key measured which records


@dataclass(frozen=True)
class _MeasuredBy:
    """One line of KEYS_FILE: a measurement (by its run times) and the key of the server that made it."""

    run_secs: list[float]
    key: str


_MEASURED_BY = TypeAdapter(_MeasuredBy)


@dataclass(frozen=True)
class RpcBoard:
    """Where MetaSchedule's RPCRunner finds the board: the tracker's address and this run's key."""

    tracker_host: str
    tracker_port: int
    key: str


def run_key(board_name: str) -> str:
    """`<board>-<token>`: only the server this run started registers under it."""
    return f"{board_name}-{secrets.token_hex(8)}"


@contextmanager
def board_rpc(board: Board, python: BoardPython) -> Iterator[RpcBoard]:
    """A tracker on this host's loopback and one RPC server on the board's loopback registered with it
    under this run's key, on the profile's cores and threads, as a deploy runs; both reached only
    through the SSH connection, and all of it stopped when the block ends."""
    key, start_timeout_s = run_key(board.name), board.profile.tuning.start_timeout_s
    port = _free_port()
    tracker = [
        sys.executable,
        "-m",
        "tvm.exec.rpc_tracker",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
        "--silent",
    ]
    with _child(tracker) as process:
        _wait_for(
            lambda: _free_servers(port, key) is not None,
            lambda: _tracker_problem(process, port),
            TRACKER_START_S,
            PipelineError(
                f"the RPC tracker on {LOOPBACK}:{port} did not answer within {TRACKER_START_S:.0f} s",
                "check the load on this host and retry",
            ),
        )
        with forward_remote(board.client, port) as board_tracker_port, forward_local(board.client) as local:
            arguments = ["-c", SERVER, str(board_tracker_port), str(local.port), key, python.load_library or ""]
            with board.background_runtime(python.command, arguments, prefix=python.under_prefix) as server:
                _wait_for(
                    lambda: _listening_port(server) is not None,
                    lambda: _server_problem(server),
                    start_timeout_s,
                    _not_registered(start_timeout_s),
                )
                local.target = _listening_port(server)
                _wait_for(
                    lambda: (_free_servers(port, key) or 0) >= 1,
                    lambda: _server_problem(server),
                    start_timeout_s,
                    _not_registered(start_timeout_s),
                )
                yield RpcBoard(LOOPBACK, port, key)


def _not_registered(timeout_s: float) -> PipelineError:
    return PipelineError(
        f"the board's RPC server did not register with the tracker within {timeout_s:g} s",
        "check the load on the board, or raise tuning.start_timeout_s in the board profile",
    )


def _listening_port(server: Background) -> int | None:
    """The board loopback port the server printed once it listens."""
    for line in server.stdout().splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == PORT_MARK and words[1].isdigit():
            return int(words[1])
    return None


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


def _free_servers(port: int, key: str) -> int | None:
    """Idle servers registered under `key`, or None while the tracker does not answer."""
    from tvm import rpc

    try:
        socket.create_connection((LOOPBACK, port), timeout=1.0).close()  # TVM would log and retry
        summary = rpc.connect_tracker(LOOPBACK, port).summary()
    except Exception:  # TVM raises its own error types while the tracker is not up yet
        return None
    return int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def _tracker_problem(process: subprocess.Popen[bytes], port: int) -> PipelineError | None:
    if process.poll() is None:
        return None
    lines = (process.stderr.read() if process.stderr else b"").decode(errors="replace").strip().splitlines()
    return PipelineError(
        f"the RPC tracker on {LOOPBACK}:{port} exited: {lines[-1] if lines else 'no output'}",
        "check that TVM imports on this host (run scripts/install.sh)",
    )


def _server_problem(server: Background) -> PipelineError | None:
    if server.error is not None:
        return server.error
    code = server.exit_code()
    if code is None:
        return None
    return PipelineError(
        f"the RPC server on the board exited with code {code}: {server.stderr_tail() or 'no output'}",
        "check that the board's Python (tuning.python in the profile) imports TVM's rpc module",
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@contextmanager
def keyed_measurements(work_dir: Path, rpc_board: RpcBoard) -> Iterator[None]:
    """Note which key measured the records MetaSchedule appends to the work database during the block
    (by their run times), so a record exported later names the run that measured it, even after
    an interrupted run was resumed."""
    records = work_dir / "records.json"
    start = records.stat().st_size if records.is_file() else 0
    try:
        yield
    finally:
        if records.is_file():
            _note_keys(records, start, work_dir / KEYS_FILE, rpc_board.key)


def _note_keys(records: Path, start: int, keys_file: Path, key: str) -> None:
    with records.open("rb") as handle:
        handle.seek(start)
        added = handle.read().splitlines()
    with keys_file.open("a") as keys:
        for line in added:
            run_secs = _run_secs(line)
            if run_secs is not None:
                keys.write(_MEASURED_BY.dump_json(_MeasuredBy(run_secs, key)).decode() + "\n")


def measured_by(work_dir: Path, tuning: Any) -> str:
    """The key of the run that measured a work-database record, or "" when no run noted it."""
    wanted = [float(s) for s in tuning.run_secs]
    try:
        lines = (work_dir / KEYS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return ""
    for line in lines:
        entry = _MEASURED_BY.validate_json(line)
        if entry.run_secs == wanted:
            return entry.key
    return ""


def _run_secs(line: bytes) -> list[float] | None:
    """A JSONDatabase line is [workload index, [trace, run seconds, target, argument info]]."""
    try:
        run_secs = json.loads(line)[1][1]
        return [float(s) for s in run_secs] if isinstance(run_secs, list) else None
    except (ValueError, IndexError, TypeError):
        return None
