"""Tuning measures on the board itself: a tracker on this host and TVM's rpc_server started on the board
over SSH. The emulated rk3399 has no Python, so the pipeline pushes its own arm64 one and runs it under
qemu; what is measured there is labelled emulated. Nothing keeps running on the board afterwards."""

import json
from pathlib import Path

import paramiko
import pytest
from tuned_records import TUNED_TASK, local, tiny, work_dir

from pipeline.board.profile import BoardProfile, SshSettings, TuningSettings, load_board
from pipeline.board.remote import run
from pipeline.board.sshd import SshEndpoint
from pipeline.board.tuning_python import environment_archive
from pipeline.compiler.builder import BuildArtifact, build
from pipeline.compiler.coverage import coverage_lines
from pipeline.errors import PipelineError
from pipeline.records.store import load_store
from pipeline.tuning.tuner import TuneResult, tune

pytestmark = pytest.mark.board  # sshd, qemu or TVM builds: the slow tier

TRIALS = 2  # the loop, not a good schedule: each emulated trial costs seconds of cross-compiling and qemu


def emulated_rk3399() -> BoardProfile:
    return load_board("rk3399-emu")


def servers_on_board(client: paramiko.SSHClient, board: str, folder: str = "") -> str:
    """Command lines of the RPC servers the pipeline started for `board` (their key is `<board>-<token>`;
    the bracket keeps pgrep from matching itself), started from `folder`: other checkouts on this
    machine tune their own emulated boards at the same time."""
    found = run(client, "pgrep -af '[t]vm-pipeline-rpc-port' || true", timeout_s=10).stdout
    return "\n".join(line for line in found.splitlines() if f" {board}-" in line and folder in line)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def emulated_tuning(store: Path, tmp_path_factory: pytest.TempPathFactory) -> TuneResult:
    return tune(
        tiny(), emulated_rk3399(), TRIALS, records_dir=store, cache_dir=work_dir(tmp_path_factory), only=(TUNED_TASK,)
    )


@pytest.fixture(scope="module")
def emulated_build(emulated_tuning: TuneResult, store: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildArtifact:
    return build(tiny(), emulated_rk3399(), cache_dir=tmp_path_factory.mktemp("cache"), records_dir=store)


def test_tuning_on_the_emulated_board_adds_an_aarch64_record_labelled_emulated(
    emulated_tuning: TuneResult, store: Path
) -> None:
    assert emulated_tuning.tuned == (TUNED_TASK,)
    (path,) = emulated_tuning.saved
    record = json.loads(path.read_text())
    assert record["target"]["mtriple"] == "aarch64-linux-gnu" and record["target"]["mcpu"] == "cortex-a72"
    assert record["provenance"]["board"] == "rk3399-emu" and record["provenance"]["emulated"] is True
    assert 0 < record["provenance"]["latency_us"] < 1e9  # a real measurement, not MetaSchedule's failure value
    assert not load_store(store).problems


def test_the_next_build_for_the_emulated_board_applies_the_record_and_says_it_was_emulated(
    emulated_build: BuildArtifact,
) -> None:
    (row,) = [row for row in emulated_build.coverage.tasks if row.task == TUNED_TASK]
    assert row.tuned and row.emulated and row.record.endswith("(rk3399-emu)")
    lines = "\n".join(coverage_lines(emulated_build.coverage))
    assert "measured under emulation" in lines
    assert "1 of the tuned workloads were measured on an emulated board" in lines


def test_no_rpc_server_is_left_on_the_board_after_tuning(
    emulated_tuning: TuneResult, ssh_client: paramiko.SSHClient
) -> None:
    assert servers_on_board(ssh_client, "rk3399-emu", emulated_rk3399().remote_dir) == ""
    python_dir = f"{emulated_rk3399().remote_dir}/python"
    leftovers = run(ssh_client, f"ls -A {python_dir}", timeout_s=10).stdout.split()
    assert [name for name in leftovers if ".part" in name or name.endswith(".tar.gz")] == []


def test_a_board_server_that_cannot_start_is_one_error_naming_it(
    tmp_path: Path, ssh_client: paramiko.SSHClient
) -> None:
    no_python = TuningSettings(python="/nonexistent/python3")
    board = local().model_copy(update={"name": "local-no-python", "tuning": no_python})
    with pytest.raises(PipelineError) as error:
        tune(tiny(), board, TRIALS, records_dir=tmp_path / "records", cache_dir=tmp_path, only=(TUNED_TASK,))
    assert error.value.problem.startswith("the RPC server on the board exited with code 127")
    assert "/nonexistent/python3" in error.value.problem and "tuning.python" in error.value.fix
    assert servers_on_board(ssh_client, "local-no-python") == ""


def test_a_server_that_does_not_register_in_time_is_stopped_with_one_error(
    tmp_path: Path, ssh_client: paramiko.SSHClient
) -> None:
    board = local().model_copy(update={"name": "local-slow-start", "tuning": TuningSettings(start_timeout_s=0.1)})
    with pytest.raises(PipelineError) as error:
        tune(tiny(), board, TRIALS, records_dir=tmp_path / "records", cache_dir=tmp_path, only=(TUNED_TASK,))
    assert "did not register with the tracker" in error.value.problem and "start_timeout_s" in error.value.fix
    assert servers_on_board(ssh_client, "local-slow-start") == ""


def test_an_unreachable_board_is_one_error(tmp_path: Path, embedded_endpoint: SshEndpoint) -> None:
    ssh = SshSettings(
        host="127.0.0.1",
        port=1,
        user="nobody",
        key_file=embedded_endpoint.key_file,
        known_hosts=embedded_endpoint.known_hosts,
    )
    board = emulated_rk3399().model_copy(update={"ssh": ssh})
    with pytest.raises(PipelineError) as error:
        tune(tiny(), board, TRIALS, records_dir=tmp_path / "records", cache_dir=tmp_path, only=(TUNED_TASK,))
    assert error.value.problem.startswith("cannot reach board at 127.0.0.1:1")


def test_without_the_downloaded_packages_the_board_python_asks_for_the_install_script(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        environment_archive(cache_dir=tmp_path)
    assert "python3.11-minimal" in error.value.problem and error.value.fix == "run scripts/install.sh"
