"""Which eligible convs run Winograd: measured on the build host when it runs the target's code,
else by rule (docs/winograd.md).

Why measure: Winograd trades multiply-adds for memory traffic. Its transformed weights are 4x the
conv's (36 against 9 values per channel pair) and the GEMM uses each only once per tile, so a conv
with few tiles and many channels (512 channels at 14x14: 16 tiles) reads 4x the weights for a small
gain, and a conv with few channels at a large image writes and reads its 2.25x larger transformed
input and output for little arithmetic. Where the two meet depends on the CPU's caches and memory,
so on a board that is this machine (the `local` profile) each conv shape is timed both ways, with
the schedules the build gives it, and the faster one is kept. The timings are kept per CPU under
.cache/winograd/ (delete to measure again), so a later build, `invoke tune` and `invoke migrate` lower the same module.
"""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_atomically
from pipeline.board.profile import TargetSpec
from pipeline.compiler.rewrites.winograd import POINTS, ConvShape, Timing, rewrite
from pipeline.paths import CACHE_DIR
from pipeline.records.choices import Choice, StoredChoice, choice_from_json, choice_json
from pipeline.records.workloads import WorkloadKey

_RUNS = 20


def chooser(target: Any, cache_dir: Path = CACHE_DIR) -> Callable[[ConvShape], Timing] | None:
    """A per-conv measurement for `rewrite`, or None (the rule alone) when this host cannot run the
    target's code (another architecture or CPU: an ARM board, emulated or real)."""
    from pipeline.compiler.schedules.schedule_transfer import runs_here

    if not runs_here(target):
        return None
    path = timings_path(str(target.attrs["mcpu"]), int(target.attrs["num-cores"]), cache_dir)
    return lambda shape: _timing(shape, target, path)


def cached_choice(
    target: Any, record_hash: str, key: WorkloadKey, measure: Callable[[], Choice], cache_dir: Path = CACHE_DIR
) -> StoredChoice:
    """A tuned conv's choice on this host: measured once per CPU and record (`measure`), kept with the
    Winograd timings, so later builds, `invoke tune` and `invoke migrate` lower the same module."""
    path = timings_path(str(target.attrs["mcpu"]), int(target.attrs["num-cores"]), cache_dir)
    entry = f"tuned {record_hash} {key.text()}"
    known = json.loads(path.read_text()) if path.is_file() else {}
    if entry not in known:
        choice = measure()
        known = json.loads(path.read_text()) if path.is_file() else {}  # another build may have added some
        known[entry] = choice_json(choice)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(known, indent=1).encode())
    return StoredChoice(path, choice_from_json(known[entry]), "")


def timings_path(mcpu: str, cores: int, cache_dir: Path = CACHE_DIR) -> Path:
    """Where this host's Winograd timings for a CPU and core count are kept."""
    return cache_dir / "winograd" / f"v3-{mcpu}-{cores}cores.json"


def host_timings_digest(target: TargetSpec, cache_dir: Path = CACHE_DIR) -> str:
    """The digest of the stored timings a build for `target` reads ("" when there are none): part of the
    build key, so a cached build does not keep the choices of timings since deleted or added."""
    path = timings_path(target.mcpu, target.num_cores, cache_dir)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def _timing(shape: ConvShape, target: Any, path: Path) -> Timing:
    from pipeline.compiler.schedules.winograd_schedules import gemm_width

    """Direct and Winograd times (each tile size) of one conv + bias + ReLU of this shape, measured once per CPU.
    Why each tile size: F(2x2)'s transformed weights are 16/36 of F(4x4)'s, which wins where the GEMM
    streams its weights for few tiles (512 channels at 7x7), although it does more multiply-adds."""
    known = json.loads(path.read_text()) if path.is_file() else {}
    key = json.dumps(asdict(shape))
    if key not in known:
        direct = conv_module(shape)
        width = gemm_width(target)
        winograd = {m: _best_ms(rewrite(direct, tile=m, width=width)[0], shape, target) for m in sorted(POINTS)}
        known = json.loads(path.read_text()) if path.is_file() else {}  # another build may have added some
        known[key] = {"direct_ms": _best_ms(direct, shape, target), "winograd_ms": winograd}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(known, indent=1).encode())
    entry = known[key]
    return Timing(entry["direct_ms"], {int(m): ms for m, ms in entry["winograd_ms"].items()})


def conv_module(shape: ConvShape) -> Any:
    from tvm import relax

    from pipeline.tvm_release.compat import TensorType as tensor

    builder = relax.BlockBuilder()
    x = relax.Var("x", tensor((shape.batch, shape.channels, shape.height, shape.width), "float32"))
    w = relax.Var("w", tensor((shape.out_channels, shape.channels, 3, 3), "float32"))
    b = relax.Var("b", tensor((1, shape.out_channels, 1, 1), "float32"))
    with builder.function("main", [x, w, b], attrs={"num_input": 1}):
        with builder.dataflow():
            conv = builder.emit(relax.op.nn.conv2d(x, w, padding=shape.padding))
            out = builder.emit_output(relax.op.nn.relu(relax.op.add(conv, b)))
        builder.emit_func_output(out)
    return builder.get()


def _best_ms(mod: Any, shape: ConvShape, target: Any) -> float:
    """Built the way the model is (weights lifted, fused, the build's schedules), then timed."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from pipeline.compiler import passes
    from pipeline.compiler.schedules import tasks as schedule_tasks
    from pipeline.compiler.schedules.schedule_transfer import fallback_database

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((shape.out_channels, shape.channels, 3, 3)).astype("float32")
    bias = rng.standard_normal((1, shape.out_channels, 1, 1)).astype("float32")
    lifted, params = passes.lift_weight_transforms(
        mod, {"main": [tvm.runtime.tensor(weight), tvm.runtime.tensor(bias)]}
    )
    fused = passes.fuse(lifted, target)
    database, _ = fallback_database(fused, target, ms.database.MemoryDatabase())
    machine = relax.VirtualMachine(
        passes.build_executable(schedule_tasks.apply_database(fused, database, target), target), tvm.cpu()
    )
    data = tvm.runtime.tensor(
        rng.standard_normal((shape.batch, shape.channels, shape.height, shape.width)).astype("float32")
    )
    machine["main"](data, *params["main"])  # compiled lazily on the first call
    best = float("inf")
    for _ in range(_RUNS):
        started = time.perf_counter()
        machine["main"](data, *params["main"])
        best = min(best, time.perf_counter() - started)
    return best * 1e3
