"""Result dicts shaped exactly like a deploy's (built from the real dataclasses), with chosen latencies,
coverage and board state: the input the history, causes and nightly modules see from a real deploy."""

from dataclasses import asdict, replace
from typing import Any

import numpy as np

from pipeline.board.facts import BoardFacts
from pipeline.deploy.check import CheckResult
from pipeline.deploy.results import DeployResult, Timings
from pipeline.deploy.timing import summarize

RK3399_TARGET = {
    "kind": "llvm",
    "mtriple": "aarch64-linux-gnu",
    "mcpu": "cortex-a72",
    "mattr": ["+neon"],
    "num-cores": 2,
}
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


def result_dict(
    runs_ms: list[float],
    *,
    board: str = "rk3399",
    model: str = "vgg16",
    created: str = "2026-11-25T02:30:00Z",
    tvm_version: str = "0.27.0",
    target: dict[str, Any] | None = None,
    threads: int = 2,
    facts: BoardFacts = HEALTHY,
    passed: bool = True,
    coverage: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    result = DeployResult(
        created=created,
        board=board,
        emulated=False,
        timing_kind="native",
        model=model,
        tvm_version=tvm_version,
        target=target or RK3399_TARGET,
        threads=threads,
        build={"key": "0" * 16, "cached": True, "compile_seconds": 1.0, "input_shape": [1, 3, 224, 224]},
        push={"uploaded": [], "skipped": [], "bytes_sent": 0, "seconds": 0.1},
        runtime_arch="aarch64",
        board_facts=facts,
        timings=Timings(load_ms=1.0, first_ms=runs_ms[0], warmup_ms=[], runs_ms=runs_ms, stats=summarize(runs_ms)),
        check=CheckResult(passed, "onnxruntime", 0.0, 0.0 if passed else 0.5, 1e-3, passed),
        coverage=coverage or [],
        coverage_tuned_share=_tuned_share(coverage or []),
        record_store_version="synthetic",
    )
    return asdict(result)


def _tuned_share(coverage: list[dict[str, Any]]) -> float:
    total = sum(entry["flops"] for entry in coverage)
    return sum(entry["flops"] for entry in coverage if entry["status"] == "tuned") / total if total else 1.0


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


def vgg16_coverage(conv_status: str) -> list[dict[str, Any]]:
    """The user's VGG-16 story: nine conv2d workloads (tuned or not) and three dense ones that never were."""
    conv = [
        {
            "task": "conv2d_nchw_spatial_pack.arm_cpu",
            "operator": "conv2d",
            "workload": f"conv2d(1x{cin}x{size}x{size}, {cout}x{cin}x3x3)",
            "flops": 2.0 * size * size * cout * cin * 9,
            "status": conv_status,
        }
        for cin, size, cout in VGG_CONV_SHAPES
    ]
    dense = [
        {
            "task": "dense_nopack.x86",
            "operator": "dense",
            "workload": f"dense(1x{k}, {n}x{k})",
            "flops": 2.0 * k * n,
            "status": "fallback",
        }
        for k, n in ((25088, 4096), (4096, 4096), (4096, 1000))
    ]
    return conv + dense
