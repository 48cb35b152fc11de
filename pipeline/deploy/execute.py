"""Run step: start the TVM runtime on the board, time it, and bring the output back."""

import json
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from pipeline.board.remote import CommandResult
from pipeline.board.session import Board
from pipeline.deploy.layout import Deployment
from pipeline.errors import PipelineError

ProgressCallback = Callable[[str, int, int, float], None]


@dataclass(frozen=True)
class RuntimeInfo:
    """What the board's runtime reports about itself (the architecture it actually executes)."""

    arch: str
    cores: int
    runner_version: int


@dataclass(frozen=True)
class KernelTime:
    """One function the VM called during an inference (a kernel or a VM builtin), per inference."""

    name: str
    calls: int
    ms: float


@dataclass(frozen=True)
class RunnerReport:
    """The runner's one JSON line on stdout: the timings of one benchmark."""

    load_ms: float
    first_ms: float
    warmup_ms: list[float]
    runs_ms: list[float]
    peak_rss_kb: int
    output_shape: list[int]
    profile: list[KernelTime]


def parse_report(stdout: str) -> RunnerReport:
    """The runner's report: the last line of its stdout (the one parser of it)."""
    report = json.loads(stdout.strip().splitlines()[-1])
    return RunnerReport(
        load_ms=float(report["load_ms"]),
        first_ms=float(report["first_ms"]),
        warmup_ms=[float(x) for x in report["warmup_ms"]],
        runs_ms=[float(x) for x in report["runs_ms"]],
        peak_rss_kb=int(report["peak_rss_kb"]),
        output_shape=[int(x) for x in report["output_shape"]],
        profile=[KernelTime(str(k["name"]), int(k["calls"]), float(k["ms"])) for k in report.get("profile", [])],
    )


@dataclass(frozen=True)
class RunOutcome:
    load_ms: float
    first_ms: float
    warmup_ms: list[float]
    runs_ms: list[float]
    output: np.ndarray
    peak_rss_kb: int
    profile: list[KernelTime]


def probe_runtime(board: Board, deployment: Deployment) -> RuntimeInfo:
    """Ask the pushed runner what it runs as: proves the board can execute code of the profile's architecture."""
    profile = board.profile
    result = board.run_runtime(
        runner_command(deployment),
        ["--info"],
        cwd=deployment.remote_dir,
        timeout_s=max(profile.ssh.connect_timeout_s, 60.0),
    )
    if result.exit_code != 0:
        detail = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.exit_code}").splitlines()[-1]
        raise PipelineError(
            f"board {board.name} cannot execute the {profile.arch} runtime ({detail})",
            f"the board's architecture does not match target.mtriple {profile.target.mtriple} or command_prefix "
            f"in boards/{board.name}.yaml",
        )
    info = json.loads(result.stdout.strip().splitlines()[-1])
    return RuntimeInfo(arch=info["arch"], cores=int(info["cores"]), runner_version=int(info["runner_version"]))


def require_same_arch(library_arch: str, runtime: RuntimeInfo, board: Board) -> None:
    """Refuse to run a library the board's runtime cannot load, before anything runs."""
    if library_arch != runtime.arch:
        raise PipelineError(
            f"the model library is {library_arch} but board {board.name} runs {runtime.arch} code",
            f"set target.mtriple and cross_compiler in boards/{board.name}.yaml for {runtime.arch}, then redeploy",
        )


def run_benchmark(
    board: Board,
    deployment: Deployment,
    input_shape: tuple[int, ...],
    *,
    warmup: int,
    runs: int,
    timeout_s: float,
    profile_runs: int = 0,
    on_progress: ProgressCallback | None = None,
) -> RunOutcome:
    """First run, warm-up, then `runs` timed runs, then `profile_runs` inferences with every kernel call
    timed; the output file is fetched and removed from the board."""
    output_name = f"outputs/out-{uuid.uuid4().hex[:12]}.bin"
    args = runner_args(deployment, input_shape, output_name, warmup=warmup, runs=runs, profile_runs=profile_runs)
    result = board.run_runtime(
        runner_command(deployment),
        args,
        before="mkdir -p outputs",
        cwd=deployment.remote_dir,
        timeout_s=timeout_s,
        on_stderr_line=_progress_parser(on_progress),
    )
    remote_output = str(PurePosixPath(deployment.remote_dir) / output_name)
    try:
        raise_if_runner_failed(result, board.name)
        report = parse_report(result.stdout)
        output = _fetch_output(board, remote_output, report.output_shape)
    finally:
        board.run(f"rm -f {shlex.quote(remote_output)}", timeout_s=30.0)
    return RunOutcome(
        load_ms=report.load_ms,
        first_ms=report.first_ms,
        warmup_ms=report.warmup_ms,
        runs_ms=report.runs_ms,
        output=output,
        peak_rss_kb=report.peak_rss_kb,
        profile=report.profile,
    )


def raise_if_runner_failed(result: CommandResult, board_name: str, during: str = "") -> None:
    """A non-zero exit of the runner as one line: its last message on stderr."""
    if result.exit_code != 0:
        detail = (result.stderr.strip() or f"exit code {result.exit_code}").splitlines()[-1]
        raise PipelineError(
            f"the TVM runtime failed on board {board_name}{during}: {detail}", "see the board's message"
        )


def runner_args(
    deployment: Deployment,
    input_shape: tuple[int, ...],
    output_name: str,
    *,
    warmup: int,
    runs: int,
    profile_runs: int = 0,
) -> list[str]:
    """The runner's arguments for one benchmark: it prints one JSON line (the timings) on stdout."""
    return [
        "--lib",
        deployment.library,
        "--params",
        deployment.params,
        "--input",
        deployment.input,
        "--input-shape",
        ",".join(map(str, input_shape)),
        "--output",
        output_name,
        "--warmup",
        str(warmup),
        "--runs",
        str(runs),
        "--profile",
        str(profile_runs),
    ]


def runner_command(deployment: Deployment) -> str:
    """The pushed runner as a shell word, relative to the deployment's folder."""
    return shlex.quote(f"./{deployment.runner}")


def _progress_parser(on_progress: ProgressCallback | None) -> Callable[[str], None] | None:
    if on_progress is None:
        return None

    def parse(line: str) -> None:
        words = line.split()
        if len(words) == 5 and words[0] == "progress":
            on_progress(words[1], int(words[2]), int(words[3]), float(words[4]))

    return parse


def _fetch_output(board: Board, remote_path: str, shape: list[int]) -> np.ndarray:
    return np.frombuffer(board.read_file(remote_path), dtype=np.float32).reshape(shape)
