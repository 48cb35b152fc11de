"""`invoke deploy` end to end on real parts: the project's own sshd on loopback, the x86 runtime for
`local`, the aarch64 runtime under qemu-aarch64 for `rk3399-emu`. Bad input ends in one error line."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
import yaml
from interrupt import interrupt_when

from pipeline.board.profile import BOARDS_DIR
from pipeline.board.remote import run
from pipeline.board.sshd import SshEndpoint
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.deploy.flow import DeployCallbacks, Step, deploy_once
from pipeline.deploy.results import load_result
from pipeline.paths import ROOT

pytestmark = pytest.mark.board  # sshd, qemu or TVM builds: the slow tier

INVOKE = [sys.executable, "-m", "invoke"]
ENDLESS_RUNS = "100000"


def endless_runner_pids(client: paramiko.SSHClient) -> str:
    """PIDs of the board processes started with ENDLESS_RUNS (the bracket keeps pgrep from matching itself)."""
    return run(client, f"pgrep -f '[t]vm_runner --lib.*--runs {ENDLESS_RUNS}' || true", timeout_s=10).stdout.strip()


def deploy(
    results: Path, *args: str, timeout: float = 600, records: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINE_RESULTS": str(results)}
    if records is not None:
        env["PIPELINE_RECORDS"] = str(records)
    return subprocess.run(
        [*INVOKE, "deploy", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def result_files(results: Path) -> list[Path]:
    return sorted(results.rglob("*.json"))


def assert_one_clear_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "fix:" in errors[0]


def profile_variant(tmp_path: Path, base: str, **changes: object) -> Path:
    """A copy of a shipped profile with some fields replaced (nested dicts are merged)."""
    data = yaml.safe_load((BOARDS_DIR / f"{base}.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / f"{base}-variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def direct_ssh(endpoint: SshEndpoint, **overrides: object) -> dict[str, object]:
    """SSH settings that name the embedded sshd explicitly, as a real board's profile would."""
    settings: dict[str, object] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": endpoint.user,
        "key_file": str(endpoint.key_file),
        "known_hosts": str(endpoint.known_hosts),
        "embedded": False,
        "connect_timeout_s": 5,
    }
    settings.update(overrides)
    return settings


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.mark.parametrize(("board", "arch", "emulated"), [("local", "x86_64", False), ("rk3399-emu", "aarch64", True)])
def test_deploy_tiny_runs_checks_and_records(
    embedded_endpoint: SshEndpoint, results: Path, board: str, arch: str, emulated: bool
) -> None:
    proc = deploy(results, "--board", board, "--model", "tiny", "--runs", "5", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Mean inference time (std dev):" in proc.stdout
    assert "output matches onnxruntime" in proc.stdout
    assert ("EMULATED" in proc.stdout) is emulated
    [path] = result_files(results)
    assert str(path) in proc.stdout
    record = json.loads(path.read_text())
    assert record["board"] == board
    assert record["emulated"] is emulated
    assert record["timing_kind"] == ("emulated" if emulated else "native")
    assert record["runtime_arch"] == arch
    assert record["target"]["mtriple"].startswith(arch)
    assert record["check"]["passed"] is True
    timings = record["timings"]
    assert len(timings["runs_ms"]) == 5 and len(timings["warmup_ms"]) == 1
    assert timings["stats"]["count"] == 5
    assert timings["stats"]["min_ms"] <= timings["stats"]["median_ms"] <= timings["stats"]["max_ms"]
    assert record["board_facts"]["online_cores"] >= 1
    assert record["tvm_version"].startswith("0.27")
    assert load_result(path).to_json() == path.read_text()  # read back typed, written back unchanged


def test_deploy_profile_prints_a_per_task_table_and_keeps_kernel_times_and_peak_memory(
    embedded_endpoint: SshEndpoint, results: Path
) -> None:
    proc = deploy(results, "--board", "local", "--model", "tiny", "--runs", "2", "--warmup", "0", "--profile")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("Board ")[0].splitlines()
    assert table[0].split() == ["task", "calls", "ms", "share"] and table[-1].startswith("total")
    kernels = [line.split()[0] for line in table[1:-1]]
    assert sum(name.startswith("fused_conv2d") for name in kernels) == 4  # tiny's four conv tasks
    assert "(VM" in kernels  # the builtins, summed into one row
    assert "Memory       peak " in proc.stdout

    [path] = result_files(results)
    result = load_result(path)
    assert {entry.name for entry in result.kernel_times} >= {"max_pool2d", "fused_conv2d_add_relu"}
    assert all(entry.calls >= 1 and entry.ms >= 0 for entry in result.kernel_times)
    assert result.peak_rss_kb is not None and result.peak_rss_kb > 1024


def test_deploy_once_reports_its_steps_uploads_and_runs_through_callbacks(
    embedded_endpoint: SshEndpoint, tmp_path: Path
) -> None:
    """The library draws nothing itself: what `invoke deploy` shows comes through these callbacks."""
    events: list[tuple[str, ...]] = []

    @contextmanager
    def on_step(step: Step) -> Iterator[None]:
        events.append(("start", step.kind))
        yield
        events.append(("end", step.kind))

    callbacks = DeployCallbacks(
        on_step=on_step,
        on_line=lambda line: events.append(("line", line)),
        on_upload=lambda name, sent, size: events.append(("upload", name)),
        on_run=lambda phase, index, count, ms: events.append(("run", phase)),
    )
    outcome = deploy_once("local", "tiny", runs=3, warmup=1, callbacks=callbacks, results_dir=tmp_path / "results")

    def of(kind: str) -> list[str]:
        return [event[1] for event in events if event[0] == kind]

    steps = [event for event in events if event[0] in ("start", "end")]
    kinds = ("build", "probe", "push", "probe", "run", "check")  # the board is checked before the push, probed after
    assert steps == [(edge, kind) for kind in kinds for edge in ("start", "end")]
    assert of("run") == ["first", "warmup", "run", "run", "run"]
    assert set(of("upload")) == set(outcome.result.push.uploaded)
    assert any(line.startswith("conv/dense FLOPs tuned:") for line in of("line"))
    first_line = next(event for event in events if event[0] == "line")
    assert events.index(("end", "build")) < events.index(first_line) < events.index(("start", "push"))


def test_a_deploy_without_any_record_runs_no_naive_conv_or_dense_task(
    embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path
) -> None:
    """Issue 6: with an empty record store every conv/dense task still gets a schedule (transferred or
    the default rules'), none runs TVM's naive loops, and the output still matches onnxruntime."""
    empty = tmp_path / "records"
    empty.mkdir()
    proc = deploy(results, "--board", "local", "--model", "tiny", "--runs", "2", "--warmup", "0", records=empty)
    assert proc.returncode == 0, proc.stderr
    assert "output matches onnxruntime" in proc.stdout
    assert "0 of 5 conv/dense workloads, the others 0 migrated, 0 transferred, 5 default, 0 naive" in proc.stdout
    assert "untuned conv/dense: 0 migrated, 0 transferred, 5 default, 0 naive" in proc.stderr
    assert proc.stderr.count("default  (rule ") == 5 and "NAIVE" not in proc.stderr
    [path] = result_files(results)
    heavy = [entry for entry in json.loads(path.read_text())["coverage"] if entry["heavy"]]
    assert len(heavy) == 5
    assert {(entry["status"], entry["schedule"]) for entry in heavy} == {("fallback", "default")}


def test_redeploy_reuses_the_build_and_skips_unchanged_files(embedded_endpoint: SshEndpoint, results: Path) -> None:
    deploy(results, "--board", "local", "--model", "tiny", "--runs", "1")
    proc = deploy(results, "--board", "local", "--model", "tiny", "--runs", "1")
    assert proc.returncode == 0, proc.stderr
    latest = json.loads(result_files(results)[-1].read_text())
    assert latest["build"]["cached"] is True
    assert latest["push"]["uploaded"] == []
    assert "Build        cached" in proc.stdout


def test_any_onnx_file_deploys_by_path(embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path) -> None:
    model = tmp_path / "my_net.onnx"
    shutil.copy(resolve_model("tiny").path, model)
    proc = deploy(results, "--board", "local", "--model", str(model), "--runs", "2")
    assert proc.returncode == 0, proc.stderr
    [path] = result_files(results)
    assert path.name.startswith("my_net-")
    assert json.loads(path.read_text())["check"]["passed"] is True


def test_a_wrong_output_fails_the_deploy_but_keeps_the_record(embedded_endpoint: SshEndpoint, results: Path) -> None:
    proc = deploy(results, "--board", "local", "--model", "tiny", "--runs", "1", "--tolerance", "1e-12")
    assert_one_clear_error(proc, "does not match onnxruntime")
    [path] = result_files(results)
    assert json.loads(path.read_text())["check"]["passed"] is False


def test_unknown_board(results: Path) -> None:
    proc = deploy(results, "--board", "no-such-board", "--model", "tiny")
    assert_one_clear_error(proc, "unknown board 'no-such-board'", "rk3399-emu")
    assert result_files(results) == []


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path, results: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nssh: {host: 127.0.0.1\ntarget: [\n")
    proc = deploy(results, "--board", str(broken), "--model", "tiny")
    assert_one_clear_error(proc, str(broken), "invalid YAML", "line")


def test_invalid_field_names_the_field(tmp_path: Path, results: Path) -> None:
    proc = deploy(results, "--board", str(profile_variant(tmp_path, "local", threads=0)), "--model", "tiny")
    assert_one_clear_error(proc, "field 'threads'")


def test_unfilled_real_board_profile_says_what_to_fill_in(results: Path) -> None:
    proc = deploy(results, "--board", "rk3399", "--model", "tiny")
    assert_one_clear_error(proc, "rk3399.yaml", "ssh.host", "CHANGE-ME")


def test_missing_model_file(results: Path) -> None:
    proc = deploy(results, "--board", "local", "--model", "nowhere/model.onnx")
    assert_one_clear_error(proc, "nowhere/model.onnx")


def test_unreachable_host(embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path) -> None:
    closed_port = 1
    profile = profile_variant(tmp_path, "local", ssh=direct_ssh(embedded_endpoint, port=closed_port))
    proc = deploy(results, "--board", str(profile), "--model", "tiny")
    assert_one_clear_error(proc, "reach")
    assert result_files(results) == []


def test_host_key_mismatch_is_refused(embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path) -> None:
    impostor = paramiko.Ed25519Key.from_private_key_file(str(embedded_endpoint.key_file))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"[{embedded_endpoint.host}]:{embedded_endpoint.port} {impostor.get_name()} {impostor.get_base64()}\n"
    )
    ssh = direct_ssh(embedded_endpoint, known_hosts=str(known_hosts))
    proc = deploy(results, "--board", str(profile_variant(tmp_path, "local", ssh=ssh)), "--model", "tiny")
    assert_one_clear_error(proc, "MISMATCH")
    assert result_files(results) == []


def test_library_for_another_architecture_is_refused_before_running(
    embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path
) -> None:
    """An aarch64 board profile whose target says x86_64: caught before the model runs."""
    x86_target = {"mtriple": "x86_64-linux-gnu", "mcpu": "x86-64", "mattr": [], "num-cores": 2}
    profile = profile_variant(tmp_path, "rk3399-emu", target=x86_target, cross_compiler="g++")
    proc = deploy(results, "--board", str(profile), "--model", "tiny")
    assert_one_clear_error(proc, "architecture")
    assert result_files(results) == []


def test_timeout_kills_the_run_on_the_board(
    embedded_endpoint: SshEndpoint, ssh_client: paramiko.SSHClient, results: Path
) -> None:
    started = time.monotonic()
    proc = deploy(results, "--board", "rk3399-emu", "--model", "tiny", "--runs", ENDLESS_RUNS, "--timeout", "3")
    assert_one_clear_error(proc, "timed out after 3 s")
    assert time.monotonic() - started < 60
    assert result_files(results) == []
    assert endless_runner_pids(ssh_client) == ""


def test_ctrl_c_stops_the_board_and_keeps_nothing(
    embedded_endpoint: SshEndpoint, ssh_client: paramiko.SSHClient, results: Path
) -> None:
    env = {**os.environ, "PIPELINE_RESULTS": str(results)}
    cmd = [*INVOKE, "deploy", "--board", "rk3399-emu", "--model", "tiny", "--runs", ENDLESS_RUNS]
    proc = interrupt_when(cmd, lambda: bool(endless_runner_pids(ssh_client)), cwd=ROOT, env=env)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert result_files(results) == []
    assert endless_runner_pids(ssh_client) == ""
