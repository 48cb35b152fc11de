"""Default CPU schedules for tasks that have no tuning record.

Why: TVM 0.27 compiles an unscheduled conv2d or dense to naive loops on CPU (about 60x slower than a
tuned schedule). Instead of searching, we take MetaSchedule's own design space for the task and fix
every sampling decision by rules computed from the loop extents and the target's vector width and
core count. The result is an ordinary MetaSchedule trace: it goes into a MetaSchedule database like a
tuned record, and the build applies it with `relax.transform.MetaScheduleApplyDatabase`.

The loop structure of a multi-level-tiled sketch on CPU is S0 S1 R0 S2 R1 S3 (S: spatial tiles,
R: reduction tiles). The rules put parallel work in S0, the epilogue at the end of S1, all input
channels in R0, a register tile in S2 (output channels; rows for depthwise convs; a row of vectors
for dense), the kernel taps in R1 and one vector of output columns in S3; the register tile is
unrolled. docs/default-schedules.md has the measurements behind each rule.
"""

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import tvm
from tvm.ir import IRModule
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Instruction, Trace
from tvm.target import Target
from tvm.tirx import BufferRegion, PrimFunc, SeqStmt, Var

from pipeline.compiler.schedules.tensor_intrinsics import register_cpu_intrinsics
from pipeline.tiling import largest_divisor
from pipeline.tvm_release.compat import TVM_ERRORS, SBlock, SBlockRealize, detect_linear_equation, region_buffer
from pipeline.tvm_release.errors import reason

# run_secs of a committed default record. A record needs a run time to count as valid; a real
# measurement is far smaller, so a tuned record of the same workload always ranks first.
DEFAULT_RECORD_RUN_SECS = 1.0e6

_DATA_PARALLEL = 0  # tirx.IterVar.DataPar
INNER_TAPS = 9  # kernel taps kept inside the register tile at most: a 3x3 kernel whole, a 7x7 one by its columns
_ROOT = -1  # SampleComputeLocation decision: keep the producer (padding) at the root


@dataclass(frozen=True)
class CpuTraits:
    """What the rules need to know about the CPU: float32 lanes per vector register, vector
    registers, and cores."""

    lanes: int
    registers: int
    cores: int

    def accumulators(self, rule: "TileRule") -> int:
        """Vector accumulators of the register tile: the rule's count is for 32 registers."""
        return max(1, rule.channels * self.registers // 32)


@dataclass(frozen=True)
class TileRule:
    """Fixed tiling decisions, relative to the CPU (see the module docstring for the loop order)."""

    name: str
    channels: int  # accumulator vectors per register tile on a CPU with 32 vector registers (scaled)
    rows: int  # output rows per register tile (S2 of the second-innermost spatial loop)
    unroll: int  # explicit unroll limit
    tasks_per_core: int  # parallel chunks per core (S0)


# Tried in order; a later rule only when an earlier one does not apply to the task.
RULES: tuple[TileRule, ...] = (
    TileRule("ch16", channels=16, rows=1, unroll=512, tasks_per_core=4),
    TileRule("ch8-rows2", channels=8, rows=2, unroll=512, tasks_per_core=4),
    TileRule("ch1-no-unroll", channels=1, rows=1, unroll=0, tasks_per_core=4),
)


@dataclass(frozen=True)
class TaskSchedule:
    """A schedule for one task, ready to commit into a MetaSchedule database."""

    kind: str  # "default", "transferred" or "migrated"
    task: str  # the PrimFunc's name in the fused module
    workload: IRModule  # the unscheduled task, normalized as MetaSchedule keys it in a database
    mod: IRModule  # the scheduled task
    trace: Trace  # replays on `workload`, postprocessing included
    rule: str  # "<tile rule>/sketch<i>", or the donor record of a transfer, for the coverage table


def cpu_traits(target: Target) -> CpuTraits:
    """Vector lanes and registers from the CPU's features (LLVM's own vector-width query answers
    512 bits for every x86 CPU), cores from the target's `num-cores`."""
    from tvm.target import codegen

    features = codegen.llvm_get_cpu_features(target)
    cores = int(target.attrs["num-cores"])
    if "avx512f" in features:
        return CpuTraits(lanes=16, registers=32, cores=cores)
    if "avx2" in features or "avx" in features:
        return CpuTraits(lanes=8, registers=16, cores=cores)
    if "neon" in features:
        return CpuTraits(lanes=4, registers=32, cores=cores)
    return CpuTraits(lanes=4, registers=16, cores=cores)  # SSE


def normalize(func: PrimFunc | IRModule) -> IRModule:
    """The task as MetaSchedule keys it in a database (`global_symbol` "main", `tirx.noalias`)."""
    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def default_schedule(func: PrimFunc | IRModule, target: Target, task: str = "main") -> TaskSchedule | None:
    """A rule-based schedule for a contraction task (conv2d of any kind, dense, matmul, with their
    fused epilogues), or None for the others: elementwise and reshape tasks have nothing to tile,
    and pooling reads one tensor once (memory-bound): its tiled schedules measured 0.5-1.0x of TVM's
    own lowering, so that stays.

    Raises RuntimeError when the task contracts but no rule applies to any sketch."""
    workload = normalize(func)
    if not contracts(workload):
        return None
    context = design_space(workload, target, task)
    sketches = [s.trace for s in context.space_generator.generate_design_space(workload)]
    if not any(tiled(trace) for trace in sketches):
        return None
    traits = cpu_traits(target)
    failures = []
    for rule in RULES:
        for index, sketch in ranked(sketches):
            try:
                sch = replay(
                    workload, sketch, functools.partial(_decider, rule=rule, traits=traits), postprocs(context)
                )
            except TVM_ERRORS as exc:
                failures.append(f"{rule.name}/sketch{index}: {reason(exc)}")
                continue
            return TaskSchedule("default", task, workload, sch.mod, sch.trace, f"{rule.name}/sketch{index}")
    raise RuntimeError(f"no default schedule applies to {task}: " + "; ".join(failures))


def default_schedules(mod: IRModule, target: Target) -> dict[str, TaskSchedule | None]:
    """For each PrimFunc of a fused module (passes.fuse): its default schedule, or None when it
    needs none."""
    return {
        gv.name_hint: default_schedule(func, target, gv.name_hint)
        for gv, func in mod.functions.items()
        if isinstance(func, PrimFunc)
    }


def commit_schedules(database: ms.database.Database, schedules: dict[str, TaskSchedule | None], target: Target) -> None:
    """Commit default or transferred schedules as tuning records. Their run time is
    DEFAULT_RECORD_RUN_SECS, so a workload that also has a tuned record keeps using the tuned one."""
    for schedule in schedules.values():
        if schedule is None:
            continue
        workload = database.commit_workload(schedule.workload)
        database.commit_tuning_record(
            ms.database.TuningRecord(
                schedule.trace,
                workload,
                run_secs=[DEFAULT_RECORD_RUN_SECS],
                target=target,
                args_info=ms.arg_info.ArgInfo.from_prim_func(schedule.workload["main"]),
            )
        )


def apply_schedules(mod: IRModule, schedules: dict[str, TaskSchedule | None], target: Target) -> IRModule:
    """The fused module with the given schedules applied by the build's own step
    (tasks.apply_database: MetaScheduleApplyDatabase); an applied PrimFunc carries `tirx.is_scheduled`."""
    from pipeline.compiler.schedules.tasks import apply_database

    database = ms.database.MemoryDatabase()
    commit_schedules(database, schedules, target)
    return apply_database(mod, database, target)


def design_space(workload: IRModule, target: Target, task: str) -> ms.TuneContext:
    """MetaSchedule's default CPU design space for the task, as tuning would generate it."""
    register_cpu_intrinsics()
    return ms.TuneContext(mod=workload, target=target, space_generator="post-order-apply", task_name=task)


def postprocs(context: ms.TuneContext) -> list:
    return list(context.space_generator.postprocs)


Decider = Callable[[Instruction, list, list, object], object]


def replay(workload: IRModule, sketch: Trace, decider: Callable[[Schedule], Decider], post: list) -> Schedule:
    """The sketch replayed with the decisions that `decider(sch)` provides, postprocessed like a
    tuning candidate, and checked by replaying the final trace as the database will."""
    sch = Schedule(workload)
    sketch.apply_to_schedule(sch, remove_postproc=True, decision_provider=decider(sch))
    sch.enter_postproc()
    for postproc in post:
        if not postproc.apply(sch):
            raise RuntimeError(f"postprocessor {type(postproc).__name__} rejected the schedule")
    sch.trace.apply_to_schedule(Schedule(workload), remove_postproc=False)
    return sch


def _decider(sch: Schedule, rule: TileRule, traits: CpuTraits) -> Decider:
    """The decision provider for Trace.apply_to_schedule: called for every sampling instruction
    with its inputs already translated into `sch`."""

    def decide(inst: Instruction, inputs: list, attrs: list, decision: object) -> object:
        kind = inst.kind.name
        if kind == "SamplePerfectTile":
            return _tile(sch, inputs[0], int(attrs[0]), rule, traits)
        if kind == "SampleCategorical":  # the unroll limit is the only categorical choice on CPU
            candidates = [int(c) for c in attrs[0]]
            allowed = [i for i, c in enumerate(candidates) if c <= rule.unroll] or [0]
            return max(allowed, key=lambda i: candidates[i])
        if kind == "SampleComputeLocation":
            return _ROOT
        return decision

    return decide


def _tile(sch: Schedule, loop: object, parts: int, rule: TileRule, traits: CpuTraits) -> list[int]:
    """The split of one loop of a tiled block, from its role in the block: innermost spatial
    (vector columns), second innermost spatial (rows), other spatial (channels), first reduction
    (input channels, all outer) or later reduction (kernel taps, all inner)."""
    block, position = block_and_iter(sch, loop)
    extent = int(block.iter_vars[position].dom.extent)
    spatial = [i for i, v in enumerate(block.iter_vars) if int(v.iter_type) == _DATA_PARALLEL]
    if position not in spatial:
        outer = position in _outer_reductions(block, spatial)
        return _pad([extent] if outer else [1, extent], parts, front=not outer)
    if parts != 4:
        raise RuntimeError(f"unexpected {parts}-way spatial split")
    extents = [int(block.iter_vars[i].dom.extent) for i in spatial]
    # A strided read along the vector loop (stride-2 convs) loads stride x lanes floats per vector:
    # measured 10 GFLOP/s with 16 lanes and 85 with 8 on a 3x3 stride-2 conv, so keep one vector.
    lanes = max(1, traits.lanes // _read_stride(block, spatial[-1]))
    reused = [not _indexes_every_read(block, i) for i in spatial]
    if len(spatial) > 2 and _channels_innermost(block, spatial):
        plan = _channels_last_plan(extents, traits.accumulators(rule), lanes, rule.tasks_per_core * traits.cores)
    else:
        plan = _spatial_plan(extents, reused, rule, traits.accumulators(rule), lanes, traits.cores)
    return plan[spatial.index(position)]


def _outer_reductions(block: SBlock, spatial: list[int]) -> set[int]:
    """The reduction iterators of R0: the input channels, and kernel rows while the taps left inner
    exceed INNER_TAPS."""
    reduction = [i for i, v in enumerate(block.iter_vars) if int(v.iter_type) != _DATA_PARALLEL]
    channel = _channel_reduction(block, spatial)
    taps = [i for i in reduction if i != channel]
    outer = {channel}
    while taps and _product_of(block, taps) > INNER_TAPS:
        outer.add(taps.pop(0))
    return outer


def _product_of(block: SBlock, positions: list[int]) -> int:
    product = 1
    for i in positions:
        product *= int(block.iter_vars[i].dom.extent)
    return product


def _channel_reduction(block: SBlock, spatial: list[int]) -> int:
    """The reduction iterator over input channels: the first one that no read index combines with a
    spatial iterator (kernel taps come as `h * stride + r`). Else (depthwise) the first reduction."""
    reduction = [i for i, v in enumerate(block.iter_vars) if int(v.iter_type) != _DATA_PARALLEL]
    spatial_vars = [block.iter_vars[i].var for i in spatial]

    def alone(position: int) -> bool:
        var = block.iter_vars[position].var
        indices = [r.min for region in block.reads for r in region.region]
        return not any(_uses(i, var) and any(_uses(i, s) for s in spatial_vars) for i in indices)

    return next((i for i in reduction if alone(i)), reduction[0])


def _indexes_every_read(block: SBlock, position: int) -> bool:
    """Whether iterator `position` indexes every tensor the block reads: then no loaded value is
    reused along it (the channels of a depthwise conv), and a register tile over it gains nothing."""
    var = block.iter_vars[position].var
    return all(any(_uses(r.min, var) for r in region.region) for region in block.reads)


def _uses(index: Any, var: Var) -> bool:
    linear = detect_linear_equation(index, [var])
    return not linear or int(linear[0]) != 0  # not linear: it does use the iterator


def _read_stride(block: SBlock, position: int) -> int:
    """The largest coefficient of iterator `position` in the block's read indices."""
    var = block.iter_vars[position].var
    coefficients = [1]
    for region in block.reads:
        for index in region.region:
            linear = detect_linear_equation(index.min, [var])
            if linear:
                coefficients.append(abs(int(linear[0])))
    return max(coefficients)


def _spatial_plan(
    extents: list[int], reused: list[bool], rule: TileRule, accumulators: int, lanes: int, cores: int
) -> list[list[int]]:
    """The 4-way splits [S0, S1, S2, S3] of all spatial loops of a block, planned together so that
    the parallel outer tiles give about tasks_per_core x cores chunks in all; the outermost loops
    (batch, channels) are asked first, so rows and columns are split for parallelism only when the
    channels are too few. `reused[i]`: some read tensor is not indexed by loop i, so a register
    tile along it reuses loaded values."""
    channels_reused = all(reused[:-2])
    # Depthwise: the channel loop reuses nothing, so the register tile spends its vectors on rows
    # (each input row then serves up to three output rows); measured 33-48 vs 18-24 GFLOP/s.
    rows = rule.rows if channels_reused else max(rule.rows, accumulators // 2)
    plan = []
    for order, extent in enumerate(extents):
        if order == len(extents) - 1:
            inner = largest_divisor(extent, lanes)
            # Without a channel loop (matmul, dense) the register tile is a row of vectors instead,
            # which also makes each weight row read contiguous.
            columns = largest_divisor(extent // inner, accumulators) if len(extents) <= 2 else 1
            plan.append([1, extent // inner // columns, columns, inner])
        else:
            register = rows if order == len(extents) - 2 else accumulators if reused[order] else 1
            inner = largest_divisor(extent, register)
            plan.append([1, extent // inner, inner, 1])
    wanted = rule.tasks_per_core * cores
    for split in plan:
        s0 = largest_divisor(split[1], wanted)
        split[0], split[1] = s0, split[1] // s0
        wanted = -(-wanted // s0)
    return plan


def _channels_innermost(block: SBlock, spatial: list[int]) -> bool:
    """Whether the innermost spatial iterator is an output-channel axis (NHWC): some read (the
    weight) uses it but not the columns, the second-innermost spatial iterator."""
    columns, innermost = (block.iter_vars[i].var for i in spatial[-2:])

    def reads_with(region: BufferRegion, var: Var) -> bool:
        return any(_uses(r.min, var) for r in region.region)

    return any(reads_with(region, innermost) and not reads_with(region, columns) for region in block.reads)


def _channels_last_plan(extents: list[int], accumulators: int, lanes: int, wanted: int) -> list[list[int]]:
    """The splits of an NHWC conv's spatial loops: the register tile is a few output columns x a few
    vectors of output channels, the pair that loads the fewest values per multiply-add (each weight
    vector serves every column, each input value every vector); parallel chunks from the output
    channels first, so a chunk's weights stay in its core's cache while all pixels pass through.
    Measured on `local` against the NCHW plan's one vector x 16 rows (3x3 stride-2 conv, 256 -> 512
    channels at 7x7 output, with both transposes): 0.56 -> 0.35 ms."""
    width, vectors = extents[-2], extents[-1] // largest_divisor(extents[-1], lanes)
    inner = largest_divisor(extents[-1], lanes)

    def loads_per_fma(pair: tuple[int, int]) -> float:
        columns, channel_vectors = pair
        return (columns + channel_vectors) / (columns * channel_vectors)

    candidates = []
    for channel_vectors in (4, 2, 1):
        if vectors % channel_vectors == 0:
            candidates.append((largest_divisor(width, accumulators // channel_vectors), channel_vectors))
    columns, channel_vectors = min(candidates, key=loads_per_fma)
    plan = [[1, extent, 1, 1] for extent in extents[:-2]]
    plan.append([1, width // columns, columns, 1])
    plan.append([1, vectors // channel_vectors, channel_vectors, inner])
    for split in [plan[-1]] + plan[:-1]:
        s0 = largest_divisor(split[1], wanted)
        split[0], split[1] = s0, split[1] // s0
        wanted = -(-wanted // s0)
    return plan


def _pad(factors: list[int], parts: int, front: bool) -> list[int]:
    """Extend a split with unit factors to `parts` entries."""
    ones = [1] * (parts - len(factors))
    return ones + factors if front else factors + ones


def block_and_iter(sch: Schedule, loop: object) -> tuple[SBlock, int]:
    """The block under a not yet transformed loop, and which of its iterators the loop binds."""
    node = sch.get(loop)
    body = node.body
    while not isinstance(body, SBlockRealize):
        body = body[0] if isinstance(body, SeqStmt) else body.body
    for position, value in enumerate(body.iter_values):
        if value.same_as(node.loop_var):
            return body.block, position
    raise RuntimeError(f"loop {node.loop_var} binds no iterator of block {body.block.name_hint}")


def contracts(workload: IRModule) -> bool:
    """Whether some block reduces over products of two tensors (conv, matmul), unlike pooling."""
    sch = Schedule(workload)
    blocks = [sch.get(rv) for rv in sch.get_child_blocks(sch.get_sblock("root"))]
    return any(
        any(int(v.iter_type) != _DATA_PARALLEL for v in block.iter_vars)
        and len({region_buffer(region).name for region in block.reads}) >= 2
        for block in blocks
    )


def tiled(trace: Trace) -> bool:
    return any(inst.kind.name == "SamplePerfectTile" for inst in trace.insts)


def ranked(sketches: list[Trace]) -> Iterator[tuple[int, Trace]]:
    """Sketches with the epilogue computed deepest inside the tile loops first: it then runs
    while the output tile is still in cache."""
    yield from sorted(enumerate(sketches), key=lambda pair: -fusion_level(pair[1]))


def fusion_level(trace: Trace) -> int:
    """Where the sketch computes the epilogue: the index of its loop among the tile loops that the
    splits created (-1: not fused). Comparable between traces of the same operator."""
    split_loops = [rv for inst in sketch_part(trace) if inst.kind.name == "Split" for rv in inst.outputs]
    targets = [inst.inputs[1] for inst in sketch_part(trace) if inst.kind.name == "ReverseComputeAt"]
    return max((i for i, rv in enumerate(split_loops) for t in targets if rv.same_as(t)), default=-1)


def sketch_part(trace: Trace) -> list[Instruction]:
    """The instructions before postprocessing."""
    kinds = [inst.kind.name for inst in trace.insts]
    end = kinds.index("EnterPostproc") if "EnterPostproc" in kinds else len(kinds)
    return list(trace.insts[:end])
