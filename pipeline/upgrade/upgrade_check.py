"""`invoke upgrade-check`: what a user needs to know before upgrading TVM, or this pipeline, on a board.

The model is built under both releases (each in its own environment; the newer one migrating the older
one's records unless told not to), both builds and both runtimes are pushed, and the two run interleaved
on the board (A B, B A, ..., one timed run each per round; pipeline/deploy/ab_session.py) so that board
noise hits both alike; each task's time is the fastest of interleaved profiled runs per release. The verdict
on the latency is the nightly's (pipeline/stats.py); coverage is counted per schedule kind. The
new release passes when it is not slower and loses no coverage. Two revisions of the pipeline itself
(`--from-rev`, `--to-rev`) are compared the same way: each built by its own code (pipeline/upgrade/revisions.py)."""

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.atomic import write_atomically
from pipeline.board.profile import BoardProfile, load_board
from pipeline.compiler import builder
from pipeline.compiler.builder import BuildArtifact
from pipeline.compiler.coverage import Coverage
from pipeline.compiler.importer.model_file import ModelSpec, resolve_model
from pipeline.compiler.other_release import build_under
from pipeline.deploy import check, inputs, results, timing
from pipeline.deploy.ab_session import AbSide, interleaved, open_ab_session
from pipeline.errors import PipelineError
from pipeline.paths import RESULTS_DIR, ROOT
from pipeline.stats import Verdict, compare_samples
from pipeline.tvm_release.catalog import get_release, running_release
from pipeline.tvm_release.environment import Progress
from pipeline.upgrade import revisions

KINDS = ("tuned", "migrated", "transferred", "default", "winograd", "naive")
PROFILE_RUNS = 3  # per release, after the interleaved rounds: each task's time per inference
TIME_CHANGE = 0.10  # a task whose time moved by more than this is listed, whatever its schedule kind


@dataclass(frozen=True)
class CoverageCounts:
    """conv/dense tasks per schedule kind, and each kind's share of the conv/dense FLOPs."""

    counts: dict[str, int]
    flop_shares: dict[str, float]

    @property
    def covered_share(self) -> float:
        """FLOPs that run a record's schedule (tuned or migrated)."""
        return self.flop_shares["tuned"] + self.flop_shares["migrated"]


@dataclass(frozen=True)
class Side:
    """One release's build as it ran on the board."""

    release: str
    tvm_version: str
    build_key: str
    runs_ms: list[float]
    stats: timing.TimingStats
    coverage: CoverageCounts
    check: check.CheckResult
    task_ms: dict[str, float]  # conv/dense task name -> ms per inference, from the runner's profile
    revision: str = ""  # the pipeline revision that built it (upgrade-check --from-rev), "" for a release check

    @property
    def name(self) -> str:
        """How the side is named: its revision, or its TVM release."""
        return f"rev {self.revision}" if self.revision else f"TVM {self.release}"

    @property
    def slug(self) -> str:
        return f"rev-{self.revision.rstrip('+')}" if self.revision else self.release


@dataclass(frozen=True)
class TaskChange:
    """A conv/dense task (matched by semantic workload key) whose schedule kind or time changed."""

    task: str
    workload: str
    before: str  # schedule kind under the old release, with its source
    after: str
    before_ms: float | None
    after_ms: float | None


@dataclass(frozen=True)
class UpgradeCheck:
    created: str
    board: str
    model: str
    emulated: bool
    rounds: int
    old: Side
    new: Side
    verdict: Verdict  # the new release's latency against the old one's
    changes: list[TaskChange]
    passed: bool
    reason: str  # one line: why the upgrade is (not) safe


def upgrade_check(
    board_name: str,
    model: str,
    to: str,
    old: str | None = None,
    rounds: int | None = None,
    migrate: bool = True,
    on_progress: Progress | None = None,
    results_dir: Path = RESULTS_DIR,
) -> tuple[UpgradeCheck, Path]:
    """Compare release `old` (default: the running one) with `to` on the board; the comparison is written
    as JSON under results/upgrade-check/<board>/."""
    show = on_progress or (lambda line: None)
    before, after = get_release(old) if old else running_release(), get_release(to)
    if before == after:
        raise PipelineError(f"--from and --to are both TVM {after.name}", "name two different releases")
    profile = load_board(board_name)
    spec = resolve_model(model)
    builds = []
    for release, migrating in ((before, True), (after, migrate)):
        show(f"Building {spec.name} for {profile.name} under TVM {release.name}...")
        builds.append(("", build_under(release, board_name, profile, spec, migrating, show)))
    return compare_builds(profile, spec, builds[0], builds[1], rounds, show, results_dir)


def revision_check(
    board_name: str,
    model: str,
    from_rev: str,
    to_rev: str | None = None,
    rounds: int | None = None,
    on_progress: Progress | None = None,
    results_dir: Path = RESULTS_DIR,
    repo: Path = ROOT,
) -> tuple[UpgradeCheck, Path]:
    """Compare the model as revision `from_rev` of the pipeline builds it with `to_rev`'s build (default:
    this working checkout's), on the board, as two TVM releases are compared; each side is built by its
    revision's own code in a worktree (pipeline/upgrade/revisions.py), both run with this revision's runtime."""
    show = on_progress or (lambda line: None)
    profile = load_board(board_name)
    spec = resolve_model(model)
    before = revisions.resolve(from_rev, repo)
    after = revisions.resolve(to_rev, repo) if to_rev else None
    if after is not None and after.sha == before.sha:
        raise PipelineError(f"--from-rev and --to-rev are both {before.short}", "name two different revisions")
    old_side = (before.short, revisions.build_at(before, board_name, model, show, repo))
    if after is None:
        show(f"Building {spec.name} for {profile.name} in this working checkout...")
        current = revisions.head(repo)
        changed = "+" if revisions.has_changes(repo) else ""  # + : the working tree, its changes included
        new_side = (f"{current.short}{changed}", builder.build(spec, profile))
    else:
        new_side = (after.short, revisions.build_at(after, board_name, model, show, repo))
    return compare_builds(profile, spec, old_side, new_side, rounds, show, results_dir)


def compare_builds(
    profile: BoardProfile,
    spec: ModelSpec,
    old: tuple[str, BuildArtifact],
    new: tuple[str, BuildArtifact],
    rounds: int | None,
    show: Progress,
    results_dir: Path,
) -> tuple[UpgradeCheck, Path]:
    """Push both builds (each with its release's runtime), run them interleaved, profile each, decide.
    Each side is (revision label, build): an empty label names the side by its TVM release."""
    count = max(2, profile.timing.runs if rounds is None else rounds)
    builds = {"old": old[1], "new": new[1]}
    labels = {"old": old[0], "new": new[0]}
    names = {side: f"rev {labels[side]}" if labels[side] else f"TVM {builds[side].release}" for side in builds}
    data, input_file = inputs.make_input(spec.input_shape)
    runs: dict[str, list[float]] = {"old": [], "new": []}
    outputs = {}
    order = ("old", "new")
    ab_sides = [AbSide(names[side], builds[side], profile.threads) for side in order]
    with open_ab_session(profile, ab_sides, input_file, show) as session:
        for index, position in enumerate(interleaved(len(ab_sides), 0, count)):
            side = order[position]
            show(f"Round {index // len(ab_sides) + 1}/{count}: {names[side]}")
            outcome = session.run(position)
            runs[side] += outcome.runs_ms
            outputs[side] = outcome.output
        show(f"Timing each task of both sides ({PROFILE_RUNS} profiled runs each, interleaved)...")
        fastest = session.fastest_tasks(PROFILE_RUNS)
    task_ms = {side: {kernel.name: kernel.ms for kernel in tasks} for side, tasks in zip(order, fastest)}
    reference = check.reference_output(spec.path, spec.input_name, data)
    sides = {
        side: Side(
            release=builds[side].release,
            tvm_version=builds[side].tvm_version,
            build_key=builds[side].key,
            runs_ms=runs[side],
            stats=timing.summarize(runs[side]),
            coverage=coverage_counts(builds[side].coverage),
            check=check.compare(outputs[side], reference),
            task_ms=task_ms[side],
            revision=labels[side],
        )
        for side in builds
    }
    verdict = compare_samples(runs["old"], runs["new"])
    old_side, new_side = sides["old"], sides["new"]
    passed, reason = _decide(old_side, new_side, verdict)
    report = UpgradeCheck(
        created=results.utc_now(),
        board=profile.name,
        model=spec.name,
        emulated=profile.emulated,
        rounds=count,
        old=old_side,
        new=new_side,
        verdict=verdict,
        changes=task_changes(builds["old"].coverage, builds["new"].coverage, old_side, new_side),
        passed=passed,
        reason=reason,
    )
    return report, _write(report, results_dir)


def coverage_counts(coverage: Coverage) -> CoverageCounts:
    heavy = [row for row in coverage.tasks if row.heavy]
    total = sum(row.flops for row in heavy) or 1.0
    return CoverageCounts(
        counts={kind: sum(1 for row in heavy if row.schedule == kind) for kind in KINDS},
        flop_shares={kind: sum(row.flops for row in heavy if row.schedule == kind) / total for kind in KINDS},
    )


def task_changes(old: Coverage, new: Coverage, old_side: Side, new_side: Side) -> list[TaskChange]:
    """conv/dense tasks (matched by semantic workload key) whose schedule kind differs or whose time per
    inference moved by more than TIME_CHANGE, slowest-growing first."""
    before = {row.workload: row for row in old.tasks if row.heavy}
    changes = []
    for row in new.tasks:
        was = before.get(row.workload)
        if not row.heavy or was is None:
            continue
        old_ms, new_ms = old_side.task_ms.get(was.task), new_side.task_ms.get(row.task)
        moved = bool(old_ms and new_ms and abs(new_ms / old_ms - 1) > TIME_CHANGE)
        if was.schedule != row.schedule or moved:
            changes.append(
                TaskChange(
                    row.task,
                    row.workload,
                    _kind(was.schedule, was.source, was.record),
                    _kind(row.schedule, row.source, row.record),
                    old_ms,
                    new_ms,
                )
            )
    return sorted(changes, key=_growth, reverse=True)


def _growth(change: TaskChange) -> float:
    return change.after_ms / change.before_ms if change.before_ms and change.after_ms else 0.0


def _kind(schedule: str, source: str, record: str) -> str:
    detail = record if schedule == "tuned" else source
    return f"{schedule} ({detail})" if detail else schedule


def _decide(old: Side, new: Side, verdict: Verdict) -> tuple[bool, str]:
    lost = old.coverage.covered_share - new.coverage.covered_share
    if not new.check.passed:
        return (
            False,
            f"{new.name}'s output does not match onnxruntime (relative error {new.check.relative_error:.2e})",
        )
    if verdict.change == "regression":
        return (
            False,
            f"{new.name} is slower: median {verdict.ratio:.2f}x of {old.name}'s ({verdict.reason})",
        )
    if lost > 1e-9 or new.coverage.counts["naive"] > old.coverage.counts["naive"]:
        return False, (
            f"{new.name} loses coverage: {new.coverage.covered_share:.0%} of conv/dense FLOPs run a record's "
            f"schedule against {old.coverage.covered_share:.0%} under {old.name}"
        )
    if verdict.change == "inconclusive":
        return False, (
            f"cannot tell whether {new.name} is slower: {verdict.reason}; run more interleaved rounds (--rounds 15)"
        )
    return (
        True,
        f"{new.name} is not slower ({verdict.change}, median ratio {verdict.ratio:.2f}) and loses no coverage",
    )


def _write(report: UpgradeCheck, results_dir: Path) -> Path:
    stamp = report.created.replace("-", "").replace(":", "")
    path = (
        results_dir
        / "upgrade-check"
        / report.board
        / f"{report.model}-{report.old.slug}-to-{report.new.slug}-{stamp}-{uuid.uuid4().hex[:4]}.json"
    )
    write_atomically(path, (json.dumps(asdict(report), indent=2) + "\n").encode())
    return path
