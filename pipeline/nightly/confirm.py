"""A/B confirmation on the board: when a point's deployment changed since its baseline (or its
comparison with the history flags a change), the baseline's build and tonight's run interleaved on the
same board in one session (A B, B A, ...), each sample a short batch of runs of one deployment in a
few runner processes of its own. Noise of the moment (another process, the clock, the heat) then hits
both sides of a pair alike, where a comparison of two nights measures the machine.

Both builds are pushed once, side by side (each build has its own folder on the board), and each side
runs with the threads its result was measured with. The decision on the pairs is compare_pairs's; an
inconclusive one gets more pairs while the time budget lasts. A confirmed change is then profiled on
both sides (every kernel call timed), so the report can name the tasks whose time moved. When the TVM
release or the record store changed and the change is a confirmed regression, tonight's model built
under the baseline's release or with the baseline's records (pipeline/records/snapshots.py) then runs
interleaved with both builds for its own pairs: an experiment on the likely cause, run whatever budget
the confirmation left. The session itself (push, board check, interleaved samples, per-task profiles)
is pipeline/deploy/ab_session.py's.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.board.profile import BoardProfile, load_board
from pipeline.compiler import builder
from pipeline.compiler.builder import BUILD_INFO_NAME, BuildArtifact
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.compiler.other_release import build_under
from pipeline.deploy import inputs
from pipeline.deploy.ab_session import AbSide, SampleSize, interleaved, open_ab_session
from pipeline.deploy.execute import KernelTime
from pipeline.deploy.results import DeployResult
from pipeline.errors import PipelineError
from pipeline.paths import RECORDS_DIR
from pipeline.records.snapshots import find_snapshot
from pipeline.stats import DEFAULT_FACTOR, PairedVerdict, compare_pairs
from pipeline.tvm_release.catalog import Release, get_release, release_name, running_release
from pipeline.tvm_release.environment import release_root

# same_build: tonight ran the baseline's very build with its settings, so there is nothing to run A/B:
# the build against itself can only measure noise, never confirm a change of the deployment.
State = Literal["confirmed", "not_confirmed", "inconclusive", "cannot_confirm", "same_build"]
Decide = Callable[[Sequence[float], Sequence[float], bool], PairedVerdict]  # baseline, current, final
Progress = Callable[[str], None]


class ConfirmSettings(BaseModel):
    """How much board time an A/B session may take (the matrix file's `confirm:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pairs: int = Field(8, ge=6)  # 8 pairs all one way reach the Wilcoxon test's p < 0.01
    more_pairs: int = Field(4, ge=1)
    max_pairs: int = Field(40, ge=6)
    budget_s: float = Field(60.0, gt=0)
    batch_runs: int = Field(10, ge=1)  # timed runs per sample at least ...
    sample_ms: float = Field(200.0, ge=0)  # ... and enough of them to take this long: fast models are noisy
    processes: int = Field(3, ge=1)  # runner processes per sample, while each gets batch_runs runs; fastest counts
    warmup: int = Field(1, ge=0)
    profile_runs: int = Field(3, ge=0)  # profiled runs per side after a confirmed change, fastest kept


DEFAULT_SETTINGS = ConfirmSettings()


@dataclass(frozen=True)
class Confirmation:
    """What the A/B session found. `baseline_ms` and `current_ms` are the pairs' samples;
    `tasks_ms` the per-task times (ms per inference) of both sides after a confirmed change."""

    state: State
    reason: str
    verdict: PairedVerdict | None = None
    baseline_ms: list[float] = field(default_factory=list)
    current_ms: list[float] = field(default_factory=list)
    baseline_tasks: list[KernelTime] = field(default_factory=list)
    current_tasks: list[KernelTime] = field(default_factory=list)
    rebuilt_baseline: bool = False
    seconds: float = 0.0
    experiments: list[str] = field(default_factory=list)  # what rebuilding with the baseline's parts showed

    @property
    def confirmed_change(self) -> Literal["regression", "improvement"] | None:
        """regression or improvement when the A/B session confirmed one, else None."""
        if self.state != "confirmed" or self.verdict is None:
            return None
        change = self.verdict.change
        return change if change == "regression" or change == "improvement" else None


def same_deployment(baseline: DeployResult, current: DeployResult) -> bool:
    """Tonight ran what the baseline ran: the same build (its key covers the model's bytes, target, TVM
    version, records and build recipe) with the same threads."""
    return baseline.build.key == current.build.key and baseline.threads == current.threads


class BaselineGone(Exception):
    """The baseline's build is not in the cache and cannot be rebuilt as it was."""


def confirm_on_board(
    board_name: str,
    model: str,
    baseline: DeployResult,
    current: DeployResult,
    *,
    factor: float = DEFAULT_FACTOR,
    settings: ConfirmSettings = DEFAULT_SETTINGS,
    decide: Decide | None = None,
    on_progress: Progress | None = None,
) -> Confirmation:
    """Run the baseline's build against tonight's interleaved on `board` and decide on the pairs.
    `decide` replaces compare_pairs (the alarm benchmark injects a known slowdown through it)."""
    started = time.monotonic()
    show = on_progress or (lambda line: None)
    judge = decide or (lambda base, cur, final: compare_pairs(base, cur, factor, final=final))
    profile = load_board(board_name)
    try:
        old, rebuilt = baseline_build(baseline, board_name, model, profile, show)
    except BaselineGone as gone:
        return Confirmation("cannot_confirm", f"cannot confirm: baseline build gone ({gone})")
    new = builder.load_build(current.build.directory)
    if old.input_shape != new.input_shape:
        shapes = f"{_shape(old.input_shape)} against {_shape(new.input_shape)}"
        return Confirmation("cannot_confirm", f"cannot confirm: the input shape changed ({shapes})")
    _, input_file = inputs.make_input(new.input_shape)
    typical_ms = max(baseline.timings.stats.median_ms, current.timings.stats.median_ms, 1e-3)
    size = SampleSize.for_model(
        typical_ms, settings.batch_runs, settings.sample_ms, settings.processes, settings.warmup
    )
    sides = [AbSide("the baseline's build", old, baseline.threads), AbSide("tonight's build", new, current.threads)]
    with open_ab_session(profile, sides, input_file) as session:
        samples: list[list[float]] = [[], []]
        wanted = settings.pairs
        show(f"A/B on {profile.name}: build {old.key} against {new.key}, {wanted} pairs of {size.runs} runs each...")
        pushed = time.monotonic()
        while True:
            order = interleaved(len(sides), len(samples[0]), wanted)
            for side, sample in zip(order, session.samples(order, size)):
                samples[side].append(sample)
            now = time.monotonic()
            per_pair = (now - pushed) / len(samples[0])
            more = min(settings.more_pairs, settings.max_pairs - wanted)
            final = more <= 0 or now - started + per_pair * more > settings.budget_s
            verdict = judge(samples[0], samples[1], final)
            if verdict.state != "inconclusive" or final:
                show(
                    f"A/B: {len(samples[0])} pairs in {time.monotonic() - pushed:.1f} s, {pushed - started:.1f} s to push"
                )
                break
            wanted += more
            show(f"A/B inconclusive so far ({verdict.reason}): {more} more pairs...")
        tasks: list[list[KernelTime]] = [[], []]
        if verdict.state == "confirmed" and settings.profile_runs:
            show(f"Timing each task of both builds ({settings.profile_runs} profiled runs each)...")
            tasks = session.fastest_tasks(settings.profile_runs)
    notes: list[str] = []
    if verdict.state == "confirmed" and verdict.change == "regression":
        experiments, notes = _experiments(baseline, current, old, board_name, model, profile, show)
        notes += _run_experiments(experiments, sides, samples, profile, input_file, size, settings, factor, show)
    seconds = time.monotonic() - started
    return Confirmation(
        verdict.state,
        _sentence(verdict, seconds, settings, rebuilt),
        verdict,
        samples[0],
        samples[1],
        tasks[0],
        tasks[1],
        rebuilt,
        round(seconds, 3),
        notes,
    )


def _run_experiments(
    experiments: Sequence["_Experiment"],
    sides: Sequence[AbSide],
    samples: list[list[float]],
    profile: BoardProfile,
    input_file: Path,
    size: SampleSize,
    settings: ConfirmSettings,
    factor: float,
    show: Progress,
) -> list[str]:
    """What each experiment shows. Its builds run in a session of their own, interleaved with both
    builds for `settings.pairs` rounds whatever budget the confirmation left: whether a cause is tested
    must not hinge on how fast the board was tonight. An experiment that is the baseline's build itself
    reads the confirmation's own pairs."""
    extra = [e.build for e in experiments if e.build is not None]
    if extra:
        all_sides = [*sides, *(AbSide(f"experiment {i + 1}", b, sides[1].threads) for i, b in enumerate(extra))]
        show(f"Timing {len(extra)} experiment build(s) against both builds ({settings.pairs} rounds)...")
        with open_ab_session(profile, all_sides, input_file) as session:
            samples = [[] for _ in all_sides]
            order = interleaved(len(all_sides), 0, settings.pairs)
            for side, sample in zip(order, session.samples(order, size)):
                samples[side].append(sample)
    timed = iter(samples[2:])
    return [
        e.outcome(samples[0], samples[1], samples[0] if e.build is None else next(timed), factor) for e in experiments
    ]


@dataclass(frozen=True)
class _Experiment:
    """Tonight's model built with one thing as the baseline had it (`what`, e.g. "TVM 0.26"), timed in
    the same session: if it runs like the baseline, that thing is the cause."""

    cause: str  # how the likely cause reads, e.g. "TVM version changed"
    what: str
    build: BuildArtifact | None  # None: it is the baseline's build, so the baseline's side times it

    def outcome(self, base: list[float], cur: list[float], extra: list[float], factor: float) -> str:
        faster = compare_pairs(extra, cur, factor, final=True)  # tonight against the experiment
        restores = faster.state == "confirmed" and faster.change == "regression"
        still_slower = compare_pairs(base, extra, factor, final=True)
        back = not (still_slower.state == "confirmed" and still_slower.change == "regression")
        ms = float(np.median(extra))
        built = f"tonight's model built with {self.what}" + (" (the baseline's build)" if self.build is None else "")
        if restores and back:
            return f"{self.cause}: confirmed, {built} restores {ms:.2f} ms (tonight {float(np.median(cur)):.2f} ms)"
        if restores:
            return f"{self.cause}: part of it, {built} runs {ms:.2f} ms, between the baseline and tonight"
        return f"{self.cause}: not the cause, {built} runs {ms:.2f} ms like tonight ({faster.reason})"


def _experiments(
    baseline: DeployResult,
    current: DeployResult,
    old: BuildArtifact,
    board_name: str,
    model: str,
    profile: BoardProfile,
    on_progress: Progress,
) -> tuple[list[_Experiment], list[str]]:
    """When the TVM release or the record store changed (and the A/B session confirmed tonight slower),
    tonight's model is also built with the baseline's release (when that release's environment is
    installed) or with the baseline's records (when a nightly kept a copy of that store). Notes say why
    an experiment was not run, or what its build alone shows."""
    spec = resolve_model(model, current.build.input_shape)
    experiments: list[_Experiment] = []
    notes: list[str] = []
    old_release, new_release = release_name(baseline.tvm_version), release_name(current.tvm_version)
    if old_release != new_release:
        cause = f"TVM version changed ({baseline.tvm_version} -> {current.tvm_version})"
        try:
            release = _installed_release(baseline.tvm_version)
            on_progress(f"Building tonight's model under TVM {release.name} too, to test the release as the cause...")
            build = build_under(release, board_name, profile, spec, True, on_progress)
        except (BaselineGone, PipelineError) as error:
            notes.append(f"{cause}: not tested ({error})")
        else:
            experiments.append(_Experiment(cause, f"TVM {release.name}", None if build.key == old.key else build))
    old_store, new_store = baseline.record_store_version, current.record_store_version
    if old_store != new_store:
        cause = f"tuning records changed ({old_store} -> {new_store})"
        previous = find_snapshot(old_store)
        if previous is None:
            notes.append(f"{cause}: not tested (no copy of the records {old_store} was kept)")
            return experiments, notes
        on_progress(f"Building tonight's model with the records {old_store} too, to test the records as the cause...")
        try:
            release = get_release(new_release)
            build = build_under(release, board_name, profile, spec, True, on_progress, records_dir=previous)
        except PipelineError as error:
            notes.append(f"{cause}: not tested ({error})")
            return experiments, notes
        if build.key == current.build.key:
            notes.append(f"{cause}: not the cause, tonight's model builds the same with the records {old_store}")
        else:
            experiments.append(_Experiment(cause, f"the records {old_store}", None if build.key == old.key else build))
    return experiments, notes


def baseline_build(
    baseline: DeployResult, board_name: str, model: str, profile: BoardProfile, on_progress: Progress
) -> tuple[BuildArtifact, bool]:
    """The baseline's build from the cache, else rebuilt (True) under its TVM release (in that release's
    environment when it is installed) with its records (the copy a nightly kept, else today's), if that
    is the same build: same key, so same model bytes, target, TVM version, records and recipe. Anything
    else is not the build that was measured, and confirming against it would answer another question."""
    wanted = baseline.build
    if (wanted.directory / BUILD_INFO_NAME).is_file():
        cached = builder.load_build(wanted.directory)
        if cached.key == wanted.key:
            return cached, False
    release = _installed_release(wanted.tvm_version)
    on_progress(f"Rebuilding the baseline's build {wanted.key} under TVM {release.name} (not in the cache)...")
    records = find_snapshot(baseline.record_store_version) or RECORDS_DIR
    try:
        spec = resolve_model(model, wanted.input_shape)
        rebuilt = build_under(release, board_name, profile, spec, True, on_progress, records_dir=records)
    except PipelineError as error:
        raise BaselineGone(f"rebuilding it failed: {error.problem}") from None
    if rebuilt.key != wanted.key:
        raise BaselineGone(
            f"a build today is {rebuilt.key}, not {wanted.key}: the model, records or build recipe changed since"
        )
    return rebuilt, True


def _installed_release(tvm_version: str) -> Release:
    """The release that built a library, when this machine can build with it again: the running one, or
    one whose environment exists (creating one is a download: not a nightly's job)."""
    try:
        release = get_release(release_name(tvm_version))
    except PipelineError:
        raise BaselineGone(f"it was built by TVM {tvm_version}, a release this pipeline does not know") from None
    if release != running_release() and not (release_root(release) / "venv" / "bin" / "python").is_file():
        raise BaselineGone(
            f"it was built by TVM {tvm_version}, whose environment is not installed here "
            f"(invoke build --tvm {release.name} creates it)"
        )
    return release


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _sentence(verdict: PairedVerdict, seconds: float, settings: ConfirmSettings, rebuilt: bool) -> str:
    """The A/B part of a point's line."""
    where = " (baseline rebuilt)" if rebuilt else ""
    if verdict.state == "confirmed":
        return f"A/B confirmed{where}: {verdict.reason}"
    if verdict.state == "not_confirmed":
        return f"A/B: noise, not confirmed{where}: {verdict.reason}"
    return f"A/B inconclusive{where} after {seconds:.0f} s (budget {settings.budget_s:.0f} s): {verdict.reason}"
