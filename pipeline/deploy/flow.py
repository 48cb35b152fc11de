"""One deploy end to end (profile -> build -> push -> run -> check -> result), callable from any task:
`invoke deploy` runs it once and prints the summary, `invoke nightly` runs it for every matrix point."""

from dataclasses import asdict, dataclass
from pathlib import Path

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

from pipeline.board import facts
from pipeline.board.bundle import runtime_bundle
from pipeline.board.connection import connect
from pipeline.board.profile import load_board
from pipeline.board.sshd import board_endpoint
from pipeline.build import builder
from pipeline.build.model_file import resolve_model
from pipeline.deploy import check, execute, inputs, results, timing
from pipeline.deploy.layout import push_model
from pipeline.paths import RESULTS_DIR
from pipeline.records.coverage import check_policy, coverage_lines, resolve_policy
from pipeline.records.store import load_store
from pipeline.releases.catalog import get_release


@dataclass(frozen=True)
class DeployOutcome:
    result: results.DeployResult
    path: Path


def deploy_once(
    board: str,
    model: str,
    *,
    runs: int | None = None,
    warmup: int | None = None,
    timeout_s: float | None = None,
    tolerance: float = check.DEFAULT_TOLERANCE,
    coverage: str | None = None,
    min_tuned_flops: float | None = None,
    console: Console | None = None,
    results_dir: Path = RESULTS_DIR,
) -> DeployOutcome:
    """Deploy and time `model` on `board`; None means the profile's default. The result is written even
    when the output check fails, so the caller decides what a failed check means. Progress goes to
    `console` (nothing is shown without one), with the coverage table; `coverage` and `min_tuned_flops`
    override the profile's coverage policy, whose `refuse` stops the deploy before anything is pushed."""
    console = console or Console(quiet=True)
    profile = load_board(board)
    spec = resolve_model(model)
    warmup_runs = profile.timing.warmup if warmup is None else warmup
    timed_runs = max(1, profile.timing.runs if runs is None else runs)
    timeout = profile.timing.timeout_s if timeout_s is None else timeout_s
    coverage_settings = resolve_policy(profile.coverage, coverage, min_tuned_flops)

    with console.status(f"Building {spec.name} for {profile.target.mtriple} ({profile.target.mcpu})..."):
        artifact = builder.build(spec, profile)
    for line in coverage_lines(artifact.coverage):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    warning = check_policy(artifact.coverage, coverage_settings, profile.name, model)
    if warning:
        console.print(warning, markup=False, highlight=False, soft_wrap=True, style="yellow")
    bundle = runtime_bundle(profile.arch, get_release(artifact.release))  # the runtime of the build's release
    data, input_file = inputs.make_input(spec.input_shape)

    with board_endpoint(profile.ssh) as endpoint, connect(endpoint) as client:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
        ) as progress:
            uploads: dict[str, TaskID] = {}

            def on_upload(name: str, sent: int, size: int) -> None:
                if name not in uploads:
                    uploads[name] = progress.add_task(f"Pushing {name}", total=size)
                progress.update(uploads[name], completed=sent)

            deployment = push_model(client, profile.remote_dir, bundle, artifact, input_file, on_progress=on_upload)
        with console.status(f"Checking {profile.name} ({endpoint.host}:{endpoint.port})..."):
            runtime = execute.probe_runtime(client, profile, deployment)
            execute.check_architecture(artifact.arch, runtime, profile)
            board_facts = facts.collect_facts(client)
        if profile.emulated:
            console.print(f"[yellow]{profile.name} is emulated: each run is an emulation cost and can take minutes.")
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            bar = progress.add_task(f"Running on {profile.name}", total=1 + warmup_runs + timed_runs)

            def on_progress(phase: str, index: int, count: int, ms: float) -> None:
                progress.update(bar, advance=1, description=f"Running on {profile.name}: {phase} {index}/{count}")

            outcome = execute.run_benchmark(
                client,
                profile,
                deployment,
                spec.input_shape,
                warmup=warmup_runs,
                runs=timed_runs,
                timeout_s=timeout,
                on_progress=on_progress,
            )

    with console.status("Checking the output against onnxruntime..."):
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
        build=builder.artifact_summary(artifact),
        push=asdict(deployment.report),
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
        record_store_version=load_store().version,
    )
    return DeployOutcome(result, results.write_result(result, results_dir))
