"""Why did a point get slower (or faster)? Compare what two results recorded and list what changed,
most likely cause first: tuned schedules lost, then TVM, target and thread changes, then the board's
state (heat, frequency, governor), then the pipeline's own code.

Results are DeployResults; what one of them does not know (an empty coverage table, a board fact
the board cannot report, no provenance) is simply not compared.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.board.facts import BoardFacts
from pipeline.board.profile import TargetSpec
from pipeline.compiler.coverage import CoverageEntry
from pipeline.deploy.execute import KernelTime
from pipeline.deploy.results import DeployResult
from pipeline.nightly.provenance import RunProvenance

HOT_C = 70.0  # the RK3399's first passive trip point: above it the kernel lowers the big cores' clock
TEMPERATURE_RISE_C = 10.0
FREQUENCY_DROP = 0.05
FALLBACK_SHARE_RISE = 0.01
LISTED_WORKLOADS = 5
TASK_CHANGE = 0.10  # a task whose time moved by more than this (and mattered, below) is named
TASK_SHARE = 0.01  # ... by at least this share of the inference's time
LISTED_TASKS = 3
VM_BUILTIN = "vm.builtin."
NO_PROVENANCE = RunProvenance(pipeline_commit=None, record_store_version=None)


@dataclass(frozen=True)
class Cause:
    """`kind` is one of coverage_lost, coverage_gained, tvm_version, target, threads, timing_kind,
    record_store, throttling, governor, board, pipeline; `detail` is the sentence a person reads."""

    kind: str
    detail: str


def likely_causes(
    baseline: DeployResult,
    current: DeployResult,
    change: Literal["regression", "improvement"] = "regression",
    *,
    before: RunProvenance = NO_PROVENANCE,
    after: RunProvenance = NO_PROVENANCE,
) -> list[Cause]:
    """Differences between the two results (and the runs that produced them, `before` and `after`)
    that can explain a change in that direction."""
    slower = change == "regression"
    return [
        *_coverage(baseline.coverage, current.coverage, slower),
        *_changed(baseline, current),
        *_record_store(before, after),
        *(_board_state(baseline.board_facts, current.board_facts) if slower else []),
        *_pipeline(before, after),
    ]


def _coverage(before: Sequence[CoverageEntry], after: Sequence[CoverageEntry], slower: bool) -> list[Cause]:
    """Workloads whose status flipped, matched by their semantic workload key (stable across TVM
    versions, unlike task names); else the rise of the FLOP share that runs untuned."""
    if not before or not after:
        return []
    old_status = {entry.workload: entry.status for entry in before}
    lost_from, lost_to = ("tuned", "fallback") if slower else ("fallback", "tuned")
    flipped = [e for e in after if e.status == lost_to and old_status.get(e.workload) == lost_from]
    share_before, share_after = _fallback_share(before), _fallback_share(after)
    if flipped:
        share = sum(e.flops for e in flipped) / (sum(e.flops for e in after) or 1.0)
        verb = "lost their tuned schedule" if slower else "gained a tuned schedule"
        listed = ", ".join(e.workload for e in flipped[:LISTED_WORKLOADS])
        more = f" and {len(flipped) - LISTED_WORKLOADS} more" if len(flipped) > LISTED_WORKLOADS else ""
        return [
            Cause(
                "coverage_lost" if slower else "coverage_gained",
                f"{_count_by_operator(flipped)} {verb} ({share:.0%} of the FLOPs): {listed}{more}",
            )
        ]
    rise = share_after - share_before if slower else share_before - share_after
    if rise > FALLBACK_SHARE_RISE:
        return [
            Cause(
                "coverage_lost" if slower else "coverage_gained",
                f"share of the FLOPs without a tuned schedule went from {share_before:.0%} to {share_after:.0%}",
            )
        ]
    return []


def _fallback_share(coverage: Sequence[CoverageEntry]) -> float:
    total = sum(entry.flops for entry in coverage)
    return sum(entry.flops for entry in coverage if entry.status == "fallback") / total if total else 0.0


def _count_by_operator(entries: Sequence[CoverageEntry]) -> str:
    """ "9 conv2d and 3 dense workloads": the operator if the table names it, else the task's stem."""
    counts = Counter(entry.operator or entry.task.split(".")[0].split("_")[0] for entry in entries)
    parts = [f"{count} {operator}" for operator, count in counts.most_common()]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return f"{text} workload{'s' if len(entries) > 1 else ''}"


def _changed(baseline: DeployResult, current: DeployResult) -> list[Cause]:
    """What the build and the run were made with: (kind, label, before, after)."""
    fields: list[tuple[str, str, Any, Any]] = [
        ("tvm_version", "TVM version", baseline.tvm_version, current.tvm_version),
        ("target", "target", baseline.target, current.target),
        ("threads", "threads", baseline.threads, current.threads),
        ("timing_kind", "timing kind", baseline.timing_kind, current.timing_kind),
    ]
    return [Cause(kind, f"{label} changed: {_difference(old, new)}") for kind, label, old, new in fields if old != new]


def _record_store(before: RunProvenance, after: RunProvenance) -> list[Cause]:
    old, new = before.record_store_version, after.record_store_version
    if old != new:
        return [Cause("record_store", f"tuning record store changed: {old} -> {new}")]
    return []


def _difference(old: Any, new: Any) -> str:
    """For the target only the fields that differ."""
    if isinstance(old, TargetSpec) and isinstance(new, TargetSpec):
        return ", ".join(old.differences(new))
    return f"{old} -> {new}"


def _board_state(before: BoardFacts, after: BoardFacts) -> list[Cause]:
    """Throttling and board changes; facts a board cannot report (None) are skipped."""
    causes = []
    old_temp, new_temp = before.temperature_c, after.temperature_c
    if new_temp is not None and (
        new_temp >= HOT_C or (old_temp is not None and new_temp - old_temp >= TEMPERATURE_RISE_C)
    ):
        was = f" (was {old_temp:.1f} °C)" if old_temp is not None else ""
        causes.append(Cause("throttling", f"board ran hot: {new_temp:.1f} °C{was}"))
    causes += _clocks(before, after)
    governor = after.governor
    if governor is not None and governor != "performance":
        was = f" (was {before.governor})" if before.governor not in (None, governor) else ""
        causes.append(Cause("governor", f"CPU governor is {governor}{was}, not performance: the clock may vary"))
    changed: list[tuple[str, Any, Any]] = [
        ("kernel", before.kernel, after.kernel),
        ("online cores", before.online_cores, after.online_cores),
    ]
    for label, old, new in changed:
        if old is not None and new is not None and old != new:
            causes.append(Cause("board", f"board {label} changed: {old} -> {new}"))
    return causes


def _clocks(before: BoardFacts, after: BoardFacts) -> list[Cause]:
    """Per-core clocks when the board reported them (cpu0 alone says little on big.LITTLE), else cpu0's."""
    old_cores: Mapping[str, int | None] = before.core_freq_khz or {}
    new_cores: Mapping[str, int | None] = after.core_freq_khz or {}
    if not new_cores:
        old_cores, new_cores = {"cpu0": before.cur_freq_khz}, {"cpu0": after.cur_freq_khz}
    maxima = after.core_max_freq_khz or {}
    causes = []
    lower = [
        f"{core} {old / 1000:.0f} -> {khz / 1000:.0f} MHz"
        for core, khz in sorted(new_cores.items(), key=_core_number)
        if khz and (old := old_cores.get(core)) and khz < old * (1 - FREQUENCY_DROP)
    ]
    if lower:
        causes.append(Cause("throttling", f"CPU clock lower: {', '.join(lower)}"))
    if after.governor == "performance":
        capped = [
            f"{core} {khz / 1000:.0f} of {maxima[core] / 1000:.0f} MHz"
            for core, khz in sorted(new_cores.items(), key=_core_number)
            if khz and maxima.get(core) and khz < maxima[core] * (1 - FREQUENCY_DROP)
        ]
        if capped:
            detail = f"below the maximum clock under the performance governor: {', '.join(capped)}"
            causes.append(Cause("throttling", detail))
    return causes


def _core_number(item: tuple[str, Any]) -> int:
    return int(item[0].removeprefix("cpu"))


def _pipeline(before: RunProvenance, after: RunProvenance) -> list[Cause]:
    old, new = before.pipeline_commit, after.pipeline_commit
    if old and new and old != new:
        return [Cause("pipeline", f"pipeline code changed: {old[:12]} -> {new[:12]}")]
    return []


def changed_tasks(
    before: Sequence[KernelTime], after: Sequence[KernelTime], change: Literal["regression", "improvement"]
) -> list[str]:
    """The tasks whose time per inference moved in the change's direction, biggest move first, e.g.
    "fused_conv2d5_add2_relu2 +81%: 2.10 -> 3.80 ms; 11 of 12 conv tasks unchanged". Tasks are matched by
    name (the same model built twice names its fused functions alike); VM builtins are not tasks."""
    old = {k.name: k.ms for k in before if not k.name.startswith(VM_BUILTIN)}
    new = {k.name: k.ms for k in after if not k.name.startswith(VM_BUILTIN)}
    common = [name for name in new if name in old and old[name] > 0]
    total = sum(new.values()) if change == "regression" else sum(old.values())
    sign = 1 if change == "regression" else -1

    def moved(name: str) -> bool:
        return abs(new[name] / old[name] - 1) > TASK_CHANGE

    grown = [name for name in common if moved(name) and sign * (new[name] - old[name]) > TASK_SHARE * total]
    grown.sort(key=lambda name: sign * (new[name] - old[name]), reverse=True)
    lines = []
    for name in grown[:LISTED_TASKS]:
        kind = _task_kind(name)
        same_kind = [other for other in common if _task_kind(other) == kind]
        unchanged = sum(1 for other in same_kind if not moved(other))
        lines.append(
            f"{name} {new[name] / old[name] - 1:+.0%}: {old[name]:.2f} -> {new[name]:.2f} ms; "
            f"{unchanged} of {len(same_kind)} {kind} tasks unchanged"
        )
    if len(grown) > LISTED_TASKS:
        lines.append(f"and {len(grown) - LISTED_TASKS} more tasks")
    return lines


def _task_kind(name: str) -> str:
    for kind in ("conv", "matmul", "dense", "pool"):
        if kind in name:
            return kind
    return "other"
