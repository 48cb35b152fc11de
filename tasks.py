"""invoke tasks: thin wiring of the pipeline's steps (profile -> build -> push -> run -> result) and printing."""

import functools
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from invoke import Context, Exit, task
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from pipeline.errors import PipelineError, error_line, write_log

if TYPE_CHECKING:  # the pipeline's modules load inside the tasks, so `invoke --list` stays quick
    from pipeline.deploy.flow import DeployCallbacks, Step


def _clean_errors(body: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends in one line and a non-zero exit, never a traceback. An exception that is not a
    PipelineError is a bug of ours: one line says so, and the traceback goes to the log it names."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        except PipelineError as error:
            raise Exit(error.line(), code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted: nothing half-written was kept", code=130) from None
        except Exit:
            raise
        except Exception as bug:
            log = write_log("bug", traceback.format_exc())
            problem = f"bug in the pipeline ({type(bug).__name__}: {bug})"
            raise Exit(error_line(problem, "please report it with the log file", log), code=3) from None

    return wrapper


@overload
def _count(value: str | None, flag: str, default: int, least: int) -> int: ...
@overload
def _count(value: str | None, flag: str, default: None, least: int) -> int | None: ...
def _count(value: str | None, flag: str, default: int | None, least: int) -> int | None:
    """invoke passes flags without a typed default as strings: a whole number of at least `least`."""
    if value is None:
        return default
    example = f"pass e.g. --{flag} {max(least, 10)}"
    try:
        number = int(value)
    except ValueError:
        raise PipelineError(f"--{flag} must be a whole number, got '{value}'", example) from None
    if number < least:
        raise PipelineError(f"--{flag} must be at least {least}, got '{value}'", example)
    return number


@overload
def _positive(value: str | None, flag: str, default: float, example: str) -> float: ...
@overload
def _positive(value: str | None, flag: str, default: None, example: str) -> float | None: ...
def _positive(value: str | None, flag: str, default: float | None, example: str) -> float | None:
    """A finite number above zero (seconds, a tolerance); nan and inf are refused too."""
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise PipelineError(f"--{flag} must be a number, got '{value}'", f"pass e.g. --{flag} {example}") from None
    if not math.isfinite(number) or number <= 0:
        raise PipelineError(f"--{flag} must be a positive number, got '{value}'", f"pass e.g. --{flag} {example}")
    return number


def _fraction(value: str | None) -> float | None:
    """--min-tuned-flops as a number; its range is checked with the rest of the coverage policy."""
    try:
        return None if value is None else float(value)
    except ValueError:
        raise PipelineError(f"--min-tuned-flops must be a fraction, got '{value}'", "pass e.g. 0.9") from None


class ConsoleProgress:
    """Draws a deploy's progress callbacks on a console: a spinner per step, bars for the uploads and runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bars: Progress | None = None
        self._bar_ids: dict[str, TaskID] = {}
        self._step_text = ""

    def callbacks(self) -> "DeployCallbacks":
        from pipeline.deploy.flow import DeployCallbacks

        return DeployCallbacks(
            on_step=self.step,
            on_line=self.line,
            on_warning=self.warning,
            on_upload=self.upload,
            on_run=self.run,
        )

    @contextmanager
    def step(self, step: "Step") -> Iterator[None]:
        self._step_text = step.text
        if step.kind == "push":
            transfer = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with self._showing(Progress(*transfer, console=self.console)):
                yield
        elif step.kind == "run":
            counted = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with self._showing(Progress(*counted, console=self.console)) as bars:
                self._bar_ids["run"] = bars.add_task(step.text, total=step.total)
                yield
        else:
            with self.console.status(step.text):
                yield

    @contextmanager
    def _showing(self, bars: Progress) -> Iterator[Progress]:
        with bars:
            self._bars, self._bar_ids = bars, {}
            try:
                yield bars
            finally:
                self._bars = None

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def warning(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True, style="yellow")

    def upload(self, name: str, sent: int, size: int) -> None:
        if self._bars is None:
            return
        if name not in self._bar_ids:
            self._bar_ids[name] = self._bars.add_task(f"{self._step_text} {name}", total=size)
        self._bars.update(self._bar_ids[name], completed=sent)

    def run(self, phase: str, index: int, count: int, ms: float) -> None:
        if self._bars is not None:
            description = f"{self._step_text}: {phase} {index}/{count}"
            self._bars.update(self._bar_ids["run"], advance=1, description=description)


PROFILE_RUNS = 3  # profiled inferences for invoke deploy --profile: averaged, after the timed ones


def _shape(value: str | None) -> tuple[int, ...] | None:
    """--input-shape 1,3,224,224; its rank and fixed sizes are checked against the model's input."""
    from pipeline.compiler.importer.model_file import parse_input_shape

    return None if value is None else parse_input_shape(value)


def _output_path(value: str | None, flag: str, folder: bool) -> Path | None:
    """A path the task writes to, its folder created now: a bad one fails before a long run, not after it."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not folder and path.is_dir():
        raise PipelineError(f"--{flag} {value} is a folder", f"pass a file path, e.g. --{flag} results/history.sqlite")
    try:
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PipelineError(
            f"--{flag} {value}: cannot create its folder ({err.strerror})", "pass a path in a writable folder"
        ) from None
    return path


_SHAPE_HELP = "the input's shape, e.g. 1,3,224,224: fixes symbolic dimensions (dynamic batch, free image size)"


_TVM_HELP = {"tvm": "TVM release to run the step under, e.g. 0.26 (default: 0.27, this environment's)"}


def _under_release(tvm: str | None) -> bool:
    """Run this command again in the environment of TVM release `tvm` when that is not the running one
    (created on first use, with progress); True when it ran there. The same checkout's code runs."""
    if tvm is None:
        return False
    import subprocess

    from pipeline.paths import ROOT
    from pipeline.tvm_release.catalog import get_release, running_release
    from pipeline.tvm_release.environment import release_python

    release = get_release(tvm)
    if release == running_release():
        return False
    python = release_python(release, on_progress=lambda line: print(line, file=sys.stderr, flush=True))
    args, skip = [], False
    for word in sys.argv[1:]:
        if skip or word.startswith("--tvm="):
            skip = False
            continue
        skip = word == "--tvm"
        if not skip:
            args.append(word)
    code = subprocess.run([str(python), "-m", "invoke", *args], cwd=ROOT).returncode
    if code:
        raise Exit(code=code)
    return True


_COVERAGE_HELP = {
    "coverage": "warn or refuse when too few conv/dense FLOPs run tuned schedules (default: the profile's)",
    "min-tuned-flops": "the share of conv/dense FLOPs that must run tuned schedules, 0 to 1 (default: 0.9)",
}


@task(
    help={
        "board": "board profile name (boards/<name>.yaml) or path to a profile",
        "model": "vgg16, resnet18, mobilenet_v2, tiny, or a path to an .onnx file",
        "runs": "timed runs (default: the profile's timing.runs)",
        "warmup": "warm-up runs (default: the profile's timing.warmup)",
        "timeout": "seconds before the run on the board is killed (default: the profile's timing.timeout_s)",
        "tolerance": "largest relative error against onnxruntime that still passes (default: 1e-3)",
        "input-shape": _SHAPE_HELP,
        "profile": f"after the timed runs, time every kernel call over {PROFILE_RUNS} more runs and print the per-task table",
        **_COVERAGE_HELP,
        **_TVM_HELP,
    }
)
@_clean_errors
def deploy(
    c: Context,
    board: str = "rk3399-emu",
    model: str = "tiny",
    runs: str | None = None,
    warmup: str | None = None,
    timeout: str | None = None,
    tolerance: str | None = None,
    coverage: str | None = None,
    min_tuned_flops: str | None = None,
    input_shape: str | None = None,
    profile: bool = False,
    tvm: str | None = None,
) -> None:
    """Build the model for the board, push it, run it there, check the output, and record the timings."""
    if _under_release(tvm):
        return
    from pipeline.deploy.check import DEFAULT_TOLERANCE
    from pipeline.deploy.flow import deploy_once
    from pipeline.deploy.summary import deploy_summary_lines, kernel_table_lines

    limit = _positive(tolerance, "tolerance", DEFAULT_TOLERANCE, "1e-3")
    outcome = deploy_once(
        board,
        model,
        runs=_count(runs, "runs", None, least=1),
        warmup=_count(warmup, "warmup", None, least=0),
        timeout_s=_positive(timeout, "timeout", None, "600"),
        tolerance=limit,
        coverage=coverage,
        min_tuned_flops=_fraction(min_tuned_flops),
        input_shape=_shape(input_shape),
        profile_runs=PROFILE_RUNS if profile else 0,
        callbacks=ConsoleProgress(Console(stderr=True)).callbacks(),
    )
    result, path = outcome.result, outcome.path
    if profile:
        print("\n".join(kernel_table_lines(result)))
    print("\n".join(deploy_summary_lines(result, path)))
    if not result.check.passed:
        raise Exit(
            f"error: the output on {result.board} does not match onnxruntime (relative error "
            f"{result.check.relative_error:.2e} > {limit:.0e}) — fix: inspect the build; the result is kept at {path}",
            code=1,
        )


@task(
    help={
        "board": "board profile name or path",
        "model": "builtin model name or .onnx path",
        "input-shape": _SHAPE_HELP,
        "migrate": "apply older TVM releases' records of the same workloads when they replay and compute the same "
        "(--no-migrate: only this release's records, as TVM's own lookup)",
        **_COVERAGE_HELP,
        **_TVM_HELP,
    }
)
@_clean_errors
def build(
    c: Context,
    board: str = "rk3399-emu",
    model: str = "tiny",
    coverage: str | None = None,
    min_tuned_flops: str | None = None,
    input_shape: str | None = None,
    tvm: str | None = None,
    migrate: bool = True,
) -> None:
    """Cross-compile a model for a board without deploying it (cached by content), applying the records
    in records/ for the board's target, and say which tasks run tuned schedules."""
    if _under_release(tvm):
        return
    from pipeline.board.profile import load_board
    from pipeline.compiler import builder
    from pipeline.compiler.coverage import check_policy, coverage_lines, resolve_policy
    from pipeline.compiler.importer.model_file import resolve_model

    shape = _shape(input_shape)
    profile = load_board(board)
    settings = resolve_policy(profile.coverage, coverage, _fraction(min_tuned_flops))
    artifact = builder.build(resolve_model(model, shape), profile, migrate=migrate)
    state = "cached" if artifact.cached else f"compiled in {artifact.compile_seconds:.1f} s"
    print(
        f"{artifact.model} for {artifact.target['mtriple']} ({artifact.arch}) with TVM {artifact.tvm_version}: {state}"
    )
    print(f"library {artifact.library}")
    print("\n".join(coverage_lines(artifact.coverage) + artifact.layout_lines()))
    warning = check_policy(artifact.coverage, settings, profile.name, model)
    if warning:
        print(warning, file=sys.stderr)


@task(
    help={
        "board": "board profile name (boards/<name>.yaml) or path to a profile",
        "model": "also count this model's build in the disk check (builtin name or .onnx path)",
    }
)
@_clean_errors
def doctor(c: Context, board: str = "rk3399-emu", model: str | None = None) -> None:
    """Connect to the board and check what a deploy and a tune need: one line per check, exit 1 on a problem."""
    from pipeline.board import doctor as preflight
    from pipeline.board.bundle import runtime_bundle
    from pipeline.board.profile import load_board
    from pipeline.board.session import open_board
    from pipeline.compiler import builder
    from pipeline.compiler.importer.model_file import resolve_model

    profile = load_board(board)
    files = dict(runtime_bundle(profile.arch).files)
    if model is not None:
        artifact = builder.build(resolve_model(model), profile)
        files.update({"model": artifact.library, "params": artifact.params})
    with open_board(profile) as session:
        print(f"doctor: {profile.name} at {session.endpoint.host}:{session.endpoint.port}")
        checks = preflight.all_checks(session, preflight.push_needs(files))
    print("\n".join(check.line() for check in checks))
    problems = sum(not check.ok for check in checks)
    if problems:
        raise Exit(f"doctor: {problems} problem(s) on {profile.name}", code=1)


@task(
    help={
        "board": "board profile name or path: candidates are timed on that board over TVM RPC",
        "model": "builtin model name or .onnx path",
        "trials": "schedules to measure in all; the largest conv/dense tasks get them first (default 64)",
        "only": "comma-separated task names (see invoke build's table) to tune instead of all",
        "retune": "search tasks that already have records too; a record is replaced only by a faster one",
        "input-shape": _SHAPE_HELP,
        **_TVM_HELP,
    }
)
@_clean_errors
def tune(
    c: Context,
    board: str = "local",
    model: str = "tiny",
    trials: str | None = None,
    only: str = "",
    retune: bool = False,
    input_shape: str | None = None,
    tvm: str | None = None,
) -> None:
    """Tune the model's conv/dense tasks with MetaSchedule, measuring on the board, and save the best
    schedules in records/."""
    if _under_release(tvm):
        return
    from pipeline.board.profile import load_board
    from pipeline.compiler.importer.model_file import resolve_model
    from pipeline.records.store import shown
    from pipeline.tuning.tuner import tune as tune_model

    names = tuple(name for name in only.split(",") if name)
    budget = _count(trials, "trials", 64, least=1)
    shape = _shape(input_shape)
    profile = load_board(board)
    where = f"{profile.name} (emulated)" if profile.emulated else profile.name
    columns = (TextColumn("Measuring on {task.fields[where]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, console=Console(stderr=True))
    bar: TaskID | None = None

    def on_measured(count: int, total: int) -> None:
        """The bar appears when the search starts (not while the model is imported)."""
        nonlocal bar
        if bar is None:
            progress.start()
            bar = progress.add_task("tune", total=total, where=where)
        progress.update(bar, completed=count)

    try:
        result = tune_model(
            resolve_model(model, shape),
            profile,
            budget,
            only=names,
            retune=retune,
            on_measured=on_measured,
        )
    finally:
        progress.stop()
    emulated = ", emulated: the records prove the loop, not the board's speed" if profile.emulated else ""
    print(
        f"tuned {len(result.tuned)} tasks with {result.trials} trials in {result.seconds:.0f} s on {profile.name}{emulated}"
    )
    if result.tuned:
        print(f"{len(result.from_default)} of them started from their measured default schedule")
    for path in result.saved:
        print(f"record {shown(path)}")
    if result.already_covered:
        print(f"{len(result.already_covered)} tasks already had records for this target")
    if result.left_for_later:
        print(f"{len(result.left_for_later)} smaller tasks left for a later run: {', '.join(result.left_for_later)}")


@task(
    help={
        "board": "board profile name or path: each migrated schedule is timed there against the default one",
        "model": "builtin model name or .onnx path",
    }
)
@_clean_errors
def migrate(c: Context, board: str = "local", model: str = "tiny") -> None:
    """Measure the schedules migrated from older TVM releases' records on the board and keep, as records of
    this release, those that are not slower than the default schedule."""
    from pipeline.board.profile import load_board
    from pipeline.compiler.importer.model_file import resolve_model
    from pipeline.records.store import shown
    from pipeline.upgrade.migrate import migrate_model

    profile = load_board(board)
    console = Console(stderr=True)
    result = migrate_model(
        resolve_model(model),
        profile,
        on_step=lambda text: console.print(text, markup=False),
        on_task=lambda row: console.print(f"measured {row.task}: {'kept' if row.kept else 'not kept'}", markup=False),
    )
    for line in result.rejected:
        print(f"rejected: {line}")
    if not result.measured:
        print(f"no migrated schedule to measure for {model} on {profile.name} under TVM {result.release}")
        return
    print(f"{'task':44} {'migrated':>10} {'default':>10}  outcome")
    for row in result.measured:
        outcome = f"kept as {shown(row.saved)}" if row.saved else f"not kept: {row.reason}"
        print(f"{row.task[:44]:44} {row.migrated_us:>8.1f}µs {row.default_us:>8.1f}µs  {outcome}")
        print(f"{'':44}   from {row.source}")
    kept = sum(1 for row in result.measured if row.kept)
    emulated = " (measured under emulation)" if profile.emulated else ""
    print(f"kept {kept} of {len(result.measured)} migrated schedules as TVM {result.release} records{emulated}")


@task(
    help={
        "board": "board profile name or path",
        "model": "builtin model name or .onnx path",
        "to": "the TVM release to upgrade to, e.g. 0.27",
        "from": "the TVM release in use now (default: this environment's)",
        "rounds": "interleaved rounds, one timed run of each release per round (default: the profile's timing.runs)",
        "migrate": "let the new release migrate the old release's records (--no-migrate: TVM's own lookup)",
        "from-rev": "instead of releases: a revision of this pipeline (sha, tag, HEAD~3), built by its own code",
        "to-rev": "with --from-rev: the revision to compare it with (default: this working checkout)",
    }
)
@_clean_errors
def upgrade_check(
    c: Context,
    board: str = "local",
    model: str = "tiny",
    to: str = "",
    from_: str | None = None,
    rounds: str | None = None,
    migrate: bool = True,
    from_rev: str | None = None,
    to_rev: str | None = None,
) -> None:
    """Build the model under two TVM releases (or by two revisions of this pipeline), run both interleaved on
    the board, and say whether the upgrade keeps latency and coverage (exit 0) or not (exit 1, with the
    reason); the comparison goes to results/."""
    from pipeline.errors import shown
    from pipeline.upgrade.upgrade_check import KINDS, revision_check
    from pipeline.upgrade.upgrade_check import upgrade_check as check_upgrade

    count = _count(rounds, "rounds", None, least=1)

    def show(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if from_rev is not None:
        if to or from_:
            raise PipelineError("--from-rev compares revisions, --from/--to releases", "pass one pair, not both")
        report, path = revision_check(board, model, from_rev, to_rev, count, on_progress=show)
    elif to_rev is not None:
        raise PipelineError("--to-rev needs --from-rev", "name the revision to compare with, e.g. --from-rev HEAD~5")
    elif not to:
        raise PipelineError("--to is missing", "name the release to upgrade to, e.g. --to 0.27")
    else:
        report, path = check_upgrade(board, model, to, from_, count, migrate, on_progress=show)
    old, new = report.old, report.new
    rows = [
        ("TVM", old.tvm_version, new.tvm_version),
        ("median", f"{old.stats.median_ms:.3f} ms", f"{new.stats.median_ms:.3f} ms"),
        ("p90", f"{old.stats.p90_ms:.3f} ms", f"{new.stats.p90_ms:.3f} ms"),
        ("runs", str(old.stats.count), str(new.stats.count)),
        *(
            (
                kind,
                f"{old.coverage.counts[kind]} ({old.coverage.flop_shares[kind]:.0%} FLOPs)",
                f"{new.coverage.counts[kind]} ({new.coverage.flop_shares[kind]:.0%} FLOPs)",
            )
            for kind in KINDS
        ),
        ("output", f"{old.check.relative_error:.1e} rel. error", f"{new.check.relative_error:.1e} rel. error"),
    ]
    timing_kind = "emulated, " if report.emulated else ""
    print(f"{report.model} on {report.board} ({timing_kind}{report.rounds} interleaved rounds)")
    print(f"{'':12} {old.name:>24} {new.name:>24}")
    for name, before, after in rows:
        print(f"{name:12} {before:>24} {after:>24}")
    verdict = report.verdict
    p_value = f", p={verdict.p_value:.2g}" if verdict.p_value is not None else ""
    print(
        f"latency      {new.slug}/{old.slug} median ratio {verdict.ratio:.3f}: {verdict.change} ({verdict.method}{p_value}; {verdict.reason})"
    )
    if report.changes:
        print(f"{len(report.changes)} conv/dense tasks changed their schedule kind or time:")
        for change in report.changes:
            times = (
                f"  {change.before_ms:.3f} -> {change.after_ms:.3f} ms ({change.after_ms / change.before_ms - 1:+.0%})"
                if change.before_ms and change.after_ms
                else ""
            )
            print(f"  {change.task}: {change.before} -> {change.after}{times}")
    else:
        print("no conv/dense task changed its schedule kind or time")
    print(f"Result       {shown(path)}")
    if not report.passed:
        raise Exit(f"upgrade-check: not safe: {report.reason}", code=1)
    print(f"upgrade-check: ok: {report.reason}")


@task(
    help={
        "board": "board profile name or path: each commit's build is timed there against the good one",
        "model": "builtin model name or .onnx path",
        "good": "a revision of the pipeline where the model was fast (sha, tag, branch, HEAD~5)",
        "bad": "a later revision where it is slower (default: HEAD)",
        "max-builds": "commits the bisection may build, both ends included (default 12)",
        "board-seconds": "board time the A/B sessions may take in all (default 900)",
        "pairs": "interleaved A/B pairs per commit at first (default 8)",
        "factor": "how much slower a commit's median ratio must be to count as slower (default: the nightly's 1.05)",
    }
)
@_clean_errors
def bisect(
    c: Context,
    board: str = "local",
    model: str = "tiny",
    good: str = "",
    bad: str = "HEAD",
    max_builds: str | None = None,
    board_seconds: str | None = None,
    pairs: str | None = None,
    factor: str | None = None,
) -> None:
    """Build the model at the commits between --good and --bad (binary search, each in a worktree), time each
    A/B against --good on the board, and name the first commit that made it slower."""
    from pipeline.upgrade.bisect import Budget
    from pipeline.upgrade.culprit import DEFAULT_PAIRS, PairSettings, bisect_regression

    if not good:
        raise PipelineError("--good is missing", "name a revision where the model was fast, e.g. --good HEAD~10")
    if factor is not None and _positive(factor, "factor", 1.0, "1.05") < 1:
        raise PipelineError(f"--factor must be at least 1, got '{factor}'", "pass e.g. --factor 1.05")
    default = Budget()
    result = bisect_regression(
        board,
        model,
        good,
        bad,
        budget=Budget(
            _count(max_builds, "max-builds", default.builds, least=2),
            _positive(board_seconds, "board-seconds", default.board_seconds, "900"),
        ),
        settings=PairSettings(
            pairs=_count(pairs, "pairs", DEFAULT_PAIRS.pairs, least=8),
            factor=_positive(factor, "factor", DEFAULT_PAIRS.factor, "1.05"),
        ),
        on_progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    for step in result.steps:
        measured = step.measurement
        print(
            f"{step.revision.short} x{measured.ratio:.3f} {measured.state.replace('_', ' '):12} {step.revision.subject[:60]}"
        )
    print(f"{result.builds} builds, {result.board_seconds:.0f} s on {result.board} for {result.commits} commits")
    print(f"bisect: {result.line()}")


@task
@_clean_errors
def boards(c: Context) -> None:
    """List the board profiles."""
    from pipeline.board.profile import available_boards, load_board

    for name in available_boards():
        try:
            profile = load_board(name)
            print(f"{name:12} {profile.arch:8} {profile.description}")
        except PipelineError as error:
            print(f"{name:12} invalid: {error}")


@task(
    help={"args": "extra pytest arguments", "fast": "only the fast tier: no sshd, qemu or TVM build (under a minute)"}
)
def test(c: Context, args: str = "", fast: bool = False) -> None:
    """Run the test suite (starts its own sshd and emulated board)."""
    tier = "-m 'not board' " if fast else ""
    c.run(f"{sys.executable} -m pytest {tier}{args}", pty=False)


@task
def lint(c: Context) -> None:
    """ruff's lint and format check and mypy, as configured in pyproject.toml; the test command runs it too."""
    c.run(f"{sys.executable} -m ruff check .", pty=False)
    c.run(f"{sys.executable} -m ruff format --check .", pty=False)
    c.run(f"{sys.executable} -m mypy", pty=False)


@task(
    help={
        "matrix": "the nightly matrix file (boards x models, runs per point)",
        "history": "history database (default: the matrix file's `history`)",
        "report": "folder for index.html and summary.txt (default: the matrix file's `report`)",
        "install_cron": "install the matrix's schedule in the user's crontab instead of running",
        "print_cron": "print the crontab line instead of running",
    }
)
@_clean_errors
def nightly(
    c: Context,
    matrix: str = "nightly.yaml",
    history: str | None = None,
    report: str | None = None,
    install_cron: bool = False,
    print_cron: bool = False,
) -> None:
    """Deploy every point, compare each with its recent nights, confirm a flag A/B on the board, store it,
    write the report; exit 1 on a confirmed regression."""

    from pipeline.nightly import loop as runner
    from pipeline.nightly.history import History
    from pipeline.nightly.provenance import RunProvenance, pipeline_commit
    from pipeline.nightly.report import nightly_summary_lines, point_line, write_report
    from pipeline.records.store import load_store

    matrix_path = Path(matrix)
    spec = runner.load_matrix(matrix_path)
    if install_cron or print_cron:
        line = runner.cron_line(matrix_path, spec)
        if install_cron:
            runner.install_cron(line)
            print(f"installed in crontab: {line}")
        else:
            print(line)
        return
    history_path = _output_path(history, "history", folder=False) or spec.history
    report_path = _output_path(report, "report", folder=True) or spec.report
    console = Console(stderr=True)

    def show(outcome: runner.PointOutcome) -> None:
        console.print(point_line(outcome), markup=False, highlight=False, soft_wrap=True)

    provenance = RunProvenance(pipeline_commit=pipeline_commit(), record_store_version=load_store().version)
    deploy = runner.real_deploy(ConsoleProgress(console).callbacks())
    with History(history_path) as store:
        confirm = runner.real_confirm(
            spec, on_progress=lambda line: console.print(f"  {line}", style="dim", markup=False, highlight=False)
        )
        bisect = runner.real_bisect(
            on_progress=lambda line: console.print(f"  {line}", style="dim", markup=False, highlight=False)
        )
        outcome = runner.run_nightly(spec, deploy, store, provenance, confirm=confirm, on_point=show, bisect=bisect)
        page = write_report(store, outcome, report_path)
    print("\n".join(nightly_summary_lines(outcome)))
    print(f"Report       {page}")
    if outcome.exit_code:
        raise Exit(code=outcome.exit_code)
