"""Deploy results like a real deploy's, with chosen latencies, coverage and board state: the input the
history, causes and nightly modules see from a real deploy."""

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.board.facts import BoardFacts
from pipeline.board.profile import TargetSpec
from pipeline.board.sync import PushReport
from pipeline.compiler.builder import BuildArtifact
from pipeline.compiler.coverage import Coverage, CoverageEntry
from pipeline.deploy.check import CheckResult
from pipeline.deploy.results import DeployResult, Timings
from pipeline.deploy.timing import summarize

RK3399_TARGET = TargetSpec(mtriple="aarch64-linux-gnu", mcpu="cortex-a72", mattr=["+neon"], num_cores=2)
HEALTHY = BoardFacts(
    kernel_arch="aarch64",
    kernel="6.1.0",
    hostname="rk3399",
    online_cores=6,
    cpu_model="0xd08",
    governor="performance",
    cur_freq_khz=1800000,
    temperature_c=45.0,
)


def latencies(median_ms: float, runs: int, seed: int, spread: float = 0.02) -> list[float]:
    """Log-normal per-run latencies: right-skewed like real timings."""
    return list(np.random.default_rng(seed).lognormal(np.log(median_ms), spread, runs))


def synthetic_result(
    runs_ms: list[float],
    *,
    board: str = "rk3399",
    model: str = "vgg16",
    created: str = "2026-11-25T02:30:00Z",
    tvm_version: str = "0.27.0",
    target: TargetSpec | None = None,
    threads: int = 2,
    facts: BoardFacts = HEALTHY,
    passed: bool = True,
    coverage: list[CoverageEntry] | None = None,
    build_key: str = "0" * 16,
) -> DeployResult:
    build_dir = Path("/nonexistent/builds") / f"{model}-aarch64-{build_key}"
    return DeployResult(
        created=created,
        board=board,
        emulated=False,
        timing_kind="native",
        model=model,
        tvm_version=tvm_version,
        target=target or RK3399_TARGET,
        threads=threads,
        build=BuildArtifact(
            key=build_key,
            directory=build_dir,
            library=build_dir / "model.so",
            params=build_dir / "params.bin",
            model=model,
            input_name="data",
            input_shape=(1, 3, 224, 224),
            arch="aarch64",
            target=target or RK3399_TARGET,
            tvm_version=tvm_version,
            cached=True,
            compile_seconds=1.0,
            coverage=Coverage(tasks=(), tuned_share=1.0, records_applicable=0, problems=()),
        ),
        push=PushReport(uploaded=[], skipped=[], bytes_sent=0, seconds=0.1),
        runtime_arch="aarch64",
        board_facts=facts,
        timings=Timings(load_ms=1.0, first_ms=runs_ms[0], warmup_ms=[], runs_ms=runs_ms, stats=summarize(runs_ms)),
        check=CheckResult(passed, "onnxruntime", 0.0, 0.0 if passed else 0.5, 1e-3, passed),
        coverage=coverage or [],
        coverage_tuned_share=_tuned_share(coverage or []),
        record_store_version="synthetic",
    )


def _tuned_share(coverage: list[CoverageEntry]) -> float:
    total = sum(entry.flops for entry in coverage)
    return sum(entry.flops for entry in coverage if entry.status == "tuned") / total if total else 1.0


def hot(facts: BoardFacts = HEALTHY, **changes: Any) -> BoardFacts:
    return replace(facts, **changes)


VGG_CONV_SHAPES = [
    (3, 224, 64),
    (64, 224, 64),
    (64, 112, 128),
    (128, 112, 128),
    (128, 56, 256),
    (256, 56, 256),
    (256, 28, 512),
    (512, 28, 512),
    (512, 14, 512),
]


Status = Literal["tuned", "fallback"]


def coverage_entry(task: str, workload: str, flops: float, status: Status, operator: str = "") -> CoverageEntry:
    """A conv/dense task as a result records it (its share of the model's FLOPs left at 0)."""
    return CoverageEntry(task, workload, operator, heavy=True, flops=flops, share=0.0, status=status)


def vgg16_coverage(conv_status: Status) -> list[CoverageEntry]:
    """The user's VGG-16 story: nine conv2d workloads (tuned or not) and three dense ones that never were."""
    conv = [
        coverage_entry(
            "conv2d_nchw_spatial_pack.arm_cpu",
            f"conv2d(1x{cin}x{size}x{size}, {cout}x{cin}x3x3)",
            2.0 * size * size * cout * cin * 9,
            conv_status,
            operator="conv2d",
        )
        for cin, size, cout in VGG_CONV_SHAPES
    ]
    dense = [
        coverage_entry("dense_nopack.x86", f"dense(1x{k}, {n}x{k})", 2.0 * k * n, "fallback", operator="dense")
        for k, n in ((25088, 4096), (4096, 4096), (4096, 1000))
    ]
    return conv + dense
