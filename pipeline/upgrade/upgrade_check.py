"""`invoke upgrade-check`: what a user needs to know before upgrading TVM on a board.

The model is built under both releases (each in its own environment; the newer one migrating the older
one's records unless told not to), both builds and both runtimes are pushed, and the two run interleaved
on the board (A B, B A, ..., one timed run each per round; pipeline/deploy/ab_session.py) so that board
noise hits both alike; each task's time is the fastest of interleaved profiled runs per release. The verdict
on the latency is the nightly's (pipeline/stats.py); coverage is counted per schedule kind. The
new release passes when it is not slower and loses no coverage."""

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.atomic import write_atomically
from pipeline.board.profile import load_board
from pipeline.compiler.coverage import Coverage
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.compiler.other_release import build_under
from pipeline.deploy import check, inputs, results, timing
from pipeline.deploy.ab_session import AbSide, interleaved, open_ab_session
from pipeline.errors import PipelineError
from pipeline.paths import RESULTS_DIR
from pipeline.stats import Verdict, compare_samples
from pipeline.tvm_release.catalog import get_release, running_release
from pipeline.tvm_release.environment import Progress

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
    count = max(2, profile.timing.runs if rounds is None else rounds)
    builds = {}
    for release, migrating in ((before, True), (after, migrate)):
        show(f"Building {spec.name} for {profile.name} under TVM {release.name}...")
        builds[release.name] = build_under(release, board_name, profile, spec, migrating, show)
    data, input_file = inputs.make_input(spec.input_shape)
    releases = (before, after)
    runs: dict[str, list[float]] = {release.name: [] for release in releases}
    outputs = {}
    ab_sides = [AbSide(f"TVM {r.name}", builds[r.name], profile.threads) for r in releases]
    with open_ab_session(profile, ab_sides, input_file, show) as session:
        for index, side in enumerate(interleaved(len(ab_sides), 0, count)):
            release = releases[side]
            show(f"Round {index // len(ab_sides) + 1}/{count}: TVM {release.name}")
            outcome = session.run(side)
            runs[release.name] += outcome.runs_ms
            outputs[release.name] = outcome.output
        show(f"Timing each task under both releases ({PROFILE_RUNS} profiled runs each, interleaved)...")
        fastest = session.fastest_tasks(PROFILE_RUNS)
    task_ms = {r.name: {kernel.name: kernel.ms for kernel in tasks} for r, tasks in zip(releases, fastest)}
    reference = check.reference_output(spec.path, spec.input_name, data)
    sides = {
        name: Side(
            release=name,
            tvm_version=builds[name].tvm_version,
            build_key=builds[name].key,
            runs_ms=runs[name],
            stats=timing.summarize(runs[name]),
            coverage=coverage_counts(builds[name].coverage),
            check=check.compare(outputs[name], reference),
            task_ms=task_ms[name],
        )
        for name in runs
    }
    verdict = compare_samples(runs[before.name], runs[after.name])
    old_side, new_side = sides[before.name], sides[after.name]
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
        changes=task_changes(builds[before.name].coverage, builds[after.name].coverage, old_side, new_side),
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
            f"TVM {new.release}'s output does not match onnxruntime (relative error {new.check.relative_error:.2e})",
        )
    if verdict.change == "regression":
        return (
            False,
            f"TVM {new.release} is slower: median {verdict.ratio:.2f}x of TVM {old.release}'s ({verdict.reason})",
        )
    if lost > 1e-9 or new.coverage.counts["naive"] > old.coverage.counts["naive"]:
        return False, (
            f"TVM {new.release} loses coverage: {new.coverage.covered_share:.0%} of conv/dense FLOPs run a record's "
            f"schedule against {old.coverage.covered_share:.0%} under TVM {old.release}"
        )
    if verdict.change == "inconclusive":
        return False, (
            f"cannot tell whether TVM {new.release} is slower: {verdict.reason}; "
            "run more interleaved rounds (--rounds 15)"
        )
    return (
        True,
        f"TVM {new.release} is not slower ({verdict.change}, median ratio {verdict.ratio:.2f}) and loses no coverage",
    )


def _write(report: UpgradeCheck, results_dir: Path) -> Path:
    stamp = report.created.replace("-", "").replace(":", "")
    path = (
        results_dir
        / "upgrade-check"
        / report.board
        / f"{report.model}-{report.old.release}-to-{report.new.release}-{stamp}-{uuid.uuid4().hex[:4]}.json"
    )
    write_atomically(path, (json.dumps(asdict(report), indent=2) + "\n").encode())
    return path
