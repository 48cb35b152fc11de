"""The deploy summary a person reads at a glance (TFLite benchmark_model style), as plain text lines."""

from pathlib import Path

from pipeline.deploy.results import DeployResult


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _tuned_count(result: DeployResult) -> str:
    heavy = [entry for entry in result.coverage if entry.heavy]
    tuned = sum(1 for entry in heavy if entry.status == "tuned")
    text = f"{tuned} of {len(heavy)} conv/dense workloads"
    if tuned == len(heavy) or not all(entry.schedule for entry in heavy):  # results before fallbacks
        return text
    count = {
        kind: sum(1 for entry in heavy if entry.schedule == kind)
        for kind in ("migrated", "transferred", "default", "winograd", "naive")
        if kind != "winograd" or any(entry.schedule == kind for entry in heavy)
    }
    return text + ", the others " + ", ".join(f"{n} {kind}" for kind, n in count.items())


def deploy_summary_lines(result: DeployResult, result_path: Path | None = None) -> list[str]:
    stats = result.timings.stats
    t = result.timings
    target = result.target
    board_line = result.board
    if result.emulated:
        board_line += "  [EMULATED under qemu: timings are emulation costs, not figures of the real board]"
    build = result.build
    build_line = (
        f"cached (compiled earlier in {build.compile_seconds:.1f} s, key {build.key})"
        if build.cached
        else f"compiled in {build.compile_seconds:.1f} s (key {build.key})"
    )
    push = result.push
    lines = [
        f"Board        {board_line}",
        f"Model        {result.model}  input {'x'.join(map(str, build.input_shape))}",
        f"Target       {target.mtriple} -mcpu={target.mcpu} {' '.join(target.mattr)}".rstrip()
        + f", {result.threads} threads, runtime {result.runtime_arch}",
        f"TVM          {result.tvm_version}",
        f"Build        {build_line}",
        f"Coverage     {result.coverage_tuned_share:.0%} of conv/dense FLOPs run tuned schedules "
        f"({_tuned_count(result)}; records {result.record_store_version})",
        f"Push         {len(push.uploaded)} uploaded ({push.bytes_sent / 1e6:.1f} MB), "
        f"{len(push.skipped)} unchanged, {push.seconds:.1f} s",
        f"Init         {_ms(t.load_ms)}",
        f"First run    {_ms(t.first_ms)}",
        f"Warm-up      {len(t.warmup_ms)} runs"
        + (f", avg {_ms(sum(t.warmup_ms) / len(t.warmup_ms))}" if t.warmup_ms else ""),
        f"Steady state count={stats.count} min={stats.min_ms:.2f} avg={stats.mean_ms:.2f} std={stats.std_ms:.2f} "
        f"median={stats.median_ms:.2f} p90={stats.p90_ms:.2f} max={stats.max_ms:.2f} (ms)",
        f"Mean inference time (std dev): {stats.mean_ms:.2f} ms ({stats.std_ms:.2f} ms)"
        + ("  [emulated]" if result.emulated else ""),
    ]
    if result.peak_rss_kb is not None:
        lines.append(f"Memory       peak {result.peak_rss_kb / 1024:.1f} MB resident (the runner process on the board)")
    check = result.check
    verdict = "matches" if check.passed else "DOES NOT MATCH"
    lines.append(
        f"Check        output {verdict} {check.reference} (relative error {check.relative_error:.2e}, "
        f"tolerance {check.tolerance:.0e}, top-1 {'same' if check.same_top1 else 'differs'})"
    )
    if result_path is not None:
        lines.append(f"Result       {result_path}")
    return lines


def kernel_table_lines(result: DeployResult, width: int = 48) -> list[str]:
    """Per-task times of one inference, slowest first (TFLite's op profile): the model's own kernels,
    with the VM's bookkeeping calls summed into one row."""
    kernels: dict[str, tuple[int, float]] = {}
    for entry in result.kernel_times:
        name = "(VM builtins)" if entry.name.startswith("vm.builtin.") else entry.name
        calls, ms = kernels.get(name, (0, 0.0))
        kernels[name] = (calls + entry.calls, ms + entry.ms)
    total = sum(ms for _, ms in kernels.values()) or 1.0
    lines = [f"{'task':{width}} {'calls':>5} {'ms':>10} {'share':>6}"]
    for name, (calls, ms) in sorted(kernels.items(), key=lambda item: item[1][1], reverse=True):
        shown = name if len(name) <= width else name[: width - 1] + "…"
        lines.append(f"{shown:{width}} {calls:5d} {ms:10.3f} {ms / total:6.1%}")
    lines.append(f"{'total':{width}} {'':5} {total:10.3f} {'':6}")
    return lines
