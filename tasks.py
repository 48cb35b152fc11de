"""invoke tasks: thin wiring of the pipeline's steps (profile -> build -> push -> run -> result) and printing."""

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from invoke import Context, Exit, task

from pipeline.errors import PipelineError


def _clean_errors(body: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends in one line and a non-zero exit, never a traceback."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        except PipelineError as error:
            raise Exit(f"error: {error.problem}" + (f" — fix: {error.fix}" if error.fix else ""), code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted: nothing half-written was kept", code=130) from None

    return wrapper


def _number(value: str | None, cast: Callable[[str], Any], flag: str, default: Any) -> Any:
    """invoke passes flags without a typed default as strings: convert them, with a clear error."""
    if value is None:
        return default
    try:
        number = cast(value)
    except ValueError:
        raise PipelineError(f"--{flag} must be a number, got '{value}'", f"pass e.g. --{flag} 10") from None
    if number < 0:
        raise PipelineError(f"--{flag} must not be negative, got '{value}'", f"pass e.g. --{flag} 10")
    return number


@contextmanager
def _step(console: Any, message: str) -> Iterator[None]:
    with console.status(message):
        yield


@task(
    help={
        "board": "board profile name (boards/<name>.yaml) or path to a profile",
        "model": "vgg16, resnet18, mobilenet_v2, tiny, or a path to an .onnx file",
        "runs": "timed runs (default: the profile's timing.runs)",
        "warmup": "warm-up runs (default: the profile's timing.warmup)",
        "timeout": "seconds before the run on the board is killed (default: the profile's timing.timeout_s)",
        "tolerance": "largest relative error against onnxruntime that still passes",
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
    tolerance: float = 1e-3,
) -> None:
    """Build the model for the board, push it, run it there, check the output, and record the timings."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    from pipeline import benchmark, check, compile, facts, inputs, results, summary, timing
    from pipeline.boards import load_board
    from pipeline.bundle import runtime_bundle
    from pipeline.connection import connect
    from pipeline.models import resolve_model
    from pipeline.push import push_model
    from pipeline.sshd import board_endpoint

    console = Console(stderr=True)
    profile = load_board(board)
    spec = resolve_model(model)
    warmup_runs = _number(warmup, int, "warmup", profile.timing.warmup)
    timed_runs = max(1, _number(runs, int, "runs", profile.timing.runs))
    timeout_s = _number(timeout, float, "timeout", profile.timing.timeout_s)

    with _step(console, f"Building {spec.name} for {profile.target.mtriple} ({profile.target.mcpu})..."):
        artifact = compile.build(spec, profile)
    bundle = runtime_bundle(profile.arch)
    data, input_file = inputs.make_input(spec.input_shape)

    with board_endpoint(profile.ssh) as endpoint, connect(endpoint) as client:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
        ) as progress:
            uploads: dict[str, Any] = {}

            def on_upload(name: str, sent: int, size: int) -> None:
                if name not in uploads:
                    uploads[name] = progress.add_task(f"Pushing {name}", total=size)
                progress.update(uploads[name], completed=sent)

            deployment = push_model(client, profile.remote_dir, bundle, artifact, input_file, on_progress=on_upload)
        with _step(console, f"Checking {profile.name} ({endpoint.host}:{endpoint.port})..."):
            runtime = benchmark.probe_runtime(client, profile, deployment)
            benchmark.check_architecture(artifact.arch, runtime, profile)
            board_facts = facts.collect_facts(client)
        if profile.emulated:
            console.print(f"[yellow]{profile.name} is emulated: each run is an emulation cost and can take minutes.")
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            bar = progress.add_task(f"Running on {profile.name}", total=1 + warmup_runs + timed_runs)

            def on_progress(phase: str, index: int, count: int, ms: float) -> None:
                progress.update(bar, advance=1, description=f"Running on {profile.name}: {phase} {index}/{count}")

            outcome = benchmark.run_benchmark(
                client, profile, deployment, spec.input_shape,
                warmup=warmup_runs, runs=timed_runs, timeout_s=timeout_s, on_progress=on_progress,
            )

    with _step(console, "Checking the output against onnxruntime..."):
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
        build=compile.artifact_summary(artifact),
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
    )
    path = results.write_result(result)
    print("\n".join(summary.summary_lines(result, path)))
    if not verdict.passed:
        raise Exit(
            f"error: the output on {profile.name} does not match onnxruntime (relative error "
            f"{verdict.relative_error:.2e} > {tolerance:.0e}) — fix: inspect the build; the result is kept at {path}",
            code=1,
        )


@task(help={"board": "board profile name or path", "model": "builtin model name or .onnx path"})
@_clean_errors
def build(c: Context, board: str = "rk3399-emu", model: str = "tiny") -> None:
    """Cross-compile a model for a board without deploying it (cached by content)."""
    from pipeline import compile
    from pipeline.boards import load_board
    from pipeline.models import resolve_model

    artifact = compile.build(resolve_model(model), load_board(board))
    state = "cached" if artifact.cached else f"compiled in {artifact.compile_seconds:.1f} s"
    print(f"{artifact.model} for {artifact.target['mtriple']} ({artifact.arch}): {state}")
    print(f"library {artifact.library}")


@task
@_clean_errors
def boards(c: Context) -> None:
    """List the board profiles."""
    from pipeline.boards import available_boards, load_board

    for name in available_boards():
        try:
            profile = load_board(name)
            print(f"{name:12} {profile.arch:8} {profile.description}")
        except PipelineError as error:
            print(f"{name:12} invalid: {error}")


@task(help={"args": "extra pytest arguments"})
def test(c: Context, args: str = "") -> None:
    """Run the test suite (starts its own sshd and emulated board)."""
    c.run(f"{sys.executable} -m pytest {args}", pty=False)
