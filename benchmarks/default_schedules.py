"""Naive vs default (vs transferred and tuned, given records) schedules on this host: GFLOP/s per
conv/dense task. A benchmark to run by hand, not a test; whole-model latencies against ONNX Runtime
are benchmarks/model_latency.py's.

    .venv/bin/python benchmarks/default_schedules.py --model vgg16 --layers 4
    .venv/bin/python benchmarks/default_schedules.py --model vgg16 --records DIR  # workloads.json, records.json

With --records, "tuned" replays a task's own record and "transfer" the best transfer from the
records of other shapes (the task's own record left out). --layers N times the N most expensive
distinct tasks (-1: all).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--layers", type=int, default=4, help="tasks to time, most expensive first (-1: all)")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--records", type=Path, help="folder with a MetaSchedule workloads.json and records.json")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import tvm
    from tvm.target import codegen

    from pipeline.compiler.importer.model_file import resolve_model
    from pipeline.compiler.lowering import import_model
    from pipeline.compiler.passes import fuse
    from pipeline.compiler.schedules.default_schedules import default_schedules

    target = tvm.target.Target(
        {
            "kind": "llvm",
            "mtriple": "x86_64-linux-gnu",
            "mcpu": str(codegen.llvm_get_system_cpu()),
            "num-cores": args.threads,
        }
    )
    fused = fuse(import_model(resolve_model(args.model))[0], target)

    started = time.perf_counter()
    schedules = default_schedules(fused, target)
    print(f"default schedules for {len(schedules)} PrimFuncs in {time.perf_counter() - started:.1f} s")

    tasks = sorted(
        ((name, _flops(fused[name])) for name, s in schedules.items() if s is not None),
        key=lambda pair: -pair[1],
    )
    count = len(tasks) if args.layers < 0 else args.layers
    records = _load_records(args.records) if args.records else []
    extra = f" {'transfer':>8} {'tuned':>8}" if records else ""
    print(f"{'task':44} {'GFLOP':>7} {'naive':>8} {'default':>8} {'ratio':>7}{extra}  rule")
    for name, flops in tasks[:count]:
        workload = schedules[name].workload
        naive = _gflops(workload, flops, target)
        default = _gflops(schedules[name].mod, flops, target)
        line = f"{name:44} {flops / 1e9:7.3f} {naive:8.1f} {default:8.1f} {default / naive:6.1f}x"
        if records:
            line += " " + " ".join(f"{g:8.1f}" for g in _with_records(workload, records, flops, target))
        print(f"{line}  {schedules[name].rule}", flush=True)


def _load_records(folder: Path) -> list:
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(str(folder / "workloads.json"), str(folder / "records.json"))
    return list(database.get_all_tuning_records())


def _with_records(workload: object, records: list, flops: float, target: object) -> tuple[float, float]:
    """GFLOP/s of the best transfer from other shapes' records, and of the task's own best record
    (NaN where there is none)."""
    import tvm_ffi
    from tvm.s_tir import Schedule

    from pipeline.compiler.schedules.schedule_transfer import donors, transferred_schedules

    own_hash = tvm_ffi.structural_hash(workload)
    own = [r for r in records if tvm_ffi.structural_hash(r.workload.mod) == own_hash]
    others = [r for r in records if tvm_ffi.structural_hash(r.workload.mod) != own_hash]
    transfers = transferred_schedules(workload, target, donors(others, target))
    transfer = max((_gflops(t.mod, flops, target) for t in transfers), default=float("nan"))
    tuned = float("nan")
    if own:
        best = min(own, key=lambda r: float(np.mean([float(x) for x in r.run_secs])))
        sch = Schedule(workload)
        best.trace.apply_to_schedule(sch, remove_postproc=False)
        tuned = _gflops(sch.mod, flops, target)
    return transfer, tuned


def _flops(func: object) -> float:
    """TVM's count of the task's floating-point operations (the conv's multiply-adds dominate)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    from pipeline.compiler.schedules.default_schedules import normalize

    return float(estimate_tir_flops(normalize(func)))


def _gflops(mod: object, flops: float, target: object) -> float:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    function = tvm.compile(mod, target=target)["main"]
    args = [
        tvm.runtime.tensor(np.random.default_rng(0).random([int(d) for d in info.shape], dtype=np.float32))
        for info in ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    ]
    function(*args)  # compiled lazily on the first call
    once = _best_seconds(lambda: function(*args), repeat=1)
    # Best of up to 20 runs within about a second: the host is shared, a single run can be slowed.
    best = min(once, _best_seconds(lambda: function(*args), repeat=int(min(20, max(3, 1.0 / once)))))
    return flops / best / 1e9


def _best_seconds(call: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


if __name__ == "__main__":
    main()
