"""The nightly run: deploy every point of a matrix (boards x models), store each result as soon as it is
measured, compare it with the point's recent history, confirm a change of the deployment by an A/B
session on the board, and say whether anything regressed. Only a confirmed change is an alarm: a
comparison between nights also measures the machine's state on each night.

The deploy and the confirmation are passed in as callables, so the loop runs the same with the real
ones (the task) and with stand-ins (tests). A per-board lock keeps two runs off the same board: timings measured while
another run loads the board would be noise, and the embedded boards share one sshd port.
"""

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import Field, PositiveInt, ValidationError

from pipeline.deploy.results import DeployResult, utc_now
from pipeline.errors import PipelineError
from pipeline.nightly.causes import Cause, changed_tasks, likely_causes
from pipeline.nightly.confirm import Confirmation, ConfirmSettings, confirm_on_board, same_deployment
from pipeline.nightly.history import DEFAULT_PATH, Comparison, History
from pipeline.nightly.provenance import RunProvenance
from pipeline.paths import CACHE_DIR, RECORDS_DIR, RESULTS_DIR, ROOT
from pipeline.records.snapshots import find_snapshot, keep_snapshot
from pipeline.records.store import load_store
from pipeline.stats import DEFAULT_FACTOR, DEFAULT_WINDOW, Verdict, compare_window
from pipeline.validation import StrictModel, first_error

if TYPE_CHECKING:  # the deploy (and with it the build) loads only when the real deploy runs
    from pipeline.deploy.flow import DeployCallbacks

DEFAULT_LOCK_DIR = CACHE_DIR / "locks"
CRON_TAG = "# tvm-pipeline-nightly"

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_FAILED = 2
EXIT_INTERRUPTED = 130
PROFILE_RUNS = 3  # profiled inferences per point: the per-task times the history keeps


class MatrixEntry(StrictModel):
    """Every board with every model; runs, warmup and timeout default to each board profile's."""

    boards: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    runs: int | None = Field(None, ge=1)
    warmup: int | None = Field(None, ge=0)
    timeout_s: float | None = Field(None, gt=0)
    # Fixes the models' symbolic input dimensions, like `invoke deploy --input-shape`.
    input_shape: tuple[PositiveInt, ...] | None = Field(None, min_length=1)


class Matrix(StrictModel):
    """The nightly matrix file. Relative paths are relative to the file's folder."""

    matrix: list[MatrixEntry] = Field(min_length=1)
    history: Path = DEFAULT_PATH
    report: Path = RESULTS_DIR / "nightly"
    factor: float = Field(DEFAULT_FACTOR, ge=1.0)
    window: int = Field(DEFAULT_WINDOW, ge=1)  # earlier nights a point is judged against
    confirm: ConfirmSettings = ConfirmSettings()
    schedule: str = "30 2 * * *"

    def points(self) -> list["Point"]:
        return [
            Point(board, model, entry.runs, entry.warmup, entry.timeout_s, entry.input_shape)
            for entry in self.matrix
            for board in entry.boards
            for model in entry.models
        ]

    @property
    def boards(self) -> list[str]:
        return sorted({point.board for point in self.points()})


@dataclass(frozen=True)
class Point:
    board: str
    model: str
    runs: int | None = None
    warmup: int | None = None
    timeout_s: float | None = None
    input_shape: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return f"{self.board}/{self.model}"


DeployPoint = Callable[[Point], DeployResult]
# A flagged point's baseline and tonight's result, run A/B on the point's board.
ConfirmPoint = Callable[[Point, DeployResult, DeployResult], Confirmation]
# A confirmed regression whose pipeline commit changed: the point, the baseline's commit and tonight's ->
# the bisection's one line (its culprit, or what it could not decide).
BisectPoint = Callable[[Point, str, str], str]


@dataclass(frozen=True)
class PointOutcome:
    """What happened to one point. `verdict` is None for a point's first result (nothing to compare
    with) and for failures; `confirmation` is the A/B session's answer to a flagged verdict; `tasks`
    names the tasks whose time moved in a confirmed change; `error` says why a point failed (deploy
    error or wrong output)."""

    point: Point
    result_id: int | None
    median_ms: float | None
    verdict: Verdict | None = None
    causes: list[Cause] = field(default_factory=list)
    error: str | None = None
    confirmation: Confirmation | None = None
    tasks: list[str] = field(default_factory=list)
    culprit: str | None = None  # the bisection's line for a confirmed regression whose pipeline commit changed

    @property
    def alarm(self) -> str | None:
        """regression or improvement when the A/B session confirmed it, else None."""
        return self.confirmation.confirmed_change if self.confirmation is not None else None

    @property
    def unconfirmed(self) -> bool:
        """Flagged by the comparison with the history but not confirmed on the board (reported, no alarm)."""
        return self.verdict is not None and self.verdict.flagged and self.alarm is None


@dataclass(frozen=True)
class NightlyOutcome:
    started: str
    outcomes: list[PointOutcome]
    not_measured: list[Point]
    interrupted: bool

    def with_change(self, change: str) -> list[PointOutcome]:
        """The points whose change the A/B session confirmed."""
        return [o for o in self.outcomes if o.alarm == change]

    @property
    def unconfirmed(self) -> list[PointOutcome]:
        return [o for o in self.outcomes if o.unconfirmed]

    @property
    def failures(self) -> list[PointOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    @property
    def exit_code(self) -> int:
        """A confirmed regression wins over everything else: it is what cron mail and CI alert on."""
        if self.with_change("regression"):
            return EXIT_REGRESSION
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failures else EXIT_OK


def load_matrix(path: Path) -> Matrix:
    if not path.is_file():
        raise PipelineError(f"no nightly matrix file {path}", "pass --matrix PATH (see nightly.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
        matrix = Matrix.model_validate(data)
    except yaml.YAMLError:
        raise PipelineError(f"{path}: invalid YAML", "fix the syntax of the matrix file") from None
    except ValidationError as exc:
        raise PipelineError(f"{path}: {first_error(exc)}", "see nightly.yaml for the format") from None
    base = path.resolve().parent
    return matrix.model_copy(update={"history": base / matrix.history, "report": base / matrix.report})


@contextmanager
def board_locks(boards: Iterable[str], lock_dir: Path = DEFAULT_LOCK_DIR) -> Iterator[None]:
    """Hold an exclusive lock per board for the whole run, or fail at once naming the board. The
    kernel drops flock locks when the holder dies, so a killed run never leaves a stale lock."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for board in sorted(set(boards)):
            path = lock_dir / f"nightly-{re.sub(r'[^A-Za-z0-9_.-]', '_', board)}.lock"
            handle = stack.enter_context(path.open("a+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                raise PipelineError(
                    f"another nightly run holds the lock for board {board}" + (f" (pid {holder})" if holder else ""),
                    f"wait for it to finish; the lock is {path}",
                ) from None
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield


def run_nightly(
    matrix: Matrix,
    deploy_point: DeployPoint,
    history: History,
    provenance: RunProvenance,
    *,
    confirm: ConfirmPoint,
    lock_dir: Path = DEFAULT_LOCK_DIR,
    on_point: Callable[[PointOutcome], None] | None = None,
    bisect: BisectPoint | None = None,
) -> NightlyOutcome:
    """Deploy each point, compare it with its recent history, confirm a flagged change with `confirm`,
    store it at once (one transaction each). Ctrl-C stops the loop but keeps every point already stored."""
    started = utc_now()
    points = matrix.points()
    outcomes: list[PointOutcome] = []
    with board_locks(matrix.boards, lock_dir):
        for index, point in enumerate(points):
            try:
                outcome = _measure(point, matrix, deploy_point, confirm, history, provenance, bisect)
            except KeyboardInterrupt:
                return NightlyOutcome(started, outcomes, points[index:], interrupted=True)
            outcomes.append(outcome)
            if on_point is not None:
                on_point(outcome)
    return NightlyOutcome(started, outcomes, [], interrupted=False)


def _measure(
    point: Point,
    matrix: Matrix,
    deploy_point: DeployPoint,
    confirm: ConfirmPoint,
    history: History,
    provenance: RunProvenance,
    bisect: BisectPoint | None = None,
) -> PointOutcome:
    try:
        result = deploy_point(point)
    except PipelineError as error:
        return PointOutcome(point, None, None, error=str(error))
    median_ms = result.timings.stats.median_ms
    check = result.check
    if not check.passed:
        result_id = history.add(result, provenance)
        mismatch = f"output does not match {check.reference} (relative error {check.relative_error:.2e})"
        return PointOutcome(point, result_id, median_ms, error=mismatch)
    window = history.window(result.board, result.model, result.timing_kind, matrix.window)
    if not window:
        return PointOutcome(point, history.add(result, provenance), median_ms)
    judged = compare_window([entry.result.timings.runs_ms for entry in window], result.timings.runs_ms, matrix.factor)
    verdict, baseline = judged.verdict, window[judged.reference]
    causes: list[Cause] = []
    confirmation, tasks = None, []
    flagged = verdict.change
    same = same_deployment(baseline.result, result)
    if same and (flagged == "regression" or flagged == "improvement"):
        confirmation = Confirmation(
            "same_build",
            f"same build and threads as the baseline ({result.build.key}): the board's state changed, not the "
            "deployment; no A/B",
        )
        causes = likely_causes(baseline.result, result, flagged, before=baseline.provenance, after=provenance)
    elif not same:  # a changed deployment is always confirmed: between nights a real change can hide in noise
        confirmation = confirm(point, baseline.result, result)
        direction = confirmation.confirmed_change or (flagged if flagged in ("regression", "improvement") else None)
        if confirmation.state != "not_confirmed" and direction is not None:  # noise has no cause
            causes = likely_causes(baseline.result, result, direction, before=baseline.provenance, after=provenance)
            tasks = changed_tasks(confirmation.baseline_tasks, confirmation.current_tasks, direction)
    result_id = history.add(result, provenance, Comparison(baseline.id, verdict, causes, confirmation))
    culprit = None
    good, bad = baseline.provenance.pipeline_commit, provenance.pipeline_commit
    if bisect is not None and confirmation is not None and confirmation.confirmed_change == "regression":
        if good and bad and good != bad:  # a dirty checkout bisects from its HEAD: its changes are not a commit
            culprit = bisect(point, good.removesuffix("-dirty"), bad.removesuffix("-dirty"))
            history.set_culprit(result_id, culprit)
    return PointOutcome(
        point, result_id, median_ms, verdict, causes, confirmation=confirmation, tasks=tasks, culprit=culprit
    )


def real_deploy(
    callbacks: "DeployCallbacks | None" = None, results_dir: Path = RESULTS_DIR, records_dir: Path = RECORDS_DIR
) -> DeployPoint:
    """The deploy `invoke deploy --profile` does, as the loop calls it (each result also goes to results/
    as JSON, with its per-task times); its progress goes to `callbacks` (none shown without). The record
    store it used is kept by version, so a later A/B session can build with these records again."""
    from pipeline.deploy.flow import SILENT, deploy_once

    def deploy_point(point: Point) -> DeployResult:
        outcome = deploy_once(
            point.board,
            point.model,
            runs=point.runs,
            warmup=point.warmup,
            timeout_s=point.timeout_s,
            input_shape=point.input_shape,
            profile_runs=PROFILE_RUNS,
            callbacks=callbacks or SILENT,
            results_dir=results_dir,
            records_dir=records_dir,
        )
        if find_snapshot(outcome.result.record_store_version) is None:  # read the store again only when new
            keep_snapshot(load_store(records_dir))
        return outcome.result

    return deploy_point


def real_confirm(matrix: Matrix, on_progress: Callable[[str], None] | None = None) -> ConfirmPoint:
    """The A/B session on the point's board, with the matrix's factor and board-time budget."""

    def confirm_point(point: Point, baseline: DeployResult, current: DeployResult) -> Confirmation:
        """A board that fails during the session leaves the flag unconfirmed; the point is still stored."""
        try:
            return confirm_on_board(
                point.board,
                point.model,
                baseline,
                current,
                factor=matrix.factor,
                settings=matrix.confirm,
                on_progress=on_progress,
            )
        except PipelineError as error:
            return Confirmation("cannot_confirm", f"cannot confirm: the A/B session failed: {error}")

    return confirm_point


def real_bisect(on_progress: Callable[[str], None] | None = None) -> BisectPoint:
    """The bisection of `invoke bisect` with its default budget; a failure is said in the line, the point kept."""

    def bisect_point(point: Point, good: str, bad: str) -> str:
        from pipeline.upgrade.culprit import bisect_regression

        if good == bad:
            return f"not bisected: tonight's commit {bad[:12]} is the baseline's, only uncommitted changes differ"
        try:
            return bisect_regression(point.board, point.model, good, bad, on_progress=on_progress).line()
        except PipelineError as error:
            return f"bisection failed: {error}"

    return bisect_point


def cron_line(matrix_path: Path, matrix: Matrix) -> str:
    """Runs the nightly from this checkout; output goes to a log, and only a failing run (regression,
    failed point, lock held) prints its tail, so cron mails exactly when there is something to see."""
    log = matrix.report / "nightly.log"
    command = (
        f"cd {shlex.quote(str(ROOT))} && mkdir -p {shlex.quote(str(log.parent))} && "
        f"{shlex.quote(sys.executable)} -m invoke nightly --matrix {shlex.quote(str(matrix_path.resolve()))} "
        f">> {shlex.quote(str(log))} 2>&1 || tail -n 40 {shlex.quote(str(log))}"
    )
    return f"{matrix.schedule} {command.replace('%', chr(92) + '%')} {CRON_TAG} {matrix_path.resolve()}"


def install_cron(line: str, crontab: str = "crontab") -> None:
    """Add `line` to the user's crontab, replacing an earlier line for the same matrix file."""
    if shutil.which(crontab) is None:
        raise PipelineError("crontab is not installed on this machine", f"add this line to your scheduler: {line}")
    listed = subprocess.run([crontab, "-l"], capture_output=True, text=True, check=False)
    if listed.returncode != 0 and "no crontab" not in listed.stderr:
        raise PipelineError(f"crontab -l failed: {listed.stderr.strip()}", f"add this line yourself: {line}")
    tag = line[line.index(CRON_TAG) :]
    kept = [entry for entry in listed.stdout.splitlines() if not entry.endswith(tag)] if listed.returncode == 0 else []
    installed = subprocess.run([crontab, "-"], input="\n".join([*kept, line]) + "\n", capture_output=True, text=True)
    if installed.returncode != 0:
        raise PipelineError(f"crontab - failed: {installed.stderr.strip()}", f"add this line yourself: {line}")
