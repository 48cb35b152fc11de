"""Boards whose SSH server has no SFTP (dropbear, Buildroot, many vendor images, an OpenSSH without a
`Subsystem sftp` line) work: `invoke doctor` names it, and every transfer (push, the C library reads,
fetching outputs) falls back to plain exec channels with the same atomic rename and sha256 check. The
board here is the pipeline's own sshd started without its SFTP subsystem."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tuned_records import TUNED_TASK, tiny

from pipeline.board.bundle import runtime_bundle
from pipeline.board.connection import connect
from pipeline.board.doctor import all_checks, push_needs
from pipeline.board.profile import BOARDS_DIR, BoardProfile, SshSettings, load_board
from pipeline.board.remote import run
from pipeline.board.session import open_board
from pipeline.board.sshd import PORT_VARIABLE, SshEndpoint, board_endpoint
from pipeline.board.sync import has_sftp, push
from pipeline.paths import ROOT
from pipeline.tuning.tuner import tune

pytestmark = pytest.mark.board  # sshd, TVM builds and RPC: the slow tier


@pytest.fixture(scope="module")
def no_sftp_endpoint() -> Iterator[SshEndpoint]:
    """A second embedded sshd, next to the session's, with no SFTP subsystem."""
    port = int(os.environ.get(PORT_VARIABLE, "2222")) + 1000
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PORT_VARIABLE, str(port))
        server = board_endpoint(SshSettings(host="127.0.0.1", port=port, embedded=True), sftp=False)
        endpoint = server.__enter__()
    try:
        yield endpoint
    finally:
        server.__exit__(None, None, None)


def board_file(tmp_path: Path, endpoint: SshEndpoint) -> Path:
    """The local profile on the SFTP-less server, named as a real board's profile names its server (its
    Python for tuning is this host's), with a fresh folder so every file is transferred."""
    data = yaml.safe_load((BOARDS_DIR / "local.yaml").read_text())
    data.update(name="local-no-sftp", remote_dir=str(tmp_path / "board"), tuning={"python": sys.executable})
    data["ssh"] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": endpoint.user,
        "key_file": str(endpoint.key_file),
        "known_hosts": str(endpoint.known_hosts),
    }
    path = tmp_path / "local-no-sftp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def no_sftp_board(tmp_path: Path, endpoint: SshEndpoint) -> BoardProfile:
    return load_board(str(board_file(tmp_path, endpoint)))


def test_the_server_really_has_no_sftp(no_sftp_endpoint: SshEndpoint) -> None:
    with connect(no_sftp_endpoint) as client:
        assert not has_sftp(client)


def test_doctor_names_the_missing_sftp_and_reads_the_c_library_without_it(
    tmp_path: Path, no_sftp_endpoint: SshEndpoint
) -> None:
    profile = no_sftp_board(tmp_path, no_sftp_endpoint)
    with open_board(profile) as board:
        checks = {c.name: c for c in all_checks(board, push_needs(runtime_bundle(profile.arch).files))}
    assert checks["sftp"].ok and "no SFTP subsystem" in checks["sftp"].detail and "cat" in checks["sftp"].detail
    assert checks["glibc"].ok and "libc.so.6 defines up to GLIBC_" in checks["glibc"].detail
    assert all(check.ok for check in checks.values()), [c.line() for c in checks.values() if not c.ok]


def test_a_push_without_sftp_is_atomic_checked_and_skips_what_the_board_has(
    tmp_path: Path, no_sftp_endpoint: SshEndpoint
) -> None:
    local = tmp_path / "runner"
    local.write_bytes(os.urandom(300_000))
    local.chmod(0o751)
    remote = str(tmp_path / "board")
    with connect(no_sftp_endpoint) as client:
        first = push(client, {"bin/runner": local}, remote, sftp=False)
        second = push(client, {"bin/runner": local}, remote, sftp=False)
        listing = run(client, f"ls -A {remote}/bin", timeout_s=10).stdout.split()
    assert first.uploaded == ["bin/runner"] and second.skipped == ["bin/runner"]
    assert (tmp_path / "board" / "bin" / "runner").read_bytes() == local.read_bytes()
    assert (tmp_path / "board" / "bin" / "runner").stat().st_mode & 0o777 == 0o751
    assert listing == ["runner"]  # no temporary file left


def test_a_deploy_on_a_board_without_sftp_pushes_runs_and_fetches_the_output(
    tmp_path: Path, no_sftp_endpoint: SshEndpoint
) -> None:
    results = tmp_path / "results"
    command = [sys.executable, "-m", "invoke", "deploy", "--board", str(board_file(tmp_path, no_sftp_endpoint))]
    proc = subprocess.run(
        [*command, "--model", "tiny", "--runs", "3", "--warmup", "1"],
        cwd=ROOT,
        env={**os.environ, "PIPELINE_RESULTS": str(results)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "output matches onnxruntime" in proc.stdout
    [result] = sorted(results.rglob("*.json"))
    assert json.loads(result.read_text())["check"]["passed"] is True


def test_a_short_tune_on_a_board_without_sftp(tmp_path: Path, no_sftp_endpoint: SshEndpoint) -> None:
    board = no_sftp_board(tmp_path, no_sftp_endpoint)
    result = tune(tiny(), board, 2, records_dir=tmp_path / "records", cache_dir=tmp_path, only=(TUNED_TASK,))
    assert result.tuned == (TUNED_TASK,) and len(result.saved) == 1
    provenance = json.loads(result.saved[0].read_text())["provenance"]
    assert provenance["board"] == "local-no-sftp" and provenance["rpc_key"].startswith("local-no-sftp-")
    assert 0 < provenance["latency_us"] < 1e9
