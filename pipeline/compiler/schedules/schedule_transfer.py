"""Transfer: a tuned record of the same operator at another shape, replayed on a task without one.

Why: a tuned conv's decisions, replayed on another conv of the same target, can beat the default
rules (a tuned record has been measured on the target; the rules are fixed). A record's trace
cannot be replayed as it is: its block names (epilogues differ) and tile factors (extents differ)
belong to its own workload. We therefore read the donor's decisions per iterator of its tiled
(anchor) block, replay the new task's own sketch with the same epilogue placement, and give each
tile decision the closest valid factors for the new extent. A transfer is used only when it
computes what the default computes and runs faster on this machine.
"""

import functools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm.ir import IRModule
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Instruction, Trace
from tvm.target import Target
from tvm.tirx import PrimFunc

from pipeline.compiler.schedules.default_schedules import (
    Decider,
    TaskSchedule,
    block_and_iter,
    commit_schedules,
    default_schedule,
    design_space,
    fusion_level,
    normalize,
    postprocs,
    ranked,
    replay,
)
from pipeline.compiler.schedules.winograd_schedules import winograd_schedule
from pipeline.records.store import structural_hash
from pipeline.tvm_release.compat import TVM_ERRORS

MAX_DONORS = 3  # nearest records tried per task
_TIMING_RUNS = 5


@dataclass(frozen=True)
class TiledDecisions:
    """What a trace decided for its anchor (tiled) block, by iterator position, so that it can be
    compared with and carried to another workload of the same operator."""

    anchor: str  # block name, e.g. conv2d_nchw
    iter_types: tuple[int, ...]
    extents: tuple[int, ...]
    tiles: dict[int, tuple[int, ...]]  # iterator position -> split factors
    categorical: tuple[int, ...]  # SampleCategorical decisions (the unroll limit), in order
    fusion_level: int


def tiled_decisions(trace: Trace, workload: IRModule) -> TiledDecisions | None:
    """The anchor block's decisions in a trace applied to `workload` (None: nothing is tiled)."""
    sch = Schedule(workload)
    found: dict[int, tuple[int, ...]] = {}
    anchor = None
    categorical = []

    def note(inst: Instruction, inputs: list, attrs: list, decision: Any) -> Any:
        nonlocal anchor
        if inst.kind.name == "SamplePerfectTile":
            block, position = block_and_iter(sch, inputs[0])
            anchor = block
            found[position] = tuple(int(f) for f in decision)
        elif inst.kind.name == "SampleCategorical":
            categorical.append(int(decision))
        return decision

    trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=note)
    if anchor is None:
        return None
    return TiledDecisions(
        anchor=anchor.name_hint,
        iter_types=tuple(int(v.iter_type) for v in anchor.iter_vars),
        extents=tuple(int(v.dom.extent) for v in anchor.iter_vars),
        tiles=found,
        categorical=tuple(categorical),
        fusion_level=fusion_level(trace),
    )


def adapt_tile(factors: tuple[int, ...], extent: int) -> list[int]:
    """The split of `extent` closest to the donor's factors: inner factors first (they hold the
    register tile and the vector), each the divisor of what is left that is nearest in ratio; the
    outermost takes the rest."""
    left = extent
    inner = []
    for factor in reversed(factors[1:]):
        divisor = min((d for d in range(1, left + 1) if left % d == 0), key=lambda d: (abs(math.log(d / factor)), d))
        inner.append(divisor)
        left //= divisor
    return [left] + inner[::-1]


@dataclass(frozen=True)
class Donor:
    """The fastest record of one workload shape, as decisions that can be carried elsewhere."""

    decisions: TiledDecisions
    seconds: float  # the record's mean measured run time
    name: str = ""  # where the record is kept (records/<target>/<file>), for the coverage table


def donors(
    records: Iterable[ms.database.TuningRecord], target: Target, names: Mapping[str, str] | None = None
) -> list[Donor]:
    """The records usable for transfer to `target` (same `mtriple`/`mcpu`; MetaSchedule's own
    lookup ignores the target), reduced to the fastest per operator and shape. Read once per build:
    each record's trace is replayed to read its decisions. `names` maps a record's structural hash
    to where it is kept."""
    fastest: dict[tuple[str, tuple[int, ...]], Donor] = {}
    for record in records:
        if record.target is None or not _same_target(record.target, target) or not record.run_secs:
            continue
        decided = tiled_decisions(record.trace, record.workload.mod)
        if decided is None:
            continue
        name = (names or {}).get(structural_hash(record.workload.mod), "")
        donor = Donor(decided, float(np.mean([float(x) for x in record.run_secs])), name)
        key = (decided.anchor, decided.extents)
        if key not in fastest or donor.seconds < fastest[key].seconds:
            fastest[key] = donor
    return list(fastest.values())


def transferred_schedules(
    func: PrimFunc | IRModule, target: Target, candidates: Iterable[Donor], task: str = "main"
) -> list[TaskSchedule]:
    """Schedules for the task from the donors of the same operator (same anchor block and iterator
    kinds) at the MAX_DONORS nearest shapes, nearest first; donors whose replay fails are skipped."""
    workload = normalize(func)
    context = design_space(workload, target, task)
    sketches = [s.trace for s in context.space_generator.generate_design_space(workload)]
    own = next((tiled_decisions(trace, workload) for _, trace in ranked(sketches)), None)
    if own is None:
        return []
    same_operator = [
        d for d in candidates if d.decisions.anchor == own.anchor and d.decisions.iter_types == own.iter_types
    ]
    same_operator.sort(key=lambda donor: _distance(donor.decisions.extents, own.extents))
    found = []
    for donor in same_operator[:MAX_DONORS]:
        decided, seconds = donor.decisions, donor.seconds
        sketch = next((t for _, t in ranked(sketches) if fusion_level(t) == decided.fusion_level), None)
        if sketch is None:
            sketch = next(t for _, t in ranked(sketches))
        try:
            sch = replay(workload, sketch, functools.partial(_carrying, donor=decided), postprocs(context))
        except TVM_ERRORS:
            continue
        source = f"record {decided.anchor} {'x'.join(map(str, decided.extents))} ({seconds * 1e3:.3g} ms)"
        if donor.name:
            source = f"{donor.name}: {source}"
        found.append(TaskSchedule("transferred", task, workload, sch.mod, sch.trace, source))
    return found


def best_schedule(
    func: PrimFunc | IRModule, target: Target, candidates: Iterable[Donor], task: str = "main"
) -> TaskSchedule | None:
    """The default schedule, or a transferred one that gives the same output on random inputs and
    runs faster. Transfers are timed only where the target runs on this machine; for another
    target the default stays (its rules are for that target; a transfer cannot be checked there)."""
    default = default_schedule(func, target, task)
    if default is None or not runs_here(target):
        return default
    transfers = transferred_schedules(func, target, candidates, task)
    if not transfers:
        return default
    inputs = _random_inputs(default.workload)
    expected, best_seconds = _run(default.mod, target, inputs)
    best = default
    for candidate in transfers:
        output, seconds = _run(candidate.mod, target, inputs)
        scale = max(float(np.abs(expected).max()), 1e-6)
        if np.allclose(output, expected, rtol=0, atol=1e-4 * scale) and seconds < best_seconds:
            best, best_seconds = candidate, seconds
    return best


@dataclass(frozen=True)
class ScheduleChoice:
    """How one PrimFunc of the build gets its schedule (a row of pipeline.compiler.coverage's table)."""

    task: str
    kind: str  # "tuned", "migrated", "transferred", "default", "winograd" (a Winograd stage's own schedule,
    # pipeline/compiler/schedules/winograd_schedules.py), "naive" (no rule applied), or "unscheduled"
    # (nothing to tile: elementwise, reshape, pooling; TVM's own lowering)
    source: str  # the donor record of a transfer, the rule of a default, why a task stays naive


def fallback_database(
    mod: IRModule,
    target: Target,
    tuned: ms.database.Database,
    names: Mapping[str, str] | None = None,
    migrated: Mapping[str, TaskSchedule] | None = None,
) -> tuple[ms.database.Database, list[ScheduleChoice]]:
    """A database for MetaScheduleApplyDatabase on the fused module `mod` (passes.fuse): the tuned
    records first, then for every tiled task that has none its `migrated` schedule (an older release's
    record replayed and checked, pipeline/compiler/schedules/record_migration.py), else a transferred or default one. These
    live in a separate in-memory database, so they never end up in the tuned record store.
    `names` maps a tuned record's structural hash to where it is kept (shown for a transfer)."""
    fallbacks = ms.database.MemoryDatabase()
    usable = donors(tuned.get_all_tuning_records(), target, names)
    choices = []
    for gv, func in mod.functions.items():
        if not isinstance(func, PrimFunc):
            continue
        name = gv.name_hint
        if tuned.query_tuning_record(normalize(func), target, name) is not None:
            choices.append(ScheduleChoice(name, "tuned", ""))
            continue
        if migrated and name in migrated:
            commit_schedules(fallbacks, {name: migrated[name]}, target)
            choices.append(ScheduleChoice(name, "migrated", migrated[name].rule))
            continue
        try:
            schedule = winograd_schedule(func, target, name) or best_schedule(func, target, usable, name)
        except RuntimeError as exc:  # no rule applied: the build still works, with naive loops
            choices.append(ScheduleChoice(name, "naive", str(exc)))
            continue
        if schedule is None:
            choices.append(ScheduleChoice(name, "unscheduled", ""))
            continue
        commit_schedules(fallbacks, {name: schedule}, target)
        choices.append(ScheduleChoice(name, schedule.kind, schedule.rule))
    return ms.database.OrderedUnionDatabase(tuned, fallbacks), choices


def _carrying(sch: Schedule, donor: TiledDecisions) -> Decider:
    """Decision provider: the donor's tiles adapted to this task's extents, its unroll choice,
    and the padding at the root (a donor's loop position can point at a loop that no longer
    exists)."""
    categorical = iter(donor.categorical)

    def decide(inst: Instruction, inputs: list, attrs: list, decision: object) -> object:
        kind = inst.kind.name
        if kind == "SamplePerfectTile":
            block, position = block_and_iter(sch, inputs[0])
            factors = donor.tiles.get(position)
            if factors is None or len(factors) != int(attrs[0]):
                raise RuntimeError(f"the donor has no {attrs[0]}-way tile for iterator {position}")
            return adapt_tile(factors, int(block.iter_vars[position].dom.extent))
        if kind == "SampleCategorical":
            return next(categorical, decision)
        if kind == "SampleComputeLocation":
            return -1
        return decision

    return decide


def _same_target(a: Target, b: Target) -> bool:
    """Records are for one CPU: MetaSchedule's own lookup ignores the target, so we compare."""
    keys = ("mtriple", "mcpu")
    return all(str(a.attrs.get(k, "")) == str(b.attrs.get(k, "")) for k in keys)


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return sum(abs(math.log(x / y)) for x, y in zip(a, b))


def runs_here(target: Target) -> bool:
    """Whether code for the target runs (and times meaningfully) on this machine: same
    architecture and CPU model, so no instruction the host lacks."""
    from tvm.target import codegen

    host_arch = str(codegen.llvm_get_system_triple()).split("-")[0]
    arch = str(target.attrs.get("mtriple", host_arch)).split("-")[0]
    return arch == host_arch and str(target.attrs.get("mcpu", "")) == str(codegen.llvm_get_system_cpu())


def _random_inputs(workload: IRModule) -> list[np.ndarray]:
    """Positive inputs: a batch-norm epilogue takes the square root of its variance input, and
    negative values would make every output NaN (and no transfer comparable with the default)."""
    rng = np.random.default_rng(0)
    return [
        rng.uniform(0.5, 1.5, [int(d) for d in info.shape]).astype(info.dtype)
        for info in ms.arg_info.ArgInfo.from_prim_func(workload["main"])
    ]


def _run(mod: IRModule, target: Target, inputs: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The output (last argument) and the best of a few run times."""
    function = tvm.compile(mod, target=target)["main"]
    tensors = [tvm.runtime.tensor(array) for array in inputs]
    function(*tensors)  # compiled lazily on the first call
    best = math.inf
    for _ in range(_TIMING_RUNS):
        started = time.perf_counter()
        function(*tensors)
        best = min(best, time.perf_counter() - started)
    return tensors[-1].numpy(), best
