"""`invoke nightly`'s loop: one board never runs twice at once, an interrupt keeps what was measured,
a regression exits non-zero and says why, and the real deploy runs through it."""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import paramiko
import pytest
import yaml
from interrupt import interrupt_when
from synthetic import latencies, synthetic_result, vgg16_coverage

from pipeline.board.remote import run
from pipeline.board.sshd import SshEndpoint
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.deploy.results import DeployResult
from pipeline.errors import PipelineError
from pipeline.nightly.confirm import Confirmation
from pipeline.nightly.history import History
from pipeline.nightly.loop import (
    CRON_TAG,
    Matrix,
    MatrixEntry,
    Point,
    board_locks,
    cron_line,
    install_cron,
    load_matrix,
    real_confirm,
    real_deploy,
    run_nightly,
)
from pipeline.nightly.provenance import RunProvenance
from pipeline.nightly.report import REPORT_NAME, SUMMARY_NAME, latency_figure, nightly_summary_lines, write_report
from pipeline.paths import ROOT
from pipeline.stats import compare_pairs

PROVENANCE = RunProvenance(pipeline_commit="abc", record_store_version=None)
MATRIX = Matrix(matrix=[MatrixEntry(boards=["rk3399", "rk3399-b"], models=["vgg16", "resnet18"], runs=20)])


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.sqlite") as store:
        yield store


@pytest.fixture
def locks(tmp_path: Path) -> Path:
    return tmp_path / "locks"


class Boards:
    """Stands in for the deploy: each point answers with the median and coverage it is told to have."""

    def __init__(self, median_ms: float = 990.0, coverage: str = "tuned", seed: int = 0) -> None:
        self.median_ms, self.coverage, self.seed = median_ms, coverage, seed
        self.deployed: list[Point] = []

    def __call__(self, point: Point) -> DeployResult:
        self.deployed.append(point)
        runs = latencies(self.median_ms, point.runs or 10, self.seed + len(self.deployed))
        coverage = vgg16_coverage(self.coverage)
        key = "tuned".ljust(16, "0") if self.coverage == "tuned" else "fallback".ljust(16, "0")
        return synthetic_result(runs, board=point.board, model=point.model, coverage=coverage, build_key=key)


def paired_like_the_runs(point: Point, baseline: DeployResult, current: DeployResult) -> Confirmation:
    """Stands in for the A/B session: the pairs are the two results' runs side by side, so a change
    the stand-in boards were told to make is confirmed."""
    pairs = min(len(baseline.timings.runs_ms), len(current.timings.runs_ms))
    verdict = compare_pairs(baseline.timings.runs_ms[:pairs], current.timings.runs_ms[:pairs], final=True)
    return Confirmation(verdict.state, f"A/B {verdict.state}: {verdict.reason}", verdict)


def test_the_matrix_is_every_board_with_every_model() -> None:
    assert [point.name for point in MATRIX.points()] == [
        "rk3399/vgg16",
        "rk3399/resnet18",
        "rk3399-b/vgg16",
        "rk3399-b/resnet18",
    ]


def test_the_shipped_matrix_file_is_valid() -> None:
    matrix = load_matrix(ROOT / "nightly.yaml")
    assert {"local/tiny", "rk3399-emu/tiny"} <= {point.name for point in matrix.points()}
    assert matrix.history == ROOT / "results" / "history.sqlite"


def test_a_bad_matrix_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump({"matrix": [{"boards": ["local"], "models": ["tiny"], "runs": 0}]}))
    with pytest.raises(PipelineError, match=r"field 'matrix.0.runs'"):
        load_matrix(path)


HOLDER = """
import sys, time
from pathlib import Path
from pipeline.nightly.loop import board_locks
with board_locks([sys.argv[1]], Path(sys.argv[2])):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def other_run_on_rk3399(locks: Path) -> Iterator[subprocess.Popen[str]]:
    """Another nightly process holding the lock of board rk3399."""
    cmd = [sys.executable, "-c", HOLDER, "rk3399", str(locks)]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield holder
        holder.kill()


def test_a_board_locked_by_another_run_is_refused_before_anything_runs(
    other_run_on_rk3399: subprocess.Popen[str], history: History, locks: Path
) -> None:
    boards = Boards()
    expected = f"another nightly run holds the lock for board rk3399 (pid {other_run_on_rk3399.pid})"
    with pytest.raises(PipelineError, match=re.escape(expected)):
        run_nightly(MATRIX, boards, history, PROVENANCE, confirm=paired_like_the_runs, lock_dir=locks)
    assert boards.deployed == []
    assert history.count() == 0


def test_other_boards_are_not_blocked(other_run_on_rk3399: subprocess.Popen[str], locks: Path) -> None:
    with board_locks(["rk3399-b", "local"], locks):
        pass


def test_a_killed_run_leaves_no_stale_lock(other_run_on_rk3399: subprocess.Popen[str], locks: Path) -> None:
    other_run_on_rk3399.kill()
    other_run_on_rk3399.wait()
    with board_locks(["rk3399"], locks):
        pass


def test_an_interrupted_run_keeps_every_point_it_measured(history: History, locks: Path) -> None:
    boards = Boards()

    def interrupted_on_third_point(point: Point) -> DeployResult:
        if len(boards.deployed) == 2:
            raise KeyboardInterrupt
        return boards(point)

    outcome = run_nightly(
        MATRIX, interrupted_on_third_point, history, PROVENANCE, confirm=paired_like_the_runs, lock_dir=locks
    )
    assert outcome.interrupted and outcome.exit_code == 130
    assert [o.point.name for o in outcome.outcomes] == ["rk3399/vgg16", "rk3399/resnet18"]
    assert [p.name for p in outcome.not_measured] == ["rk3399-b/vgg16", "rk3399-b/resnet18"]
    assert history.points() == [("rk3399", "resnet18"), ("rk3399", "vgg16")]
    assert nightly_summary_lines(outcome)[-1].startswith("INTERRUPTED: not measured: rk3399-b/vgg16, rk3399-b/resnet18")
    with board_locks(MATRIX.boards, locks):  # and the locks are free again
        pass


def test_a_regression_exits_1_and_names_its_cause(history: History, locks: Path, tmp_path: Path) -> None:
    first = run_nightly(
        MATRIX, Boards(990.0, "tuned"), history, PROVENANCE, confirm=paired_like_the_runs, lock_dir=locks
    )
    assert first.exit_code == 0 and all(o.verdict is None for o in first.outcomes)
    steady = run_nightly(
        MATRIX, Boards(990.0, "tuned", seed=100), history, PROVENANCE, confirm=paired_like_the_runs, lock_dir=locks
    )
    assert steady.exit_code == 0 and {o.verdict.change for o in steady.outcomes if o.verdict} == {"unchanged"}

    slower = run_nightly(
        MATRIX, Boards(1892.0, "fallback", seed=200), history, PROVENANCE, confirm=paired_like_the_runs, lock_dir=locks
    )
    assert slower.exit_code == 1
    regression = slower.with_change("regression")[0]
    assert regression.verdict is not None and regression.verdict.ratio == pytest.approx(1.91, abs=0.05)
    assert regression.causes[0].detail.startswith("9 conv2d workloads lost their tuned schedule")
    lines = nightly_summary_lines(slower)
    assert lines[0].endswith("4 points measured, 4 regressions, 0 improvements, 0 failed")
    assert lines[1].startswith("REGRESSION   rk3399/vgg16: median 18")
    assert lines[2].startswith("    likely cause: 9 conv2d workloads lost their tuned schedule")

    page = write_report(history, slower, tmp_path / "report")
    text = page.read_text()
    assert page.name == REPORT_NAME and text.count("data:image/png;base64,") == 4
    assert "REGRESSION" in text and (page.parent / SUMMARY_NAME).read_text().splitlines() == lines


def night_labels(history: History, nights: int) -> list[list[str]]:
    """The time axis of a plot of `nights` nights, one a day, each run by another pipeline commit."""
    for night in range(nights):
        result = synthetic_result(latencies(990.0, 10, night), created=f"2026-12-{night + 1:02d}T02:30:00Z")
        history.add(result, RunProvenance(pipeline_commit=f"{night:07d}abcdef", record_store_version=None))
    axes = latency_figure("rk3399", "vgg16", history.series("rk3399", "vgg16")).axes[0]
    assert axes.xaxis.get_offset_text().get_text() == ""  # no "+2.0794992e4" beside raw day numbers
    return [tick.get_text().split("\n") for tick in axes.get_xticklabels()]


def test_the_time_axis_names_each_night_by_its_date_and_pipeline_commit(history: History) -> None:
    labels = night_labels(history, 2)
    assert [date.fromisoformat(day) for day, _ in labels] == [date(2026, 12, 1), date(2026, 12, 2)]
    assert [commit for _, commit in labels] == ["0000000", "0000001"]


def test_a_long_history_labels_evenly_spaced_nights_up_to_tonight(history: History) -> None:
    labels = night_labels(history, 20)
    assert [date.fromisoformat(day).day for day, _ in labels] == [2, 5, 8, 11, 14, 17, 20]


def test_the_summary_wraps_on_the_page(history: History, locks: Path, tmp_path: Path) -> None:
    outcome = run_nightly(MATRIX, Boards(), history, PROVENANCE, confirm=paired_like_the_runs, lock_dir=locks)
    text = write_report(history, outcome, tmp_path / "report").read_text()
    assert "pre{" in text and "white-space:pre-wrap" in text.split("pre{")[1].split("}")[0]


def test_a_flag_on_the_baselines_very_build_needs_no_ab_and_raises_no_alarm(history: History, locks: Path) -> None:
    """Same build, same threads: run against itself the build could only show noise. The board's state
    is what changed, and its likely causes are listed."""

    def no_ab(point: Point, baseline: DeployResult, current: DeployResult) -> Confirmation:
        raise AssertionError("no A/B session for a build against itself")

    run_nightly(MATRIX, Boards(990.0, "tuned"), history, PROVENANCE, confirm=no_ab, lock_dir=locks)
    hot_night = Boards(1892.0, "tuned", seed=300)
    outcome = run_nightly(MATRIX, hot_night, history, PROVENANCE, confirm=no_ab, lock_dir=locks)
    assert outcome.exit_code == 0 and outcome.with_change("regression") == []
    assert all(o.verdict is not None and o.verdict.change == "regression" for o in outcome.outcomes)
    assert {o.confirmation.state for o in outcome.outcomes if o.confirmation} == {"same_build"}
    lines = nightly_summary_lines(outcome)
    assert lines[0].endswith("0 regressions, 0 improvements, 0 failed; flags not confirmed: 4 same build")
    assert lines[1].startswith("noise        rk3399/vgg16: flagged regression, median 18")
    assert lines[1].endswith("the board's state changed, not the deployment; no A/B")


def test_a_failed_point_is_reported_and_the_others_still_run(history: History, locks: Path) -> None:
    boards = Boards()

    def rk3399_b_unreachable(point: Point) -> DeployResult:
        if point.board == "rk3399-b":
            raise PipelineError("cannot reach rk3399-b at 10.0.0.7:22", "check the board")
        return boards(point)

    outcome = run_nightly(
        MATRIX, rk3399_b_unreachable, history, PROVENANCE, confirm=paired_like_the_runs, lock_dir=locks
    )
    assert outcome.exit_code == 2
    assert [o.point.name for o in outcome.failures] == ["rk3399-b/vgg16", "rk3399-b/resnet18"]
    assert history.count() == 2
    assert any(line.startswith("FAILED       rk3399-b/vgg16: cannot reach") for line in nightly_summary_lines(outcome))


def test_the_real_deploy_of_local_tiny_goes_into_the_history_with_its_per_task_times(
    embedded_endpoint: SshEndpoint, history: History, locks: Path, tmp_path: Path
) -> None:
    matrix = Matrix(matrix=[MatrixEntry(boards=["local"], models=["tiny"], runs=8, warmup=0)])
    deploy = real_deploy(results_dir=tmp_path / "results")
    first = run_nightly(matrix, deploy, history, PROVENANCE, confirm=real_confirm(matrix), lock_dir=locks)
    second = run_nightly(matrix, deploy, history, PROVENANCE, confirm=real_confirm(matrix), lock_dir=locks)
    assert first.exit_code == 0 and first.outcomes[0].verdict is None
    verdict = second.outcomes[0].verdict
    assert verdict is not None and verdict.method == "mann-whitney" and verdict.current_runs == 8
    assert second.exit_code == 0, "the same build twice is never a confirmed change"
    [older, newer] = history.series("local", "tiny")
    assert len(newer.result.timings.runs_ms) == 8 and newer.result.check.passed
    assert newer.provenance.pipeline_commit == "abc"
    assert len(list((tmp_path / "results").rglob("*.json"))) == 2
    tasks = history.kernel_times(newer.id)
    assert sorted(tasks, key=str) == sorted(newer.result.kernel_times, key=str)
    assert sum(task.name.startswith("fused_conv2d") for task in tasks) == 4
    assert all(task.calls >= 1 and task.ms >= 0 for task in tasks)


def test_the_cron_line_runs_this_matrix_on_its_schedule_and_speaks_only_on_failure() -> None:
    matrix = load_matrix(ROOT / "nightly.yaml")
    line = cron_line(ROOT / "nightly.yaml", matrix)
    assert line.startswith("30 2 * * * cd ")
    assert f"-m invoke nightly --matrix {ROOT / 'nightly.yaml'}" in line
    assert "|| tail -n 40" in line
    assert line.endswith(f"{CRON_TAG} {ROOT / 'nightly.yaml'}")


@pytest.fixture
def fake_crontab(tmp_path: Path) -> tuple[str, Path]:
    """A crontab command that keeps the table in a file instead of the user's real schedule."""
    table = tmp_path / "table"
    script = tmp_path / "crontab"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-l" ]; then [ -f {table} ] && exec cat {table}; echo "no crontab for user" >&2; exit 1; fi\n'
        f"cat > {table}\n"
    )
    script.chmod(0o755)
    return str(script), table


def test_installing_the_cron_line_twice_keeps_one_and_leaves_other_entries(fake_crontab: tuple[str, Path]) -> None:
    crontab, table = fake_crontab
    line = cron_line(ROOT / "nightly.yaml", load_matrix(ROOT / "nightly.yaml"))
    install_cron(line, crontab)
    table.write_text(table.read_text() + "0 * * * * echo other job\n")
    install_cron(line, crontab)
    assert table.read_text().splitlines() == ["0 * * * * echo other job", line]


def test_without_crontab_the_error_gives_the_line_to_install() -> None:
    with pytest.raises(PipelineError) as error:
        install_cron("30 2 * * * true # tvm-pipeline-nightly x", crontab="no-such-crontab")
    assert "30 2 * * * true" in error.value.fix


def invoke_nightly(tmp_path: Path, matrix: list[dict[str, object]], *args: str) -> subprocess.CompletedProcess[str]:
    """`invoke nightly` as cron runs it, on a matrix file whose history and report live in tmp_path."""
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump({"history": "history.sqlite", "report": "report", "matrix": matrix}))
    env = {**os.environ, "PIPELINE_RESULTS": str(tmp_path / "results")}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "nightly", "--matrix", str(path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_invoke_nightly_cannot_confirm_a_flag_whose_baseline_build_is_gone_and_raises_no_alarm(
    embedded_endpoint: SshEndpoint, tmp_path: Path
) -> None:
    """The real deploy against a planted baseline that was several times faster with an older TVM
    (tiny runs in about 0.05-0.2 ms here): flagged, but the baseline's build is not in the cache and a
    build today cannot be it, so nothing confirms it: reported with its likely cause, exit 0."""
    with History(tmp_path / "history.sqlite") as store:
        store.add(
            synthetic_result(latencies(0.002, 8, 0), board="local", model="tiny", tvm_version="0.26.0"), PROVENANCE
        )
    proc = invoke_nightly(tmp_path, [{"boards": ["local"], "models": ["tiny"], "runs": 8, "warmup": 1}])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(
        "1 point measured, 0 regressions, 0 improvements, 0 failed; flags not confirmed: 1 cannot confirm"
    )
    assert lines[1].startswith("unconfirmed  local/tiny: flagged regression, median ")
    assert "; cannot confirm: baseline build gone (" in lines[1]  # not in the cache, and no build today is it
    assert "    likely cause: TVM version changed: 0.26.0 -> 0.27.0.post1" in lines
    assert (tmp_path / "report" / REPORT_NAME).is_file()
    assert (tmp_path / "report" / SUMMARY_NAME).read_text().splitlines() == lines[:-1]
    with History(tmp_path / "history.sqlite") as store:
        [_, tonight] = store.series("local", "tiny")
        assert tonight.change == "regression" and tonight.confirmed_change is None
        assert tonight.confirmation is not None and tonight.confirmation.state == "cannot_confirm"


def test_invoke_nightly_on_a_locked_board_is_one_clear_error(tmp_path: Path) -> None:
    board = str(ROOT / "boards" / "local.yaml")
    with board_locks([board]):
        proc = invoke_nightly(tmp_path, [{"boards": [board], "models": ["tiny"]}])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"another nightly run holds the lock for board {board} (pid {os.getpid()})" in error
    assert "fix: wait for it to finish" in error


def test_invoke_nightly_print_cron_prints_the_line_and_runs_nothing(tmp_path: Path) -> None:
    proc = invoke_nightly(tmp_path, [{"boards": ["local"], "models": ["tiny"]}], "--print-cron")
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.endswith(f"{CRON_TAG} {tmp_path / 'nightly.yaml'}")
    assert not (tmp_path / "history.sqlite").exists()


def test_ctrl_c_during_invoke_nightly_keeps_the_measured_points_and_stops_the_board(
    embedded_endpoint: SshEndpoint, ssh_client: paramiko.SSHClient, tmp_path: Path
) -> None:
    """The second point runs until Ctrl-C: the first stays stored, the report says what was not measured."""
    endless = "100000"
    second_model = tmp_path / "tiny_again.onnx"
    shutil.copy(resolve_model("tiny").path, second_model)
    matrix = [
        {"boards": ["local"], "models": ["tiny"], "runs": 8, "warmup": 0},
        {"boards": ["local"], "models": [str(second_model)], "runs": int(endless), "warmup": 0},
    ]
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump({"history": "history.sqlite", "report": "report", "matrix": matrix}))
    env = {**os.environ, "PIPELINE_RESULTS": str(tmp_path / "results")}
    cmd = [sys.executable, "-m", "invoke", "nightly", "--matrix", str(path)]
    runner_pids = f"pgrep -f '[t]vm_runner --lib.*--runs {endless}' || true"
    proc = interrupt_when(
        cmd, lambda: bool(run(ssh_client, runner_pids, timeout_s=10).stdout.strip()), cwd=ROOT, env=env
    )
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    last_lines = proc.stdout.splitlines()[-2:]
    assert last_lines[0] == f"INTERRUPTED: not measured: local/{second_model} (everything above is stored)"
    with History(tmp_path / "history.sqlite") as store:
        assert store.points() == [("local", "tiny")]
    assert (tmp_path / "report" / REPORT_NAME).is_file()
    assert run(ssh_client, runner_pids, timeout_s=10).stdout.strip() == ""
