"""One A/B session on a board, for whoever compares builds there (the nightly's confirmation,
upgrade-check, migrate): the board is checked once, every side's build and runtime are pushed side by
side (each build has its own folder on the board, each release its runtime folder), and the sides run
interleaved in one connection (A B, B A, ...), so noise of the moment hits all sides alike.

It is also the one place that checks a board and pushes a build for a single deploy (deploy/flow.py).
"""

import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.board import doctor
from pipeline.board.bundle import RuntimeBundle, runtime_bundle
from pipeline.board.profile import BoardProfile
from pipeline.board.session import Board, open_board
from pipeline.board.sync import Progress as UploadCallback
from pipeline.compiler.builder import LIBRARY_NAME, PARAMS_NAME, BuildArtifact
from pipeline.deploy import execute
from pipeline.deploy.execute import KernelTime, RunOutcome, RuntimeInfo
from pipeline.deploy.layout import Deployment, push_model, runtime_dir
from pipeline.errors import PipelineError
from pipeline.tvm_release.catalog import get_release

Progress = Callable[[str], None]
MARKER = "@@ab-sample"
# A sample is a low percentile of its batch: other processes on the board only ever add time (on a
# shared 2-core host a batch's median moved 2x between pairs, its 10th percentile far less), and a
# slower build is slower in its fastest runs too.
SAMPLE_PERCENTILE = 10


def bundle_for(profile: BoardProfile, artifact: BuildArtifact) -> RuntimeBundle:
    """The runtime of the release that built `artifact`, for the board's architecture."""
    return runtime_bundle(profile.arch, get_release(artifact.release))


def check_board(board: Board, artifacts: Sequence[BuildArtifact]) -> None:
    """Refuse builds the board cannot run (tools, libc, room for all of them), before anything is pushed."""
    files: dict[str, Path] = {}
    for artifact in artifacts:
        bundle = bundle_for(board.profile, artifact)
        files.update({str(PurePosixPath(runtime_dir(bundle.release)) / n): p for n, p in bundle.files.items()})
        files[f"models/{artifact.key}/{LIBRARY_NAME}"] = artifact.library
        files[f"models/{artifact.key}/{PARAMS_NAME}"] = artifact.params
    doctor.require_ready(board, files)


def push_build(
    board: Board, artifact: BuildArtifact, input_file: Path, on_upload: UploadCallback | None = None
) -> Deployment:
    """Push the build, its release's runtime and the input (unchanged files are skipped by hash)."""
    return push_model(board, bundle_for(board.profile, artifact), artifact, input_file, on_progress=on_upload)


def check_runtime(board: Board, artifact: BuildArtifact, deployment: Deployment) -> RuntimeInfo:
    """Ask the pushed runtime what it runs as, and refuse a library of another architecture."""
    runtime = execute.probe_runtime(board, deployment)
    execute.require_same_arch(artifact.arch, runtime, board)
    return runtime


@dataclass(frozen=True)
class AbSide:
    """One side of the session: a build, run with `threads` runtime threads; `label` names it in lines."""

    label: str
    artifact: BuildArtifact
    threads: int


@dataclass(frozen=True)
class SampleSize:
    """How one sample is taken: `runs` timed runs (after `warmup`) split over `processes` runner processes."""

    runs: int
    processes: int
    warmup: int

    @classmethod
    def for_model(
        cls, typical_ms: float, min_runs: int, min_ms: float, max_processes: int, warmup: int
    ) -> "SampleSize":
        """At least `min_runs` runs and enough to last `min_ms` (fast models are noisy), over up to
        `max_processes` processes while each still gets `min_runs` runs."""
        runs = max(min_runs, math.ceil(min_ms / max(typical_ms, 1e-3)))
        return cls(runs, max(1, min(max_processes, runs // min_runs)), warmup)


def interleaved(sides: int, first_round: int, rounds: int) -> list[int]:
    """The order of rounds `first_round`..`rounds-1`: A B, B A, A B, ... (who goes first alternates)."""
    forward = list(range(sides))
    return [side for index in range(first_round, rounds) for side in (forward if index % 2 == 0 else forward[::-1])]


@dataclass(frozen=True)
class _Pushed:
    side: AbSide
    board: Board  # the session's connection, with this side's threads
    deployment: Deployment

    def command(self, output_name: str, warmup: int, runs: int) -> str:
        """The runner on this side's deployment, with this side's threads."""
        args = execute.runner_args(
            self.deployment, self.side.artifact.input_shape, output_name, warmup=warmup, runs=runs
        )
        program = execute.runner_command(self.deployment)
        return f"TVM_NUM_THREADS={self.side.threads} {self.board.runtime_command(program, args)}"


class AbSession:
    """The pushed sides on one open connection; side `i` is the i-th AbSide given to open_ab_session."""

    def __init__(self, board: Board, pushed: Sequence[_Pushed]) -> None:
        self.board = board
        self._pushed = list(pushed)

    @property
    def deployments(self) -> list[Deployment]:
        return [p.deployment for p in self._pushed]

    def samples(self, order: Sequence[int], size: SampleSize) -> list[float]:
        """Samples of the sides in `order`, in one board command: a command costs an SSH round trip (a
        few tenths of a second on a loaded host), more than a fast model's whole sample. Each sample's
        runs are split over `size.processes` runner processes, one after the other, and the sample is
        the lowest of their SAMPLE_PERCENTILEs: a process can stay in a slow state for its whole life
        (tiny on `local`: 40% of processes ran at 0.080 ms, the others at 0.060 ms), and the fastest of
        three processes is slow only when all three are."""
        output = f"outputs/ab-{uuid.uuid4().hex[:12]}.bin"
        each = max(1, size.runs // size.processes)
        steps = [
            f"echo {MARKER} && {self._pushed[side].command(output, size.warmup, each)}"
            for side in order
            for _ in range(size.processes)
        ]
        script = " && ".join(["mkdir -p outputs", *steps])
        timeout_s = self.board.profile.timing.timeout_s * len(steps)
        try:
            result = self.board.run(script, timeout_s=timeout_s, cwd=self.board.remote_dir)
        finally:
            self.board.run(f"rm -f {output}", timeout_s=30.0, cwd=self.board.remote_dir)
        execute.raise_if_runner_failed(result, self.board.name, " during A/B")
        reports = [execute.parse_report(chunk) for chunk in result.stdout.split(MARKER)[1:]]
        lows = [float(np.percentile(report.runs_ms, SAMPLE_PERCENTILE)) for report in reports]
        return [min(lows[index : index + size.processes]) for index in range(0, len(lows), size.processes)]

    def run(self, side: int, *, warmup: int = 0, runs: int = 1, profile_runs: int = 0) -> RunOutcome:
        """One runner process of `side` (its output fetched), as a deploy runs it."""
        pushed = self._pushed[side]
        return execute.run_benchmark(
            pushed.board,
            pushed.deployment,
            pushed.side.artifact.input_shape,
            warmup=warmup,
            runs=runs,
            profile_runs=profile_runs,
            timeout_s=self.board.profile.timing.timeout_s * (1 + profile_runs),
        )

    def fastest_tasks(self, rounds: int) -> list[list[KernelTime]]:
        """Each side's time per task: the fastest of `rounds` profiled runs, one runner process each,
        taken interleaved (A B, B A, ...): on a shared host one slowed run would otherwise name a task
        that did not change."""
        measured: list[list[list[KernelTime]]] = [[] for _ in self._pushed]
        for side in interleaved(len(self._pushed), 0, rounds):
            measured[side].append(self.run(side, warmup=1, runs=1, profile_runs=1).profile)
        fastest: list[list[KernelTime]] = []
        for profiles in measured:
            best: dict[str, KernelTime] = {}
            for kernel in (kernel for profile in profiles for kernel in profile):
                if kernel.name not in best or kernel.ms < best[kernel.name].ms:
                    best[kernel.name] = kernel
            fastest.append(list(best.values()))
        return fastest


@contextmanager
def open_ab_session(
    profile: BoardProfile, sides: Sequence[AbSide], input_file: Path, on_progress: Progress | None = None
) -> Iterator[AbSession]:
    """Connect, check the board once for all sides, push every side and check its runtime's
    architecture; a side that cannot run is refused in one line that names it."""
    show = on_progress or (lambda line: None)
    with open_board(profile) as board:
        check_board(board, [side.artifact for side in sides])
        pushed = []
        for side in sides:
            show(f"Pushing {side.label} (build {side.artifact.key}, TVM {side.artifact.release} runtime)...")
            try:
                deployment = push_build(board, side.artifact, input_file)
                check_runtime(board, side.artifact, deployment)
            except PipelineError as error:
                raise PipelineError(f"A/B side {side.label}: {error.problem}", error.fix, error.log) from None
            threaded = Board(profile.model_copy(update={"threads": side.threads}), board.endpoint, board.client)
            pushed.append(_Pushed(side, threaded, deployment))
        yield AbSession(board, pushed)
