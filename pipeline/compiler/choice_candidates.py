"""The forms of a tuned conv that a choice is measured between: its direct task with its record
applied, and the Winograd stages (each tile size) with their best schedules.

Why both on the same footing: the Winograd rewrite was measured against the direct *default*, so a
tuned direct record never took part in the race. Each candidate here is a scheduled PrimFunc module
(one for the direct form, three for a Winograd form: input transform, GEMM, output transform), so the
same modules are timed on this host at build time (`time_here`) or on the board through MetaSchedule's
builder and runner (`invoke tune --choices-only`, pipeline/tuning/tuner.py).
"""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.board.profile import TargetSpec
from pipeline.compiler import passes
from pipeline.compiler.rewrites.winograd import POINTS, STAGE_PREFIX, ConvShape, eligible, rewrite, var_name
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.records.choices import Candidate, Choice, Form
from pipeline.records.store import StoredRecord, shown, workload_module
from pipeline.records.workloads import WorkloadKey

_RUNS = 20  # best of, on this host


@dataclass(frozen=True)
class CandidateForm:
    """One form of a conv as scheduled PrimFunc modules; its time is the sum of theirs."""

    form: Form
    tile: int  # m of F(m x m, 3x3); 0 for the direct form
    schedule: str  # the direct record's file, or the stages' schedule kinds
    modules: tuple[Any, ...]  # scheduled PrimFunc modules, run one after the other


@dataclass(frozen=True)
class ConvCandidates:
    """The forms one conv is measured in, and what its choice is keyed by."""

    weight: str
    key: WorkloadKey  # the conv's direct task
    shape: ConvShape
    forms: tuple[CandidateForm, ...]


def eligible_shapes(mod: Any) -> dict[str, ConvShape]:
    """The Winograd-eligible convs of an imported module, by weight parameter name."""
    from tvm import relax

    from pipeline.compiler.rewrites.winograd import calls_of

    found = {}
    for call in calls_of(mod, "relax.nn.conv2d"):
        shape = eligible(call)
        if shape is not None and isinstance(call.args[1], relax.Var):
            found[var_name(call.args[1])] = shape
    return found


def conv_candidates(
    weight: str, key: WorkloadKey, shape: ConvShape, record: StoredRecord, target: Any, stage_records: Mapping[str, Any]
) -> ConvCandidates:
    """The direct form with `record` applied, and each Winograd tile size; a stage takes its record
    from `stage_records` (scheduled modules by structural hash) where there is one, else its own schedule."""
    return ConvCandidates(
        weight,
        key,
        shape,
        (_direct(record),) + tuple(_winograd(shape, m, target, stage_records) for m in sorted(POINTS)),
    )


def _direct(record: StoredRecord) -> CandidateForm:
    return CandidateForm("direct", 0, shown(record.path), (scheduled_module(record),))


def scheduled_module(record: StoredRecord) -> Any:
    """The record's task with its schedule applied, as a PrimFunc module that compiles on its own."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    workload = ms.database.Workload(workload_module(record.record))
    tuning = ms.database.TuningRecord.from_json(record.record.tvm_record, workload)
    sch = Schedule(workload.mod)
    tuning.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod


def _winograd(shape: ConvShape, m: int, target: Any, stage_records: Mapping[str, Any]) -> CandidateForm:
    """The stages of conv + bias + ReLU of this shape as F(m x m, 3x3), scheduled as a build schedules them."""
    from pipeline.compiler.schedules.winograd_schedules import gemm_width, winograd_schedule
    from pipeline.compiler.winograd_choice import conv_module

    rewritten, _ = rewrite(conv_module(shape), tile=m, width=gemm_width(target))
    lifted, _ = passes.lift_weight_transforms(rewritten, {"main": _random_weights(shape)})
    fused = passes.fuse(lifted, target)
    functions = {gv.name_hint: func for gv, func in fused.functions.items()}
    modules, kinds = [], []
    for task in schedule_tasks.extract_tasks(fused, target):
        if not task.key.operator.startswith(STAGE_PREFIX):
            continue
        if task.structural_hash in stage_records:
            modules.append(stage_records[task.structural_hash])
            kinds.append("tuned")
            continue
        schedule = winograd_schedule(functions[task.name], target, task.name)
        if schedule is not None:
            modules.append(schedule.mod)
            kinds.append(schedule.kind)
    return CandidateForm("winograd", m, "+".join(dict.fromkeys(kinds)) or "winograd", tuple(modules))


def _random_weights(shape: ConvShape) -> list[Any]:
    import tvm

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((shape.out_channels, shape.channels, 3, 3)).astype("float32")
    bias = rng.standard_normal((1, shape.out_channels, 1, 1)).astype("float32")
    return [tvm.runtime.tensor(weight), tvm.runtime.tensor(bias)]


def choice_of(
    candidates: ConvCandidates,
    times_ms: Sequence[float],
    target: TargetSpec,
    board_name: str,
    revision: str,
    emulated: bool,
) -> Choice:
    """The choice record of one conv from its forms' measured times (milliseconds, same order)."""
    import tvm

    return Choice(
        rewrite="winograd",
        workload=candidates.key,
        target=target,
        board=board_name,
        tvm_version=tvm.__version__,
        pipeline_revision=revision,
        emulated=emulated,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        candidates=tuple(
            Candidate(f.form, f.tile, round(ms, 4), f.schedule) for f, ms in zip(candidates.forms, times_ms)
        ),
    )


def time_here(modules: Sequence[Any], target: Any, runs: int = _RUNS) -> float:
    """Milliseconds of the modules run one after the other on this host, best of `runs` (each module's best)."""
    return sum(_best_ms(mod, target, runs) for mod in modules)


def _best_ms(mod: Any, target: Any, runs: int) -> float:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    function = tvm.compile(mod, target=target)["main"]
    rng = np.random.default_rng(0)
    tensors = [
        tvm.runtime.tensor(rng.uniform(0.5, 1.5, [int(d) for d in info.shape]).astype(info.dtype))
        for info in ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    ]
    function(*tensors)  # compiled lazily on the first call
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        function(*tensors)
        best = min(best, time.perf_counter() - started)
    return best * 1e3


Timer = Callable[[Sequence[Any]], float]
"""Milliseconds of one form's modules, wherever they run."""
