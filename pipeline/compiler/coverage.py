"""Coverage: which tasks of a build run tuned schedules, what share of the FLOPs that is, and why the
others missed, so a record that silently stopped applying is seen before the model reaches the board."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, cast, get_args

from pipeline.board.profile import CoveragePolicy, CoverageSettings, TargetSpec
from pipeline.compiler.schedules.tasks import Task
from pipeline.errors import PipelineError
from pipeline.records.store import RecordStore, StoredRecord, same_release, shown

if TYPE_CHECKING:  # tvm is imported only where a build runs
    from pipeline.compiler.schedules.schedule_transfer import ScheduleChoice


@dataclass(frozen=True)
class TaskCoverage:
    task: str
    workload: str  # the semantic key as one line
    operator: str
    heavy: bool  # conv/dense work: what the policy counts
    calls: int
    flops: float
    share: float  # of the model's FLOPs
    tuned: bool
    record: str  # the record applied, "" for a miss
    nearest: str  # for a miss: the closest record in the store, "" if there is none for this operator
    differs: tuple[str, ...]  # for a miss: what differs from the nearest record
    # How the task is scheduled: "tuned" (a record), "migrated" (an older TVM release's record of this
    # workload, replayed and checked; tuned only once `invoke migrate` measured it on the board),
    # "transferred" (a record of another shape),
    # "default" (pipeline/default_schedules.py's rules), "winograd" (a stage of a conv rewritten into
    # Winograd, pipeline/compiler/schedules/winograd_schedules.py), "naive" (conv/dense left to TVM's naive
    # loops), or "unscheduled" (nothing to tile: TVM's own lowering of elementwise, pooling, ...)
    schedule: str = ""
    source: str = ""  # the release and record of a migration, the donor of a transfer, the rule of a default, why naive
    emulated: bool = False  # the record was measured under emulation: it proves the loop, not the board's speed
    # How a rewrite choice made this task's form (pipeline/compiler/rewrite_choices.py): `rule`, or what was
    # measured, e.g. `winograd (measured 2.3x faster than the tuned direct record on local)`
    choice: str = ""
    measured_faster: bool = False  # runs a form measured faster than the conv's tuned record: counts as covered


@dataclass(frozen=True)
class CoverageEntry:
    """One task as a deploy result records it, matched across runs by `workload`."""

    task: str
    workload: str
    operator: str
    heavy: bool
    flops: float
    share: float
    status: Literal["tuned", "fallback"]
    schedule: str = ""  # results written before builds had fallback schedules do not say
    source: str = ""  # where the schedule came from: a migration's release and record, a transfer's donor, a rule


@dataclass(frozen=True)
class Coverage:
    tasks: tuple[TaskCoverage, ...]  # largest FLOPs first
    tuned_share: float  # share of conv/dense FLOPs that run tuned schedules (1.0 when there are none)
    records_applicable: int  # records in the store for this target and TVM release
    problems: tuple[str, ...]  # records skipped: unreadable files, or records TVM rejected

    @property
    def missing(self) -> list[TaskCoverage]:
        return [t for t in self.tasks if t.heavy and not t.tuned and not t.measured_faster]

    @property
    def naive(self) -> list[TaskCoverage]:
        """conv/dense tasks that run TVM's naive loops: neither a record nor a fallback schedule."""
        return [t for t in self.tasks if t.schedule == "naive"]

    def result_entries(self) -> list[CoverageEntry]:
        """The table as a result records it: one entry per task."""
        return [
            CoverageEntry(
                task=t.task,
                workload=t.workload,
                operator=t.operator,
                heavy=t.heavy,
                flops=t.flops,
                share=t.share,
                status="tuned" if t.tuned else "fallback",
                schedule=t.schedule,
                source=t.source,
            )
            for t in self.tasks
        ]


def measure_coverage(
    tasks: list[Task],
    scheduled: set[str],
    applied: dict[str, StoredRecord],
    store: RecordStore,
    target: TargetSpec,
    tvm_version: str,
    problems: list[str],
    choices: Sequence["ScheduleChoice"] = (),
) -> Coverage:
    """A task is tuned when TVM marked its PrimFunc scheduled; a miss is explained against the whole store.
    `problems` are the records TVM rejected; unreadable files are added by the caller (they change no build).
    `choices` say which fallback schedule (transferred or default) each other task was given."""
    total = sum(t.flops for t in tasks) or 1.0
    chosen = {choice.task: choice for choice in choices}
    rows = []
    for task in sorted(tasks, key=lambda t: -t.flops):
        hit = applied.get(task.structural_hash) if task.name in scheduled else None
        nearest, differs = (None, ()) if hit else _explain(task, store, target, tvm_version)
        schedule, source = _schedule(task, hit is not None, task.name in scheduled, chosen.get(task.name))
        rows.append(
            TaskCoverage(
                task=task.name,
                workload=task.key.text(),
                operator=task.key.operator,
                heavy=task.key.heavy,
                calls=task.calls,
                flops=task.flops,
                share=task.flops / total,
                tuned=hit is not None,
                record=f"{shown(hit.path)} ({hit.record.provenance.board})" if hit else "",
                nearest=shown(nearest.path) if nearest else "",
                differs=differs,
                schedule=schedule,
                source=source,
                emulated=hit is not None and hit.record.provenance.emulated,
            )
        )
    heavy = sum(r.flops for r in rows if r.heavy)
    tuned = sum(r.flops for r in rows if r.heavy and r.tuned)
    return Coverage(
        tasks=tuple(rows),
        tuned_share=tuned / heavy if heavy else 1.0,
        records_applicable=len(store.for_target(target, tvm_version)),
        problems=tuple(problems),
    )


def with_choices(coverage: Coverage, labels: dict[str, tuple[str, bool]]) -> Coverage:
    """The table with each rewritten or kept conv's choice (task name -> label, measured faster than its
    tuned record); such a task counts as covered: it runs what beat the record on the board."""
    rows = tuple(
        replace(row, choice=labels[row.task][0], measured_faster=labels[row.task][1]) if row.task in labels else row
        for row in coverage.tasks
    )
    heavy = sum(r.flops for r in rows if r.heavy)
    covered = sum(r.flops for r in rows if r.heavy and (r.tuned or r.measured_faster))
    return replace(coverage, tasks=rows, tuned_share=covered / heavy if heavy else 1.0)


def _schedule(task: Task, tuned: bool, scheduled: bool, choice: "ScheduleChoice | None") -> tuple[str, str]:
    """The schedule kind and its source; a conv/dense PrimFunc that TVM did not mark scheduled is naive."""
    if tuned:
        return "tuned", ""
    if choice is not None and choice.kind in ("migrated", "transferred", "default", "winograd") and scheduled:
        return choice.kind, choice.source
    if task.key.heavy:
        return "naive", choice.source if choice is not None and choice.source else "no schedule applied"
    return "unscheduled", ""


def _explain(
    task: Task, store: RecordStore, target: TargetSpec, tvm_version: str
) -> tuple[StoredRecord | None, tuple[str, ...]]:
    """The record of the same operator that differs in the fewest ways, and those ways."""
    best: tuple[int, StoredRecord, list[str]] | None = None
    for stored in store.records:
        record = stored.record
        if record.workload.operator != task.key.operator:
            continue
        differs = task.key.differences(record.workload)
        if record.target != target:
            differs.append(f"target {target.text()} != {record.target.text()}")
        if not same_release(record.provenance.tvm_version, tvm_version):
            differs.append(f"TVM {tvm_version} != {record.provenance.tvm_version}")
        if not differs and record.structural_hash != task.structural_hash:
            differs.append("IR differs: same workload key, but TVM's structural hash does not match")
        if not differs:
            differs.append("record was not applied (see the skipped records)")
        if best is None or len(differs) < best[0]:
            best = (len(differs), stored, differs)
    if best is None:
        return None, (f"no record for {task.key.operator}",) if task.key.heavy else ()
    return best[1], tuple(best[2])


def resolve_policy(
    section: CoverageSettings | None, policy: str | None = None, min_tuned_flops: float | None = None
) -> CoverageSettings:
    """The profile's coverage section (warn at 90% when absent) with command-line flags taking precedence."""
    settings = section or CoverageSettings()
    if policy is not None and policy not in get_args(CoveragePolicy):
        raise PipelineError(f"unknown coverage policy '{policy}'", "use --coverage warn or --coverage refuse")
    if min_tuned_flops is not None and not 0.0 <= min_tuned_flops <= 1.0:
        raise PipelineError(
            f"--min-tuned-flops {min_tuned_flops} is not a fraction", "give a value from 0 to 1, e.g. 0.9"
        )
    return CoverageSettings(
        policy=cast(CoveragePolicy, policy) if policy else settings.policy,
        min_tuned_flops=settings.min_tuned_flops if min_tuned_flops is None else min_tuned_flops,
    )


def check_policy(coverage: Coverage, settings: CoverageSettings, board_name: str, model: str) -> str | None:
    """None when coverage meets the threshold; otherwise a warning line, or a PipelineError under `refuse`."""
    if coverage.tuned_share >= settings.min_tuned_flops:
        return None
    counts: dict[str, int] = {}
    for task in coverage.missing:
        counts[task.operator] = counts.get(task.operator, 0) + 1
    missing = ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    problem = (
        f"only {coverage.tuned_share:.0%} of conv/dense FLOPs run tuned schedules "
        f"({missing} workload{'s' if len(coverage.missing) != 1 else ''} missing)"
    )
    fix = (
        f"invoke tune --board {board_name} --model {model}, "
        f"or lower coverage.min_tuned_flops (now {settings.min_tuned_flops:g}) in boards/{board_name}.yaml"
    )
    if settings.policy == "refuse":
        raise PipelineError(problem, fix)
    return f"warning: {problem} — fix: {fix}"


def coverage_lines(coverage: Coverage, verbose: bool = False, width: int = 44) -> list[str]:
    """The coverage table as plain text: conv/dense tasks one per line, the rest summed up in one line.
    `verbose` adds each task's workload and, for a miss, its nearest record (a large model's table stays
    one screen without them; the build's JSON and the nightly report keep them)."""
    lines = [f"{'task':{width}} {'calls':>5} {'MFLOP/run':>9} {'share':>6}  schedule"]
    for row in _listed(coverage):
        name = row.task if len(row.task) <= width else row.task[: width - 1] + "…"
        choice = f"; {row.choice}" if row.choice else ""
        lines.append(f"{name:{width}} {row.calls:>5} {row.flops / 1e6:>9.1f} {row.share:>6.1%}  {_state(row)}{choice}")
        if verbose:
            lines.extend(f"{'':{width}}   {line}" for line in _detail(row))
    rest = [r for r in coverage.tasks if not r.heavy and not r.tuned]
    if rest:
        share = sum(r.share for r in rest)
        lines.append(
            f"{len(rest)} other tasks ({share:.1%} of FLOPs: reshapes, pooling, elementwise) use TVM's own lowering"
        )
    heavy = [r for r in coverage.tasks if r.heavy]
    lines.append(
        f"conv/dense FLOPs tuned: {coverage.tuned_share:.0%} "
        f"({len(heavy) - len(coverage.missing)} of {len(heavy)} workloads; "
        f"{coverage.records_applicable} records for this target)"
    )
    emulated = [r for r in heavy if r.emulated]
    if emulated:
        lines.append(
            f"{len(emulated)} of the tuned workloads were measured on an emulated board: they prove the "
            "tuning loop, not the real board's performance"
        )
    if coverage.missing:
        lines.append(f"untuned conv/dense: {fallback_counts(coverage)}")
    lines.extend(f"record skipped: {problem}" for problem in coverage.problems)
    return lines


def _listed(coverage: Coverage) -> list[TaskCoverage]:
    """The tasks the table lists one by one: conv/dense work and anything a record tuned."""
    return [row for row in coverage.tasks if row.heavy or row.tuned]


def _detail(row: TaskCoverage) -> list[str]:
    """A task's workload (its shapes) and, for a miss, the closest record and how it differs."""
    if row.tuned:
        return [row.workload]
    why = "; ".join(row.differs) if row.differs else "no record"
    return [row.workload, f"nearest: {row.nearest or 'none'}: {why}"]


def fallback_counts(coverage: Coverage) -> str:
    """How the untuned conv/dense tasks run, e.g. "2 migrated, 1 transferred, 3 default, 0 naive"
    (and the Winograd stages, when the build has any)."""
    kinds = [row.schedule for row in coverage.missing]
    shown_kinds = ("migrated", "transferred", "default") + (("winograd",) if "winograd" in kinds else ()) + ("naive",)
    return ", ".join(f"{kinds.count(kind)} {kind}" for kind in shown_kinds)


def _state(row: TaskCoverage) -> str:
    if row.tuned:
        return f"tuned  {row.record}" + (", measured under emulation" if row.emulated else "")
    if row.schedule == "migrated":
        return f"migrated from {row.source}"
    if row.schedule == "transferred":
        return f"transferred from {row.source}"
    if row.schedule == "default":
        return f"default  (rule {row.source})"
    if row.schedule == "winograd":
        return f"WINOGRAD  ({row.source})"
    return f"NAIVE  (no schedule: {row.source or 'unknown'}; runs TVM's naive loops, tens of times slower)"
