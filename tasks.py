"""invoke tasks: thin wiring of the pipeline's steps (profile -> build -> push -> run -> result) and printing."""

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Context, Exit, task
from rich.console import Console

from pipeline.cli import flags
from pipeline.cli.progress import ConsoleProgress, MeasuringBar
from pipeline.errors import PipelineError, error_line, write_log


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


PROFILE_RUNS = 3  # profiled inferences for invoke deploy --profile: averaged, after the timed ones


_SHAPE_HELP = "the input's shape, e.g. 1,3,224,224: fixes symbolic dimensions (dynamic batch, free image size)"


_TVM_HELP = {"tvm": "TVM release to run the step under, e.g. 0.26 (default: 0.27, this environment's)"}


def _under_release(tvm: str | None) -> bool:
    """True when this command ran again under TVM release `tvm` (its exit code is this one's)."""
    from pipeline.tvm_release.rerun import rerun_under

    code = rerun_under(tvm, sys.argv[1:], on_progress=lambda line: print(line, file=sys.stderr, flush=True))
    if code:
        raise Exit(code=code)
    return code is not None


_VERBOSE_HELP = "under each task of the coverage table, its shapes and (untuned) the nearest record and how it differs"

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
        "verbose": _VERBOSE_HELP,
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
    verbose: bool = False,
) -> None:
    """Build the model for the board, push it, run it there, check the output, and record the timings."""
    if _under_release(tvm):
        return
    from pipeline.deploy.check import DEFAULT_TOLERANCE
    from pipeline.deploy.flow import deploy_once
    from pipeline.deploy.summary import deploy_summary_lines, kernel_table_lines

    limit = flags.positive(tolerance, "tolerance", DEFAULT_TOLERANCE, "1e-3")
    outcome = deploy_once(
        board,
        model,
        runs=flags.count(runs, "runs", None, least=1),
        warmup=flags.count(warmup, "warmup", None, least=0),
        timeout_s=flags.positive(timeout, "timeout", None, "600"),
        tolerance=limit,
        coverage=coverage,
        min_tuned_flops=flags.fraction(min_tuned_flops),
        input_shape=flags.shape(input_shape),
        profile_runs=PROFILE_RUNS if profile else 0,
        callbacks=ConsoleProgress(Console(stderr=True)).callbacks(),
        verbose=verbose,
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
        "verbose": _VERBOSE_HELP,
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
    verbose: bool = False,
) -> None:
    """Cross-compile a model for a board without deploying it (cached by content), applying the records
    in records/ for the board's target, and say which tasks run tuned schedules."""
    if _under_release(tvm):
        return
    from pipeline.board.profile import load_board
    from pipeline.compiler import builder
    from pipeline.compiler.coverage import check_policy, resolve_policy
    from pipeline.compiler.importer.model_file import resolve_model

    shape = flags.shape(input_shape)
    profile = load_board(board)
    settings = resolve_policy(profile.coverage, coverage, flags.fraction(min_tuned_flops))
    artifact = builder.build(resolve_model(model, shape), profile, migrate=migrate)
    print("\n".join(artifact.report_lines(verbose)))
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
        "choices-only": "only time each tuned conv against its Winograd forms on the board and keep the choices",
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
    choices_only: bool = False,
    input_shape: str | None = None,
    tvm: str | None = None,
) -> None:
    """Tune the model's conv/dense tasks with MetaSchedule, measuring on the board, and save the best
    schedules in records/ (first the choices between each tuned conv and its Winograd forms)."""
    if _under_release(tvm):
        return
    from pipeline.board.profile import load_board
    from pipeline.compiler.importer.model_file import resolve_model
    from pipeline.tuning.report import tune_lines
    from pipeline.tuning.tuner import tune as tune_model

    names = tuple(name for name in only.split(",") if name)
    budget = flags.count(trials, "trials", 64, least=1)
    shape = flags.shape(input_shape)
    profile = load_board(board)
    where = f"{profile.name} (emulated)" if profile.emulated else profile.name
    with MeasuringBar(Console(stderr=True), where) as bar:
        result = tune_model(
            resolve_model(model, shape),
            profile,
            budget,
            only=names,
            retune=retune,
            on_measured=bar.measured,
            choices_only=choices_only,
        )
    print("\n".join(tune_lines(result, profile, choices_only)))


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
    from pipeline.upgrade.migrate import migrate_model
    from pipeline.upgrade.report import migrate_lines

    profile = load_board(board)
    console = Console(stderr=True)
    result = migrate_model(
        resolve_model(model),
        profile,
        on_step=lambda text: console.print(text, markup=False),
        on_task=lambda row: console.print(f"measured {row.task}: {'kept' if row.kept else 'not kept'}", markup=False),
    )
    print("\n".join(migrate_lines(result, model, profile)))


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
    from pipeline.upgrade.report import upgrade_check_lines
    from pipeline.upgrade.upgrade_check import revision_check
    from pipeline.upgrade.upgrade_check import upgrade_check as check_upgrade

    count = flags.count(rounds, "rounds", None, least=1)

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
    print("\n".join(upgrade_check_lines(report, path)))
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
    if factor is not None and flags.positive(factor, "factor", 1.0, "1.05") < 1:
        raise PipelineError(f"--factor must be at least 1, got '{factor}'", "pass e.g. --factor 1.05")
    default = Budget()
    result = bisect_regression(
        board,
        model,
        good,
        bad,
        budget=Budget(
            flags.count(max_builds, "max-builds", default.builds, least=2),
            flags.positive(board_seconds, "board-seconds", default.board_seconds, "900"),
        ),
        settings=PairSettings(
            pairs=flags.count(pairs, "pairs", DEFAULT_PAIRS.pairs, least=8),
            factor=flags.positive(factor, "factor", DEFAULT_PAIRS.factor, "1.05"),
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
    history_path = flags.output_path(history, "history", folder=False) or spec.history
    report_path = flags.output_path(report, "report", folder=True) or spec.report
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
