"""Tuning opens nothing on the network: TVM's RPC has no authentication, so the tracker listens on this
host's loopback, the board's server on the board's loopback, and every RPC byte travels inside the
verified SSH connection. Only the server this run started is handed to the runner; Ctrl-C leaves no
server, tracker or forward behind."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml
from interrupt import interrupt_when
from tuned_records import TUNED_TASK

from pipeline.board.profile import BOARDS_DIR, load_board
from pipeline.board.session import Board, open_board
from pipeline.board.sshd import SshEndpoint
from pipeline.board.tuning_python import board_python
from pipeline.paths import CACHE_DIR, ROOT
from pipeline.tuning.rpc import RpcBoard, board_rpc

pytestmark = pytest.mark.board  # sshd and TVM RPC processes: the slow tier


@contextmanager
def rpc_on(board_name: str) -> Iterator[tuple[Board, RpcBoard]]:
    board = load_board(board_name)
    with open_board(board) as session, board_rpc(session, board_python(session)) as rpc_board:
        yield session, rpc_board


def processes_with(word: str) -> list[psutil.Process]:
    """Processes on this machine whose command line holds `word` (the board's, for embedded boards)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(word in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def with_children(processes: list[psutil.Process]) -> set[int]:
    pids = set()
    for process in processes:
        try:
            pids |= {process.pid, *(child.pid for child in process.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    return pids


def embedded_sshd(endpoint: SshEndpoint) -> psutil.Process:
    return psutil.Process(int((CACHE_DIR / "sshd" / f"port-{endpoint.port}" / "sshd.pid").read_text()))


def listening(pids: set[int]) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def tuning_processes(rpc_board: RpcBoard, endpoint: SshEndpoint) -> set[int]:
    """This process (the local forward) and its tracker, the board's server with its workers, and the
    embedded sshd's session processes (the remote forward)."""
    mine = with_children([psutil.Process()])
    return mine | with_children(processes_with(rpc_board.key)) | with_children([embedded_sshd(endpoint)])


@pytest.mark.parametrize("board_name", ["local"])
def test_every_socket_a_tuning_run_listens_on_is_loopback(board_name: str, embedded_endpoint: SshEndpoint) -> None:
    with rpc_on(board_name) as (session, rpc_board):
        sockets = listening(tuning_processes(rpc_board, embedded_endpoint))
        server = listening(with_children(processes_with(rpc_board.key)))
    assert ("127.0.0.1", rpc_board.tracker_port) in sockets and len(server) == 1
    # tracker, local forward, board server, remote forward on the board's sshd, the sshd itself
    assert len(sockets) >= 5
    assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets


def test_the_run_key_is_the_board_name_with_a_random_token(embedded_endpoint: SshEndpoint) -> None:
    with rpc_on("local") as (_, first):
        pass
    with rpc_on("local") as (_, second):
        pass
    assert first.key.startswith("local-") and second.key.startswith("local-") and first.key != second.key


def test_two_runs_at_once_get_their_own_ports_keys_and_servers(embedded_endpoint: SshEndpoint) -> None:
    from tvm import rpc

    with rpc_on("local") as (_, first), rpc_on("rk3399-emu") as (_, second):
        assert first.tracker_port != second.tracker_port and first.key != second.key
        for run in (first, second):
            queues = rpc.connect_tracker(run.tracker_host, run.tracker_port).summary()["queue_info"]
            assert queues == {run.key: queues[run.key]} and queues[run.key]["free"] == 1


def test_a_server_started_by_hand_under_the_boards_key_is_never_handed_to_the_runner(
    embedded_endpoint: SshEndpoint,
) -> None:
    from tvm import rpc

    with rpc_on("local") as (_, rpc_board):
        by_hand = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{rpc_board.tracker_port}"]
            + ["--key", "local", "--host", "127.0.0.1", "--port", "9400", "--port-end", "9500", "--silent"],
            start_new_session=True,
        )
        try:
            tracker = rpc.connect_tracker(rpc_board.tracker_host, rpc_board.tracker_port)
            for _ in range(120):
                if tracker.summary()["queue_info"].get("local", {}).get("free", 0) >= 1:
                    break
                time.sleep(0.5)
            assert tracker.summary()["queue_info"]["local"]["free"] == 1  # it registered, under its own key
            session = tracker.request(rpc_board.key, session_timeout=30)
            assert session.cpu(0).exist
            queues = tracker.summary()["queue_info"]
            assert queues["local"]["free"] == 1  # the hand-started server was not used
            assert set(queues) == {"local", rpc_board.key}
        finally:
            by_hand.terminate()
            by_hand.wait(timeout=10)


def test_ctrl_c_during_tuning_leaves_no_server_tracker_or_forward(
    tmp_path: Path, embedded_endpoint: SshEndpoint
) -> None:
    profile = yaml.safe_load((BOARDS_DIR / "local.yaml").read_text())
    profile["name"] = "local-ctrl-c"  # a key no other run on this machine uses
    board_file = tmp_path / "local-ctrl-c.yaml"
    board_file.write_text(yaml.safe_dump(profile))
    env = {**os.environ, "PIPELINE_RECORDS": str(tmp_path / "records")}
    seen: dict[str, set[int]] = {}

    def serving() -> bool:
        servers = processes_with("local-ctrl-c-")
        if not servers:
            return False
        sshd_sessions = with_children([embedded_sshd(embedded_endpoint)])
        seen["server"] = with_children(servers)
        tuning = with_children(processes_with(str(board_file)))
        seen["tracker"] = {p.pid for p in processes_with("tvm.exec.rpc_tracker") if p.pid in tuning}
        seen["forwards"] = {port for _, port in listening(sshd_sessions)} - {embedded_endpoint.port}
        return True

    cmd = [
        sys.executable,
        "-m",
        "invoke",
        "tune",
        "--board",
        str(board_file),
        "--model",
        "tiny",
        "--trials",
        "2",
        "--retune",
    ]
    proc = interrupt_when([*cmd, "--only", TUNED_TASK], serving, cwd=ROOT, env=env)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert processes_with("local-ctrl-c-") == []
    assert seen["tracker"] and not {p.pid for p in processes_with("tvm.exec.rpc_tracker")} & seen["tracker"]
    remaining = {port for _, port in listening(with_children([embedded_sshd(embedded_endpoint)]))}
    assert seen["forwards"] and not seen["forwards"] & remaining
