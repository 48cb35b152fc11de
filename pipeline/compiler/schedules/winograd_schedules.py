"""Schedules without tuning for the Winograd stages (pipeline/compiler/rewrites/winograd.py).

All three are written out here, with the same ingredients as the default rules (default_schedules.py:
the CPU's vector lanes and registers, parallel outer chunks, an unrolled register tile):
- the batched GEMM, vectorized over output channels (k, contiguous in U and M), a register tile of
  up to 8 tiles x 2 vectors, parallel over tile positions x blocks of output channels, so each
  chunk's slice of U stays in cache while all tiles pass through it. The default rules' plan for it
  (a tile of 8 x 1 vector, parallel chunks over positions and tiles) re-read U for every block of
  tiles: 512 channels at 14x14 took 10.7 ms against 3.1 ms with this one (2 threads, busy host);
- the two transforms, which have no reduction (MetaSchedule's design space gives them nothing to
  tile): parallel over tile rows x channel vectors, the n x n (input) or m x m (output) positions of
  a tile unrolled, so that the chain choosing each position's sum folds into straight-line code, and
  vectorized over channels.
The result is an ordinary trace, committed as a record like the defaults, so `invoke tune` can replace
it with a searched one.
"""

from tvm.ir import IRModule
from tvm.s_tir import Schedule
from tvm.target import Target
from tvm.tirx import PrimFunc

from pipeline.compiler.rewrites.winograd import GEMM_STAGE, INPUT_STAGE, OUTPUT_STAGE, PAD_BLOCK, TILES_BLOCK
from pipeline.compiler.schedules.default_schedules import TaskSchedule, cpu_traits, normalize
from pipeline.tiling import largest_divisor

KIND = "winograd"


def stage(func: PrimFunc | IRModule) -> str | None:
    """Which Winograd stage a (possibly fused) PrimFunc computes, by its block names; None for others."""
    sch = Schedule(normalize(func))
    names = {sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))}
    return next((s for s in (INPUT_STAGE, GEMM_STAGE, OUTPUT_STAGE) if s in names), None)


def transform_flops(func: PrimFunc | IRModule) -> float | None:
    """FLOPs of a transform stage as it runs once its positions are unrolled: each position's nonzero
    terms, a multiply-add each. TVM's estimate counts every branch of the chain that picks a position's
    sum (36x too many for the input transform). None for anything else (the GEMM's estimate is right)."""
    import numpy as np

    from pipeline.compiler.rewrites.winograd import transforms

    which = stage(func)
    if which not in (INPUT_STAGE, OUTPUT_STAGE):
        return None
    prim = func["main"] if isinstance(func, IRModule) else func
    buffers = [p for p in prim.params if hasattr(p, "shape")]
    if which == INPUT_STAGE:
        positions, tiles, channels = (int(d) for d in buffers[-1].shape)
        side = round(positions**0.5)
        matrix = transforms(side - 2).b_t
    else:
        positions, tiles, channels = (int(d) for d in buffers[0].shape)
        side = round(positions**0.5)
        matrix = transforms(side - 2).a_t
    terms = sum(int(np.count_nonzero(np.outer(row_a, row_b))) for row_a in matrix for row_b in matrix)
    return 2.0 * terms * channels * tiles


def winograd_schedule(func: PrimFunc | IRModule, target: Target, task: str = "main") -> TaskSchedule | None:
    """The schedule of a Winograd stage, or None when `func` is not one."""
    which = stage(func)
    if which is None:
        return None
    workload = normalize(func)
    sch = Schedule(workload)
    traits = cpu_traits(target)
    lanes = traits.lanes
    if which == GEMM_STAGE:
        rule = _gemm(sch, lanes, traits.registers)
    elif which == INPUT_STAGE:
        _input(sch, lanes)
        rule = "input: parallel tile rows x channel vectors, positions unrolled, channels vectorized"
    else:
        _output(sch, lanes)
        rule = "output: parallel tile rows x channel vectors, positions unrolled, channels vectorized"
    return TaskSchedule(KIND, task, workload, sch.mod, sch.trace, rule)


def _input(sch: Schedule, lanes: int) -> None:
    block = sch.get_sblock(INPUT_STAGE)
    position, tile, channel = sch.get_loops(block)
    tiles_w = int(sch.get(sch.get_loops(sch.get_sblock(TILES_BLOCK))[3]).extent)
    row, column = sch.split(tile, [None, tiles_w])
    outer, inner = sch.split(channel, [None, largest_divisor(int(sch.get(channel).extent), lanes)])
    sch.reorder(row, outer, column, position, inner)
    chunks = sch.fuse(row, outer)
    sch.parallel(chunks)
    sch.unroll(position)
    sch.vectorize(inner)
    sch.compute_inline(sch.get_sblock(PAD_BLOCK))
    tiles = sch.get_sblock(TILES_BLOCK)
    sch.compute_at(tiles, chunks)
    sch.vectorize(sch.get_loops(tiles)[-1])


def gemm_width(target: Target) -> int:
    """Output channels of the GEMM's register tile: two vectors on a CPU with 32 vector registers,
    else one. The rewrite packs the transformed weight in blocks of this width."""
    traits = cpu_traits(target)
    return traits.lanes * (2 if traits.registers >= 32 else 1)


def _gemm(sch: Schedule, lanes: int, registers: int) -> str:
    """Per tile position e and block of output channels (the parallel chunks), all tiles in register
    tiles of up to 8 tiles x the block (its weight packed contiguously, gemm_width), all input channels
    innermost but for the tile: each chunk's slice of U stays in cache while every tile passes through it."""
    from pipeline.tvm_release.compat import region_buffer

    block = sch.get_sblock(GEMM_STAGE)
    position, tile, channel, reduce = sch.get_loops(block)
    tiles = int(sch.get(tile).extent)
    width = int(region_buffer(sch.get(block).reads[1]).shape[3])
    vector = largest_divisor(width, lanes)
    vectors = width // vector
    rows = largest_divisor(tiles, 8 if vectors == 2 else min(8, registers // 2))
    channel_outer, channel_vectors, channel_lanes = sch.split(channel, [None, vectors, vector])
    tile_outer, tile_rows = sch.split(tile, [None, rows])
    sch.reorder(position, channel_outer, tile_outer, reduce, tile_rows, channel_vectors, channel_lanes)
    sch.parallel(sch.fuse(position, channel_outer))
    sch.unroll(tile_rows)
    sch.unroll(channel_vectors)
    sch.vectorize(channel_lanes)
    sch.decompose_reduction(block, reduce)
    return f"gemm: parallel positions x channel blocks, {rows} tiles x {vectors} vectors of {vector} register tile"


def _output(sch: Schedule, lanes: int) -> None:
    block = sch.get_sblock(OUTPUT_STAGE)
    for consumer in _later_blocks(sch, block):
        sch.reverse_compute_inline(consumer)
    m = _tile_size(sch, block)
    batch, channel, height, width = sch.get_loops(block)
    row, row_in = sch.split(height, [None, m])
    column, column_in = sch.split(width, [None, m])
    outer, inner = sch.split(channel, [None, largest_divisor(int(sch.get(channel).extent), lanes)])
    sch.reorder(batch, row, outer, column, row_in, column_in, inner)
    sch.parallel(sch.fuse(batch, row, outer))
    sch.unroll(row_in)
    sch.unroll(column_in)
    sch.vectorize(inner)


def _later_blocks(sch: Schedule, block: object) -> list[object]:
    """The epilogue blocks after the output transform in a fused PrimFunc, in order."""
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    names = [sch.get(b).name_hint for b in blocks]
    return blocks[names.index(OUTPUT_STAGE) + 1 :]


def _tile_size(sch: Schedule, block: object) -> int:
    """m of the output transform: its input M has n*n = (m + 2)^2 positions."""
    from pipeline.tvm_release.compat import region_buffer

    reads = sch.get(block).reads
    positions = int(region_buffer(reads[0]).shape[0])
    return int(round(positions**0.5)) - 2
