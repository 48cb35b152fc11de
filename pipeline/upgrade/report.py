"""What `invoke upgrade-check` and `invoke migrate` print: their results as plain text lines."""

from pathlib import Path

from pipeline.board.profile import BoardProfile
from pipeline.errors import shown
from pipeline.records.store import shown as shown_record
from pipeline.upgrade.migrate import MigrateResult
from pipeline.upgrade.upgrade_check import KINDS, UpgradeCheck


def upgrade_check_lines(report: UpgradeCheck, path: Path) -> list[str]:
    """The two releases side by side (latency, runs, coverage per schedule kind, output error), the
    verdict, the tasks that changed, and where the comparison is kept."""
    old, new = report.old, report.new
    rows = [
        ("TVM", old.tvm_version, new.tvm_version),
        ("median", f"{old.stats.median_ms:.3f} ms", f"{new.stats.median_ms:.3f} ms"),
        ("p90", f"{old.stats.p90_ms:.3f} ms", f"{new.stats.p90_ms:.3f} ms"),
        ("runs", str(old.stats.count), str(new.stats.count)),
        *(
            (
                kind,
                f"{old.coverage.counts[kind]} ({old.coverage.flop_shares[kind]:.0%} FLOPs)",
                f"{new.coverage.counts[kind]} ({new.coverage.flop_shares[kind]:.0%} FLOPs)",
            )
            for kind in KINDS
        ),
        ("output", f"{old.check.relative_error:.1e} rel. error", f"{new.check.relative_error:.1e} rel. error"),
    ]
    timing_kind = "emulated, " if report.emulated else ""
    lines = [
        f"{report.model} on {report.board} ({timing_kind}{report.rounds} interleaved rounds)",
        f"{'':12} {old.name:>24} {new.name:>24}",
        *(f"{name:12} {before:>24} {after:>24}" for name, before, after in rows),
    ]
    verdict = report.verdict
    p_value = f", p={verdict.p_value:.2g}" if verdict.p_value is not None else ""
    lines.append(
        f"latency      {new.slug}/{old.slug} median ratio {verdict.ratio:.3f}: {verdict.change} "
        f"({verdict.method}{p_value}; {verdict.reason})"
    )
    if report.changes:
        lines.append(f"{len(report.changes)} conv/dense tasks changed their schedule kind or time:")
        for change in report.changes:
            times = (
                f"  {change.before_ms:.3f} -> {change.after_ms:.3f} ms ({change.after_ms / change.before_ms - 1:+.0%})"
                if change.before_ms and change.after_ms
                else ""
            )
            lines.append(f"  {change.task}: {change.before} -> {change.after}{times}")
    else:
        lines.append("no conv/dense task changed its schedule kind or time")
    lines.append(f"Result       {shown(path)}")
    return lines


def migrate_lines(result: MigrateResult, model: str, profile: BoardProfile) -> list[str]:
    """The records refused, then each migrated schedule against the default one and whether it was kept."""
    lines = [f"rejected: {line}" for line in result.rejected]
    if not result.measured:
        return [*lines, f"no migrated schedule to measure for {model} on {profile.name} under TVM {result.release}"]
    lines.append(f"{'task':44} {'migrated':>10} {'default':>10}  outcome")
    for row in result.measured:
        outcome = f"kept as {shown_record(row.saved)}" if row.saved else f"not kept: {row.reason}"
        lines.append(f"{row.task[:44]:44} {row.migrated_us:>8.1f}µs {row.default_us:>8.1f}µs  {outcome}")
        lines.append(f"{'':44}   from {row.source}")
    kept = sum(1 for row in result.measured if row.kept)
    emulated = " (measured under emulation)" if profile.emulated else ""
    lines.append(f"kept {kept} of {len(result.measured)} migrated schedules as TVM {result.release} records{emulated}")
    return lines
