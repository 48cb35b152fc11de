"""One deploy end to end (profile -> build -> push -> run -> check -> result), callable from any task:
`invoke deploy` runs it once and prints the summary, `invoke nightly` runs it for every matrix point.
It reports progress through a `DeployCallbacks`, so whoever calls it decides how (and whether) to show it."""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.board import facts
from pipeline.board.profile import load_board
from pipeline.board.session import open_board
from pipeline.board.sync import Progress as UploadCallback
from pipeline.compiler import builder
from pipeline.compiler.coverage import check_policy, coverage_lines, resolve_policy
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.deploy import ab_session, check, execute, inputs, results, timing
from pipeline.deploy.execute import ProgressCallback as RunCallback
from pipeline.paths import RECORDS_DIR, RESULTS_DIR
from pipeline.records.store import load_store

StepKind = Literal["build", "push", "probe", "run", "check"]


@dataclass(frozen=True)
class Step:
    """A step of the deploy: `text` says what it does ("Building tiny for ..."); `total` is the number
    of progress events a `run` step will report (first run, warm-up and timed runs)."""

    kind: StepKind
    text: str
    total: int | None = None


def _no_step(step: Step) -> AbstractContextManager[None]:
    return nullcontext()


def _ignore(*args: object) -> None:
    return None


@dataclass(frozen=True)
class DeployCallbacks:
    """How deploy_once tells its caller what it is doing; every callback defaults to doing nothing.
    `on_step` returns a context the step runs inside (its end is the context's exit, also on failure),
    `on_upload` and `on_run` are called inside the push and run steps, `on_line` carries lines for a
    person (the coverage table) and `on_warning` warnings (coverage below the policy, emulated timings)."""

    on_step: Callable[[Step], AbstractContextManager[None]] = _no_step
    on_line: Callable[[str], None] = _ignore
    on_warning: Callable[[str], None] = _ignore
    on_upload: UploadCallback = _ignore
    on_run: RunCallback = _ignore


SILENT = DeployCallbacks()


@dataclass(frozen=True)
class DeployOutcome:
    result: results.DeployResult
    path: Path


def deploy_once(
    board_name: str,
    model: str,
    *,
    runs: int | None = None,
    warmup: int | None = None,
    timeout_s: float | None = None,
    tolerance: float = check.DEFAULT_TOLERANCE,
    coverage: str | None = None,
    min_tuned_flops: float | None = None,
    input_shape: tuple[int, ...] | None = None,
    profile_runs: int = 0,
    callbacks: DeployCallbacks = SILENT,
    results_dir: Path = RESULTS_DIR,
    records_dir: Path = RECORDS_DIR,
    verbose: bool = False,
) -> DeployOutcome:
    """Deploy and time `model` on `board`; None means the profile's default. The result is written even
    when the output check fails, so the caller decides what a failed check means. Progress and the
    coverage table go to `callbacks`; `coverage` and `min_tuned_flops` override the profile's coverage
    policy, whose `refuse` stops the deploy before anything is pushed. `profile_runs` more inferences
    after the timed ones time every kernel call (the result's `kernel_times`). `input_shape` fixes the
    model input's symbolic dimensions; `records_dir` is the record store the build applies."""
    profile = load_board(board_name)
    spec = resolve_model(model, input_shape)
    warmup_runs = profile.timing.warmup if warmup is None else warmup
    timed_runs = max(1, profile.timing.runs if runs is None else runs)
    timeout = profile.timing.timeout_s if timeout_s is None else timeout_s
    coverage_settings = resolve_policy(profile.coverage, coverage, min_tuned_flops)

    building = f"Building {spec.name} for {profile.target.mtriple} ({profile.target.mcpu})..."
    with callbacks.on_step(Step("build", building)):
        artifact = builder.build(spec, profile, records_dir=records_dir)
    for line in coverage_lines(artifact.coverage, verbose) + artifact.layout_lines():
        callbacks.on_line(line)
    warning = check_policy(artifact.coverage, coverage_settings, profile.name, model)
    if warning:
        callbacks.on_warning(warning)
    data, input_file = inputs.make_input(spec.input_shape)

    with open_board(profile) as session:
        where = f"{session.endpoint.host}:{session.endpoint.port}"
        with callbacks.on_step(Step("probe", f"Checking what {profile.name} ({where}) needs for this deploy...")):
            ab_session.check_board(session, [artifact])
        with callbacks.on_step(Step("push", "Pushing")):
            deployment = ab_session.push_build(session, artifact, input_file, on_upload=callbacks.on_upload)
        with callbacks.on_step(Step("probe", f"Checking {profile.name} ({where})...")):
            runtime = ab_session.check_runtime(session, artifact, deployment)
            board_facts = facts.collect_facts(session)
        if profile.emulated:
            callbacks.on_warning(f"{profile.name} is emulated: each run is an emulation cost and can take minutes.")
        with callbacks.on_step(
            Step("run", f"Running on {profile.name}", total=1 + warmup_runs + timed_runs + profile_runs)
        ):
            outcome = execute.run_benchmark(
                session,
                deployment,
                spec.input_shape,
                warmup=warmup_runs,
                runs=timed_runs,
                timeout_s=timeout,
                profile_runs=profile_runs,
                on_progress=callbacks.on_run,
            )

    with callbacks.on_step(Step("check", "Checking the output against onnxruntime...")):
        verdict = check.compare(outcome.output, check.reference_output(spec.path, spec.input_name, data), tolerance)
    result = results.DeployResult(
        created=results.utc_now(),
        board=profile.name,
        emulated=profile.emulated,
        timing_kind="emulated" if profile.emulated else "native",
        model=spec.name,
        tvm_version=artifact.tvm_version,
        target=artifact.target,
        threads=profile.threads,
        build=artifact,
        push=deployment.report,
        runtime_arch=runtime.arch,
        board_facts=board_facts,
        timings=results.Timings(
            load_ms=outcome.load_ms,
            first_ms=outcome.first_ms,
            warmup_ms=outcome.warmup_ms,
            runs_ms=outcome.runs_ms,
            stats=timing.summarize(outcome.runs_ms),
        ),
        check=verdict,
        coverage=artifact.coverage.result_entries(),
        coverage_tuned_share=artifact.coverage.tuned_share,
        record_store_version=load_store(records_dir).version,
        peak_rss_kb=outcome.peak_rss_kb,
        kernel_times=outcome.profile,
    )
    return DeployOutcome(result, results.write_result(result, results_dir))
