"""Why did a point get slower (or faster)? Compare what two results recorded and list what changed,
most likely cause first: tuned schedules lost, then TVM, target and thread changes, then the board's
state (heat, frequency, governor), then the pipeline's own code.

Results are plain dicts shaped like a DeployResult, optionally with `coverage` (a list of
{"task", "workload", "flops", "status": "tuned" | "fallback"}, plus "operator" when known) and
`provenance` ({"pipeline_commit", "record_store_version"}); anything absent is simply not compared.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

HOT_C = 70.0  # the RK3399's first passive trip point: above it the kernel lowers the big cores' clock
TEMPERATURE_RISE_C = 10.0
FREQUENCY_DROP = 0.05
FALLBACK_SHARE_RISE = 0.01
LISTED_WORKLOADS = 5
BUILD_FIELDS = (
    ("tvm_version", "TVM version"),
    ("target", "target"),
    ("threads", "threads"),
    ("timing_kind", "timing kind"),
)

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Cause:
    """`kind` is one of coverage_lost, coverage_gained, tvm_version, target, threads, timing_kind,
    record_store, throttling, governor, board, pipeline; `detail` is the sentence a person reads."""

    kind: str
    detail: str


def likely_causes(
    baseline: Record, current: Record, change: Literal["regression", "improvement"] = "regression"
) -> list[Cause]:
    """Differences between the two results that can explain a change in that direction."""
    slower = change == "regression"
    return [
        *_coverage(baseline.get("coverage"), current.get("coverage"), slower),
        *_changed(baseline, current),
        *(_board_state(baseline.get("board_facts") or {}, current.get("board_facts") or {}) if slower else []),
        *_pipeline(baseline.get("provenance") or {}, current.get("provenance") or {}),
    ]


def _coverage(before: Sequence[Record] | None, after: Sequence[Record] | None, slower: bool) -> list[Cause]:
    """Workloads whose status flipped, matched by their semantic workload key (stable across TVM
    versions, unlike task names); else the rise of the FLOP share that runs untuned."""
    if not before or not after:
        return []
    old_status = {entry["workload"]: entry["status"] for entry in before}
    lost_from, lost_to = ("tuned", "fallback") if slower else ("fallback", "tuned")
    flipped = [e for e in after if e["status"] == lost_to and old_status.get(e["workload"]) == lost_from]
    share_before, share_after = _fallback_share(before), _fallback_share(after)
    if flipped:
        share = sum(e["flops"] for e in flipped) / (sum(e["flops"] for e in after) or 1.0)
        verb = "lost their tuned schedule" if slower else "gained a tuned schedule"
        listed = ", ".join(e["workload"] for e in flipped[:LISTED_WORKLOADS])
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


def _fallback_share(coverage: Sequence[Record]) -> float:
    total = sum(entry["flops"] for entry in coverage)
    return sum(entry["flops"] for entry in coverage if entry["status"] == "fallback") / total if total else 0.0


def _count_by_operator(entries: Sequence[Record]) -> str:
    """ "9 conv2d and 3 dense workloads": the operator if the table names it, else the task's stem."""
    counts = Counter(entry.get("operator") or entry["task"].split(".")[0].split("_")[0] for entry in entries)
    parts = [f"{count} {operator}" for operator, count in counts.most_common()]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return f"{text} workload{'s' if len(entries) > 1 else ''}"


def _changed(baseline: Record, current: Record) -> list[Cause]:
    causes = [
        Cause(key, f"{label} changed: {_difference(baseline.get(key), current.get(key))}")
        for key, label in BUILD_FIELDS
        if baseline.get(key) != current.get(key)
    ]
    old_store = (baseline.get("provenance") or {}).get("record_store_version")
    new_store = (current.get("provenance") or {}).get("record_store_version")
    if old_store != new_store:
        causes.append(Cause("record_store", f"tuning record store changed: {old_store} -> {new_store}"))
    return causes


def _difference(old: Any, new: Any) -> str:
    """For dicts (the target) only the fields that differ."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
        return ", ".join(f"{key} {old.get(key)} -> {new.get(key)}" for key in keys)
    return f"{old} -> {new}"


def _board_state(before: Record, after: Record) -> list[Cause]:
    """Throttling and board changes; facts a board cannot report (None) are skipped."""
    causes = []
    old_temp, new_temp = before.get("temperature_c"), after.get("temperature_c")
    if new_temp is not None and (
        new_temp >= HOT_C or (old_temp is not None and new_temp - old_temp >= TEMPERATURE_RISE_C)
    ):
        was = f" (was {old_temp:.1f} °C)" if old_temp is not None else ""
        causes.append(Cause("throttling", f"board ran hot: {new_temp:.1f} °C{was}"))
    causes += _clocks(before, after)
    governor = after.get("governor")
    if governor is not None and governor != "performance":
        was = f" (was {before.get('governor')})" if before.get("governor") not in (None, governor) else ""
        causes.append(Cause("governor", f"CPU governor is {governor}{was}, not performance: the clock may vary"))
    for key, label in (("kernel", "kernel"), ("online_cores", "online cores")):
        if before.get(key) is not None and after.get(key) is not None and before[key] != after[key]:
            causes.append(Cause("board", f"board {label} changed: {before[key]} -> {after[key]}"))
    return causes


def _clocks(before: Record, after: Record) -> list[Cause]:
    """Per-core clocks when the board reported them (cpu0 alone says little on big.LITTLE), else cpu0's."""
    old_cores, new_cores = before.get("core_freq_khz") or {}, after.get("core_freq_khz") or {}
    if not new_cores:
        old_cores, new_cores = {"cpu0": before.get("cur_freq_khz")}, {"cpu0": after.get("cur_freq_khz")}
    maxima = after.get("core_max_freq_khz") or {}
    causes = []
    lower = [
        f"{core} {old_cores[core] / 1000:.0f} -> {khz / 1000:.0f} MHz"
        for core, khz in sorted(new_cores.items(), key=_core_number)
        if khz and old_cores.get(core) and khz < old_cores[core] * (1 - FREQUENCY_DROP)
    ]
    if lower:
        causes.append(Cause("throttling", f"CPU clock lower: {', '.join(lower)}"))
    if after.get("governor") == "performance":
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


def _pipeline(before: Record, after: Record) -> list[Cause]:
    old, new = before.get("pipeline_commit"), after.get("pipeline_commit")
    if old and new and old != new:
        return [Cause("pipeline", f"pipeline code changed: {old[:12]} -> {new[:12]}")]
    return []
