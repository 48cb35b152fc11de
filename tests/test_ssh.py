"""SSH to the board: verified connections, atomic hash-skipping uploads, bounded remote commands.

All against a real OpenSSH server on 127.0.0.1 (the pipeline's embedded board host).
"""

import dataclasses
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

import pipeline.board.sshd
from pipeline.board.connection import connect
from pipeline.board.profile import SshSettings, load_board
from pipeline.board.remote import run
from pipeline.board.session import Board
from pipeline.board.sshd import SshEndpoint, board_endpoint, endpoint_for
from pipeline.board.sync import push
from pipeline.errors import PipelineError
from pipeline.paths import CACHE_DIR

pytestmark = pytest.mark.board  # sshd, qemu or TVM builds: the slow tier


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def answer_like_a_web_server(server: socket.socket) -> None:
    connection, _ = server.accept()
    with connection:
        connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def new_ed25519_key(folder: Path) -> Path:
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def write(path: Path, content: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)
    return path


def remote_tree(client: paramiko.SSHClient, folder: str) -> list[str]:
    return sorted(run(client, f"find {folder} -type f", timeout_s=10).stdout.split())


def still_running(client: paramiko.SSHClient, pattern: str) -> bool:
    """Whether a process whose command line matches is alive on the board ([x]yz keeps pgrep off itself)."""
    return run(client, f"pgrep -f '[{pattern[0]}]{pattern[1:]}'", timeout_s=10).exit_code == 0


@pytest.fixture
def remote_dir(ssh_client: paramiko.SSHClient) -> Iterator[str]:
    folder = f"/tmp/tvm-pipeline-test-{secrets.token_hex(4)}"
    yield folder
    run(ssh_client, f"rm -rf {folder}", timeout_s=10)


# --- the embedded board host ---------------------------------------------------------------------


def test_embedded_sshd_runs_for_the_block_and_stops_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.board.sshd, "CACHE_DIR", tmp_path)
    monkeypatch.delenv("PIPELINE_SSHD_PORT", raising=False)
    settings = SshSettings(host="127.0.0.1", port=free_port(), embedded=True)
    with board_endpoint(settings) as endpoint:
        assert port_answers(endpoint.port)
        with connect(endpoint) as client:
            assert run(client, "echo up", timeout_s=10).stdout == "up\n"
    assert not port_answers(settings.port)


def test_a_running_embedded_sshd_is_reused_and_left_running(embedded_endpoint: SshEndpoint) -> None:
    settings = SshSettings(host=embedded_endpoint.host, port=embedded_endpoint.port, embedded=True)
    with board_endpoint(settings) as endpoint:
        assert endpoint == embedded_endpoint
    assert port_answers(embedded_endpoint.port)


def test_embedded_port_taken_by_another_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.board.sshd, "CACHE_DIR", tmp_path)
    monkeypatch.delenv("PIPELINE_SSHD_PORT", raising=False)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        settings = SshSettings(host="127.0.0.1", port=squatter.getsockname()[1], embedded=True)
        with pytest.raises(PipelineError, match="taken by another program"), board_endpoint(settings):
            pass


def test_a_real_board_profile_needs_user_key_and_known_hosts(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=re.escape("ssh.user, ssh.key_file, ssh.known_hosts")):
        endpoint_for(SshSettings(host="127.0.0.1"))
    with pytest.raises(PipelineError, match=r"key file .* not found"):
        endpoint_for(
            SshSettings(host="127.0.0.1", user="me", key_file=tmp_path / "nope", known_hosts=tmp_path / "known_hosts")
        )


# --- connecting ----------------------------------------------------------------------------------


def test_connect_checks_the_host_key_against_known_hosts(
    ssh_client: paramiko.SSHClient, embedded_endpoint: SshEndpoint
) -> None:
    known = paramiko.HostKeys(str(embedded_endpoint.known_hosts))
    expected = known.lookup(f"[{embedded_endpoint.host}]:{embedded_endpoint.port}")
    assert expected is not None
    offered = ssh_client.get_transport().get_remote_server_key()
    assert expected[offered.get_name()] == offered


def test_a_changed_host_key_is_refused(embedded_endpoint: SshEndpoint, tmp_path: Path) -> None:
    other_key = new_ed25519_key(tmp_path).with_suffix(".pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{embedded_endpoint.port} {' '.join(other_key)}\n")
    with pytest.raises(PipelineError, match="HOST KEY MISMATCH") as error:
        connect(dataclasses.replace(embedded_endpoint, known_hosts=known_hosts))
    assert str(known_hosts) in error.value.fix


def test_an_unknown_host_key_is_refused(embedded_endpoint: SshEndpoint, tmp_path: Path) -> None:
    known_hosts = write(tmp_path / "known_hosts", b"")
    with pytest.raises(PipelineError, match=r"host key of \[127.0.0.1\]:\d+ .* is not in") as error:
        connect(dataclasses.replace(embedded_endpoint, known_hosts=known_hosts))
    assert "ssh-keyscan" in error.value.fix


def test_a_missing_known_hosts_file_is_named(embedded_endpoint: SshEndpoint, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="cannot read known_hosts file"):
        connect(dataclasses.replace(embedded_endpoint, known_hosts=tmp_path / "absent"))


def test_a_key_the_board_does_not_accept_is_refused(embedded_endpoint: SshEndpoint, tmp_path: Path) -> None:
    stranger = new_ed25519_key(tmp_path)
    with pytest.raises(PipelineError, match=r"login as .* refused"):
        connect(dataclasses.replace(embedded_endpoint, key_file=stranger))


def test_a_closed_port_is_unreachable(embedded_endpoint: SshEndpoint) -> None:
    closed = dataclasses.replace(embedded_endpoint, port=free_port())
    with pytest.raises(PipelineError, match=f"cannot reach board at 127.0.0.1:{closed.port}: connection refused"):
        connect(closed)


def test_a_port_that_does_not_speak_ssh_fails_in_one_line(
    embedded_endpoint: SshEndpoint, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        web_server = threading.Thread(target=answer_like_a_web_server, args=(server,))
        web_server.start()
        with pytest.raises(PipelineError, match=r"SSH handshake with .* failed"):
            connect(dataclasses.replace(embedded_endpoint, port=server.getsockname()[1], connect_timeout_s=2))
        web_server.join()
    assert "Traceback" not in capfd.readouterr().err


# --- uploading -----------------------------------------------------------------------------------


def test_push_uploads_then_skips_unchanged_files(
    ssh_client: paramiko.SSHClient, remote_dir: str, tmp_path: Path
) -> None:
    files = {
        "runner": write(tmp_path / "runner", b"#!/bin/sh\necho runner\n", mode=0o755),
        "lib/libtvm_ffi.so": write(tmp_path / "libtvm_ffi.so", secrets.token_bytes(200_000)),
        "model.so": write(tmp_path / "model.so", secrets.token_bytes(50_000)),
    }
    first = push(ssh_client, files, remote_dir)
    assert sorted(first.uploaded) == sorted(files) and first.skipped == []
    assert first.bytes_sent == sum(path.stat().st_size for path in files.values())
    assert run(ssh_client, "./runner", cwd=remote_dir, timeout_s=10).stdout == "runner\n"

    second = push(ssh_client, files, remote_dir)
    assert second.uploaded == [] and sorted(second.skipped) == sorted(files) and second.bytes_sent == 0

    write(files["model.so"], b"retuned model")
    third = push(ssh_client, files, remote_dir)
    assert third.uploaded == ["model.so"] and third.bytes_sent == len(b"retuned model")
    assert run(ssh_client, "cat model.so", cwd=remote_dir, timeout_s=10).stdout == "retuned model"
    assert remote_tree(ssh_client, remote_dir) == sorted(f"{remote_dir}/{name}" for name in files)


def test_push_to_a_folder_relative_to_home(ssh_client: paramiko.SSHClient, tmp_path: Path) -> None:
    folder = f"tvm-pipeline-test-{secrets.token_hex(4)}"
    try:
        push(ssh_client, {"a.txt": write(tmp_path / "a.txt", b"a")}, f"~/{folder}")
        assert run(ssh_client, f'cat "$HOME/{folder}/a.txt"', timeout_s=10).stdout == "a"
    finally:
        run(ssh_client, f'rm -rf "$HOME/{folder}"', timeout_s=10)


@pytest.mark.parametrize("earlier_version", [None, b"version 1"])
def test_an_interrupted_upload_leaves_the_board_as_it_was(
    ssh_client: paramiko.SSHClient, remote_dir: str, tmp_path: Path, earlier_version: bytes | None
) -> None:
    target = tmp_path / "libtvm_runtime.so"
    if earlier_version is not None:
        push(ssh_client, {"lib/libtvm_runtime.so": write(target, earlier_version)}, remote_dir)
    write(target, secrets.token_bytes(2_000_000))

    def ctrl_c(name: str, sent: int, size: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        push(ssh_client, {"lib/libtvm_runtime.so": target}, remote_dir, on_progress=ctrl_c)
    if earlier_version is None:
        assert remote_tree(ssh_client, remote_dir) == []
    else:
        assert remote_tree(ssh_client, remote_dir) == [f"{remote_dir}/lib/libtvm_runtime.so"]
        assert run(ssh_client, "cat lib/libtvm_runtime.so", cwd=remote_dir, timeout_s=10).stdout == "version 1"


def test_a_missing_local_file_is_named(ssh_client: paramiko.SSHClient, remote_dir: str, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"cannot read .*model\.so to push it"):
        push(ssh_client, {"model.so": tmp_path / "model.so"}, remote_dir)


# --- running commands ----------------------------------------------------------------------------


def test_run_returns_exit_code_and_output(ssh_client: paramiko.SSHClient) -> None:
    result = run(ssh_client, "echo out; echo err >&2; exit 3", timeout_s=10)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_run_in_a_folder_with_quoted_environment(ssh_client: paramiko.SSHClient) -> None:
    value = "it's $HOME; `rm -rf /`"
    result = run(ssh_client, 'pwd; printf %s "$MODEL_NAME"', cwd="/tmp", env={"MODEL_NAME": value}, timeout_s=10)
    assert result.stdout == f"/tmp\n{value}"


def test_run_drains_large_output_on_both_streams(ssh_client: paramiko.SSHClient) -> None:
    result = run(
        ssh_client, "head -c 3000000 /dev/zero | tr '\\0' o; head -c 3000000 /dev/zero | tr '\\0' e >&2", timeout_s=20
    )
    assert (len(result.stdout), len(result.stderr)) == (3_000_000, 3_000_000)


def test_a_command_past_its_timeout_is_killed(ssh_client: paramiko.SSHClient) -> None:
    sleeper = f"sleep 30.{secrets.randbelow(10**6)}"
    start = time.monotonic()
    with pytest.raises(PipelineError, match="timed out after 1 s on the board") as error:
        run(ssh_client, f"{sleeper}; echo never", timeout_s=1)
    assert time.monotonic() - start < 6
    assert "timing.timeout_s" in error.value.fix
    assert not still_running(ssh_client, sleeper)


def test_ctrl_c_kills_the_remote_command(ssh_client: paramiko.SSHClient) -> None:
    sleeper = f"sleep 30.{secrets.randbelow(10**6)}"

    def ctrl_c(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(ssh_client, f"echo started >&2; {sleeper}", timeout_s=20, on_stderr_line=ctrl_c)
    assert not still_running(ssh_client, sleeper)


def test_stderr_lines_arrive_while_the_command_runs(ssh_client: paramiko.SSHClient) -> None:
    arrivals: list[tuple[str, float]] = []
    result = run(
        ssh_client,
        "echo 'step 1/2' >&2; sleep 0.5; printf 'step 2/2' >&2",
        timeout_s=10,
        on_stderr_line=lambda line: arrivals.append((line, time.monotonic())),
    )
    finished = time.monotonic()
    assert [line for line, _ in arrivals] == ["step 1/2", "step 2/2"]
    assert finished - arrivals[0][1] > 0.3
    assert result.stderr == "step 1/2\nstep 2/2"


def test_embedded_board_port_can_be_moved_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_SSHD_PORT", "2299")
    with board_endpoint(load_board("local").ssh) as endpoint, connect(endpoint) as client:
        assert endpoint.port == 2299
        assert run(client, "echo ok", timeout_s=10).stdout.strip() == "ok"
    monkeypatch.setenv("PIPELINE_SSHD_PORT", "not-a-port")
    with pytest.raises(PipelineError, match="PIPELINE_SSHD_PORT"):
        with board_endpoint(load_board("local").ssh):
            pass


def test_every_board_command_runs_on_the_profiles_cores_and_under_its_prefix() -> None:
    """The runner, the tuning server and the board Python all start through Board.runtime_command."""
    profile = load_board("rk3399-emu").model_copy(update={"cpu_affinity": [4, 5]})
    board = Board(profile, endpoint=None, client=None)  # type: ignore[arg-type]  # builds text only

    sysroot = CACHE_DIR.resolve() / "sysroot" / "bullseye-arm64"
    assert board.runtime_command("./runtime/tvm_runner", ["--info"]) == (
        f"taskset -c 4,5 qemu-aarch64 -cpu cortex-a72 -L {sysroot} ./runtime/tvm_runner --info"
    )
    assert board.runtime_command("launcher", ["-m", "x y"], prefix=False) == "taskset -c 4,5 launcher -m 'x y'"
    assert board.runtime_env() == {"TVM_NUM_THREADS": "2"}


def test_a_dropped_connection_is_one_error_line_not_a_paramiko_traceback(ssh_client: paramiko.SSHClient) -> None:
    board = Board(load_board("local"), endpoint=None, client=ssh_client)  # type: ignore[arg-type]
    ssh_client.close()
    with pytest.raises(PipelineError, match="connection to the board is closed"):
        board.run("true", timeout_s=5)
    with pytest.raises(PipelineError, match="reading /etc/hostname from the board failed"):
        board.read_file("/etc/hostname")
