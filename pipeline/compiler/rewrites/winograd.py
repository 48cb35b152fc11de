"""Winograd F(m x m, 3 x 3) for 3x3 convolutions: a Relax rewrite that needs no tuning.

Why: a direct 3x3 conv does 9 multiply-adds per output and input channel; F(4x4, 3x3) computes each
4x4 output tile from a 6x6 input tile with 36 products per channel pair instead of 144, so the
multiply-adds of the conv drop 4x (2.25x counting the tile overlap of small images). On a board
whose direct conv is bound by its arithmetic (the rk3399: 30.9 GFLOP of VGG-16 against 28.8
GFLOP/s) only fewer multiply-adds make it faster.

A conv becomes four steps (e = one of the n x n positions of a tile, n = m + 2; p = one tile):
  U[e, c, k] = G g G^T   weight transform: Relax ops on the weight alone, so the build's weight
                         lifting (passes.lift_weight_transforms) computes it once, at build time,
                         packed in blocks of output channels (U[e, k // b, c, k % b]);
  V[e, p, c] = B^T d B   input transform over overlapping n x n tiles of the padded input;
  M[e, p, k] = sum_c V[e, p, c] U[e, c, k]   a batched GEMM, one per tile position: the hot stage;
  Y = A^T M A            output transform, cropped to the output size; the conv's epilogue (bias,
                         ReLU, residual add) fuses into it.
The three runtime stages are PrimFuncs of their own (named conv2d_winograd_*), so each is a task
with its own workload key that `invoke tune` can search; without a record each gets a schedule
from winograd_schedules.py, never naive loops.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, partial, reduce
from math import gcd, lcm
from typing import Any

import numpy as np

# Tile sizes with their interpolation points (the last point, infinity, is implicit). Small points
# keep the float32 error low: F(4x4, 3x3) with 0, +-1, +-2 measured ~1e-6 relative error.
POINTS: dict[int, tuple[Fraction, ...]] = {
    2: (Fraction(0), Fraction(1), Fraction(-1)),
    4: (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2)),
}
KERNEL = 3
# Below this many input or output channels a conv stays direct. Per tile position the GEMM saves about
# 6*C*K flops against the direct conv, while the transforms write and read V and M, 8*(C+K) bytes
# more traffic: at ~10 flops per byte on these CPUs that pays off when C*K/(C+K) > ~13, i.e. from about
# 32 channels on both sides. Every 3x3 stride-1 conv of VGG-16 after the stem and of ResNet-18 has 64+.
MIN_CHANNELS = 32

STAGE_PREFIX = "conv2d_winograd"
INPUT_STAGE = f"{STAGE_PREFIX}_input"
GEMM_STAGE = f"{STAGE_PREFIX}_gemm"
OUTPUT_STAGE = f"{STAGE_PREFIX}_output"
PAD_BLOCK = "winograd_pad"
# Relax's OpPatternKind.kOpaque on the input transform: FuseOps would otherwise fuse it with the previous
# conv's output transform and epilogue into one function that no schedule here handles.
_OPAQUE = 8
TILES_BLOCK = "winograd_tiles"


@dataclass(frozen=True)
class Transforms:
    """The matrices of F(m x m, r x r): Y = A^T [(G g G^T) * (B^T d B)] A."""

    m: int
    a_t: np.ndarray  # m x n
    g: np.ndarray  # n x r
    b_t: np.ndarray  # n x n

    @property
    def n(self) -> int:
        return self.m + KERNEL - 1


@cache
def transforms(m: int) -> Transforms:
    """Toom-Cook construction from the interpolation points: with V the n x n Vandermonde matrix of
    the points (infinity's row picks the leading coefficient), the correlation of d with g is
    V_m^T diag(V_r g) V^-T d, so A^T = V_m^T, G = V_r, B^T = V^-T. Each row of B^T is rescaled to
    small integers and the inverse scale moved into G (computed at build time, in float64)."""
    points = POINTS[m]
    n = m + KERNEL - 1
    vander = [[p**k for k in range(n)] for p in points] + [[Fraction(int(k == n - 1)) for k in range(n)]]
    inverse = _inverse(vander)
    b_t = [[inverse[i][j] for i in range(n)] for j in range(n)]  # (V^-1)^T
    g = [row[:KERNEL] for row in vander]
    g[-1] = [Fraction(int(k == KERNEL - 1)) for k in range(KERNEL)]
    for j, row in enumerate(b_t):
        scale = Fraction(reduce(lcm, (x.denominator for x in row), 1), reduce(gcd, (x.numerator for x in row), 0) or 1)
        b_t[j] = [x * scale for x in row]
        g[j] = [x / scale for x in g[j]]
    a_t = [[vander[j][i] if j < n - 1 else Fraction(int(i == m - 1)) for j in range(n)] for i in range(m)]
    return Transforms(m, _array(a_t), _array(g), _array(b_t))


def _inverse(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss-Jordan inverse (the matrices are tiny and must not lose precision)."""
    size = len(matrix)
    rows = [row[:] + [Fraction(int(i == j)) for j in range(size)] for i, row in enumerate(matrix)]
    for col in range(size):
        pivot = next(r for r in range(col, size) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        head = rows[col][col]
        rows[col] = [x / head for x in rows[col]]
        for r in range(size):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col])]
    return [row[size:] for row in rows]


def _array(rows: list[list[Fraction]]) -> np.ndarray:
    return np.array([[float(x) for x in row] for row in rows], dtype=np.float64)


@dataclass(frozen=True)
class ConvShape:
    """An NCHW conv2d's static shape, as the rewrite needs it."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    padding: tuple[int, int, int, int]  # top, left, bottom, right

    @property
    def out_height(self) -> int:
        return self.height + self.padding[0] + self.padding[2] - KERNEL + 1

    @property
    def out_width(self) -> int:
        return self.width + self.padding[1] + self.padding[3] - KERNEL + 1


@dataclass(frozen=True)
class Plan:
    """One conv's Winograd layout: tile size, tiles per image row and column, tiles in all."""

    shape: ConvShape
    m: int

    @property
    def n(self) -> int:
        return self.m + KERNEL - 1

    @property
    def tiles_h(self) -> int:
        return -(-self.shape.out_height // self.m)

    @property
    def tiles_w(self) -> int:
        return -(-self.shape.out_width // self.m)

    @property
    def tiles(self) -> int:
        return self.shape.batch * self.tiles_h * self.tiles_w

    def multiply_adds(self) -> int:
        """The batched GEMM's multiply-adds: what decides the speed of a compute-bound board."""
        return self.n * self.n * self.tiles * self.shape.channels * self.shape.out_channels


def direct_multiply_adds(shape: ConvShape) -> int:
    return shape.batch * shape.out_channels * shape.out_height * shape.out_width * shape.channels * KERNEL * KERNEL


def tile_size(shape: ConvShape) -> int:
    """The tile size with the fewest GEMM multiply-adds (larger tiles first on a tie): F(4x4) even on
    a 7x7 output (4 tiles x 36 against F(2x2)'s 16 tiles x 16), but small outputs may differ."""
    return min(sorted(POINTS, reverse=True), key=lambda m: Plan(shape, m).multiply_adds())


def _count(value: int) -> str:
    return f"{value / 1e9:.2f} G" if value >= 1e9 else f"{value / 1e6:.1f} M"


@dataclass(frozen=True)
class Timing:
    """One conv shape timed on the build host, direct and as Winograd with each tile size
    (milliseconds, best of several runs)."""

    direct_ms: float
    winograd_ms: dict[int, float]  # tile size m -> time

    def best_tile(self) -> int | None:
        """The fastest tile size, or None when the direct conv is faster than every one."""
        m = min(self.winograd_ms, key=lambda tile: self.winograd_ms[tile])
        return m if self.winograd_ms[m] < self.direct_ms else None


@dataclass(frozen=True)
class Rewritten:
    """One eligible conv, rewritten into Winograd or (measured slower) kept direct, for the build's report."""

    name: str  # the conv's position in the model, e.g. conv2d #3
    plan: Plan  # the measured fastest tile size, or the rule's
    weight: str  # the weight parameter's name (the per-layer error check reads its values)
    timing: Timing | None  # None: decided by rule (no measurement)
    recorded: bool = False  # its direct task has a record: without a measurement it stays direct

    @property
    def chosen(self) -> bool:
        if self.timing is None:
            return not self.recorded
        return self.timing.best_tile() is not None


@dataclass(frozen=True)
class WinogradLayer:
    """One rewritten conv as the build reports it."""

    name: str
    tile: int  # m of F(m x m, 3 x 3)
    shape: str  # e.g. 1x64x56x56 * 64x64x3x3
    direct_multiply_adds: int
    winograd_multiply_adds: int  # the batched GEMM's
    error: float  # largest error of the float32 Winograd output relative to the largest output (float64 direct)
    direct_ms: float = 0.0  # measured at build time (both 0: chosen by rule)
    winograd_ms: float = 0.0
    recorded: bool = False  # the direct form has a record: the direct time is the tuned schedule's
    choice: str = ""  # how the form was chosen, for the coverage table: `rule`, or what was measured


@dataclass(frozen=True)
class WinogradReport:
    """What the rewrite did to one model: which convs, and the model's multiply-adds before and after."""

    enabled: bool
    convs: int  # conv2d layers in the model
    layers: tuple[WinogradLayer, ...]
    kept_direct: tuple[WinogradLayer, ...]  # eligible, but measured slower as Winograd on the build host
    multiply_adds_before: int  # conv and dense multiply-adds of the model, all direct
    multiply_adds_after: int  # the same with the rewritten convs' GEMMs instead

    @staticmethod
    def off(multiply_adds: int) -> "WinogradReport":
        """The report of a build without the rewrite."""
        return WinogradReport(False, 0, (), (), multiply_adds, multiply_adds)

    def lines(self) -> list[str]:
        """The build's summary of the rewrite, for a person."""
        if not self.enabled:
            return ["Winograd: off in the board profile (winograd: false); every conv runs direct"]
        kept = [
            f"{layer.name} {layer.shape}: {layer.winograd_ms:.2f} ms Winograd vs {layer.direct_ms:.2f} ms "
            + ("tuned direct" if layer.recorded else "direct")
            for layer in self.kept_direct
            if layer.direct_ms
        ]
        kept_lines = [f"Winograd: kept direct, measured slower: {'; '.join(kept)}"] if kept else []
        recorded = [layer.name for layer in self.kept_direct if not layer.direct_ms]
        if recorded:
            kept_lines.append(
                f"Winograd: kept direct, tuned record and no measured choice: {len(recorded)} convs"
                f" ({', '.join(recorded)})"
            )
        if not self.layers:
            if recorded:
                return kept_lines
            return [
                f"Winograd: none of the {self.convs} convs is eligible (3x3, stride 1, {MIN_CHANNELS}+ channels)"
                " or faster"
            ] + kept_lines
        tiles = sorted({layer.tile for layer in self.layers}, reverse=True)
        worst = max(self.layers, key=lambda layer: layer.error)
        return [
            f"Winograd: {len(self.layers)} of {self.convs} convs as F({'/'.join(f'{m}x{m}' for m in tiles)}, 3x3); "
            f"multiply-adds {_count(self.multiply_adds_before)} -> {_count(self.multiply_adds_after)} "
            f"({self.multiply_adds_before / max(self.multiply_adds_after, 1):.2f}x fewer)",
            f"Winograd: worst per-layer error {worst.error:.1e} relative ({worst.name}, {worst.shape}; "
            "float32 transforms on the layer's weights against a float64 direct conv)",
        ] + kept_lines


def static_nchw_float32(call: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The data and weight shapes of a conv2d call that is NCHW/OIHW, float32 and of static shape;
    else None: the convs that the layout rewrites (this one, channels_last.py) may take."""
    from pipeline.tvm_release.compat import TensorType, expr_type

    attrs = call.attrs
    data, weight = (expr_type(arg) for arg in call.args)
    if not all(isinstance(info, TensorType) and info.shape is not None for info in (data, weight)):
        return None
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None
    if {str(data.dtype), str(weight.dtype), str(attrs.out_dtype or "float32")} != {"float32"}:
        return None
    if not all(isinstance(d, int) or hasattr(d, "value") for d in list(data.shape) + list(weight.shape)):
        return None
    return tuple(int(d) for d in data.shape), tuple(int(d) for d in weight.shape)


def eligible(call: Any) -> ConvShape | None:
    """The conv's shape when the rewrite applies: NCHW/OIHW float32, 3x3, stride 1, dilation 1,
    one group, static shapes and at least MIN_CHANNELS input and output channels; else None."""
    attrs = call.attrs
    shapes = static_nchw_float32(call)
    if shapes is None:
        return None
    if any(int(s) != 1 for s in attrs.strides) or any(int(d) != 1 for d in attrs.dilation) or int(attrs.groups) != 1:
        return None
    (batch, channels, height, width), (out_channels, _, kh, kw) = shapes
    if (kh, kw) != (KERNEL, KERNEL) or min(channels, out_channels) < MIN_CHANNELS:
        return None
    padding = tuple(int(p) for p in attrs.padding)
    return ConvShape(batch, channels, height, width, out_channels, (padding[0], padding[1], padding[2], padding[3]))


def rewrite(
    mod: Any,
    measure: Callable[[ConvShape], Timing] | None = None,
    tile: int | None = None,
    width: int = 32,
    recorded: Mapping[str, Timing | None] | None = None,
) -> tuple[Any, list[Rewritten]]:
    """Every eligible conv2d of every Relax function in `mod` as Winograd stages, with the tile size
    `measure` times fastest on the build host (kept direct when that is faster), else `tile`, else the
    rule's (tile_size); the rest unchanged. `recorded`: the convs (by weight name) whose direct task has
    a record, with their measured choice (the tuned direct time against each tile size) or None: those
    without a measurement stay direct (pipeline/compiler/rewrite_choices.py). `width`: output channels of
    the GEMM's register tile on the target (winograd_schedules.gemm_width), the blocks the transformed
    weight is packed in. Returns the eligible convs, rewritten or not."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    done: list[Rewritten] = []
    counter = {"conv": 0}
    weights: list[Any] = []  # the function's parameters after its inputs: what weight lifting can transform

    @mutator
    class WinogradMutator(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if not call.op.same_as(conv2d):
                return call
            counter["conv"] += 1
            shape = eligible(call)
            if shape is None or not any(call.args[1].same_as(w) for w in weights):
                return call  # a weight computed at run time would be transformed on every inference
            weight = var_name(call.args[1])
            has_record = recorded is not None and weight in recorded
            if has_record:
                timing = recorded[weight] if recorded is not None else None
            else:
                timing = measure(shape) if measure else None
            m = (timing.best_tile() if timing else None) or tile or tile_size(shape)
            candidate = Rewritten(f"conv2d #{counter['conv']}", Plan(shape, m), weight, timing, has_record)
            done.append(candidate)
            if not candidate.chosen:
                return call
            return _winograd(self.builder_, call.args[0], call.args[1], candidate.plan, width)

    rewriter = WinogradMutator(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            inputs = int(func.attrs["num_input"]) if func.attrs and "num_input" in func.attrs else len(func.params)
            weights[:] = list(func.params[inputs:])
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get(), done


def var_name(var: Any) -> str:
    """A Relax variable's name (0.27: `name`; 0.26: `name_hint`)."""
    return str(getattr(var, "name", None) or getattr(var, "name_hint", ""))


def _winograd(builder: Any, data: Any, weight: Any, plan: Plan, width: int) -> Any:
    """The four stages for one conv; the weight transform is plain Relax ops on the weight, and packs
    U into blocks of output channels (U[e, k // b, c, k % b]): the GEMM then reads each block's
    weights as one contiguous stream (512 channels at 7x7: 0.74 -> 0.55 ms against U[e, c, k])."""
    from tvm import relax

    from pipeline.tiling import largest_divisor

    t = transforms(plan.m)
    n, shape = plan.n, plan.shape
    g = relax.const(t.g.astype("float32"))
    g_t = relax.const(np.ascontiguousarray(t.g.T).astype("float32"))
    gw = builder.emit(relax.op.matmul(g, weight))  # K C n 3
    u = builder.emit(relax.op.matmul(gw, g_t))  # K C n n
    u = builder.emit(relax.op.permute_dims(u, [2, 3, 1, 0]))  # n n C K
    block = largest_divisor(shape.out_channels, width)
    u = builder.emit(relax.op.reshape(u, (n * n, shape.channels, shape.out_channels // block, block)))
    u = builder.emit(relax.op.permute_dims(u, [0, 2, 1, 3]))
    v = builder.emit(
        builder.call_te(
            partial(input_transform, plan=plan),
            data,
            primfunc_name_hint=INPUT_STAGE,
            primfunc_attrs={"op_pattern": _OPAQUE},
        )
    )
    mm = builder.emit(builder.call_te(batched_gemm, v, u, primfunc_name_hint=GEMM_STAGE))
    return builder.call_te(partial(output_transform, plan=plan), mm, primfunc_name_hint=OUTPUT_STAGE)


def _sparse_sum(coefficients: np.ndarray, load: Any) -> Any:
    """sum_ij c[i, j] * load(i, j) over the nonzero coefficients, without multiplying by +-1."""
    terms = []
    for (i, j), c in np.ndenumerate(coefficients):
        if c == 0:
            continue
        value = load(i, j)
        terms.append(value if c == 1 else -value if c == -1 else value * float(c))
    return reduce(lambda a, b: a + b, terms)


def _by_position(index: Any, branches: list[Any]) -> Any:
    """branches[index] for an index the schedule unrolls: a chain that folds to one branch per
    unrolled position (TIR's simplifier folds the constant conditions)."""
    from tvm import tirx

    chosen = branches[-1]
    for position in range(len(branches) - 2, -1, -1):
        chosen = tirx.if_then_else(index == position, branches[position], chosen)
    return chosen


def input_transform(data: Any, plan: Plan) -> Any:
    """V[e, p, c] = (B^T d_p B)[e // n, e % n] for every tile p and channel c of the padded input.
    The tiles are first gathered into a tile-major buffer (tile row, i, j, tile column, channel), so that
    the transform reads each tile element once, and channels are innermost: the transform then loads and
    stores whole vectors of channels, and the GEMM reads V row by row like a packed matrix."""
    from tvm import te, topi

    t, n, m, shape = transforms(plan.m), plan.n, plan.m, plan.shape
    top, left = shape.padding[0], shape.padding[1]
    rows, cols = plan.tiles_h * m + KERNEL - 1, plan.tiles_w * m + KERNEL - 1
    padded = topi.nn.pad(
        data, [0, 0, top, left], [0, 0, rows - shape.height - top, cols - shape.width - left], name=PAD_BLOCK
    )
    tiles = te.compute(
        (shape.batch * plan.tiles_h, n, n, plan.tiles_w, shape.channels),
        lambda r, i, j, x, c: padded[r // plan.tiles_h, c, r % plan.tiles_h * m + i, x * m + j],
        name=TILES_BLOCK,
    )

    def value(e: Any, p: Any, c: Any) -> Any:
        row, column = p // plan.tiles_w, p % plan.tiles_w

        def branch(a: int, b: int) -> Any:
            coefficients = np.outer(t.b_t[a], t.b_t[b])
            return _sparse_sum(coefficients, lambda i, j: tiles[row, i, j, column, c])

        return _by_position(e, [branch(a, b) for a in range(n) for b in range(n)])

    return te.compute((n * n, plan.tiles, shape.channels), value, name=INPUT_STAGE)


def batched_gemm(v: Any, u: Any) -> Any:
    """M[e, p, k] = sum_c V[e, p, c] U[e, k // b, c, k % b]: one GEMM per tile position, with U packed
    in blocks of b output channels; vectorizable over k."""
    from tvm import te

    positions, tiles, channels = (int(d) for d in v.shape)
    blocks, block = int(u.shape[1]), int(u.shape[3])
    c = te.reduce_axis((0, channels), name="c")
    return te.compute(
        (positions, tiles, blocks * block),
        lambda e, p, k: te.sum(v[e, p, c] * u[e, k // block, c, k % block], axis=c),
        name=GEMM_STAGE,
    )


def output_transform(mm: Any, plan: Plan) -> Any:
    """Y[b, k, h, w] = (A^T M_p A)[h % m, w % m] of the tile p holding (h, w): cropped by construction."""
    from tvm import te

    t, n, m, shape = transforms(plan.m), plan.n, plan.m, plan.shape
    per_image = plan.tiles_h * plan.tiles_w

    def value(image: Any, k: Any, h: Any, w: Any) -> Any:
        p = image * per_image + h // m * plan.tiles_w + w // m

        def branch(i: int, j: int) -> Any:
            coefficients = np.outer(t.a_t[i], t.a_t[j])
            return _sparse_sum(coefficients, lambda a, b: mm[a * n + b, p, k])

        return _by_position(h % m * m + w % m, [branch(i, j) for i in range(m) for j in range(m)])

    return te.compute((shape.batch, shape.out_channels, shape.out_height, shape.out_width), value, name=OUTPUT_STAGE)


def layer_error(plan: Plan, weight: np.ndarray, seed: int = 0) -> float:
    """The float32 Winograd error of one conv with its own weights, on a random input of 2 x 2 tiles:
    the largest deviation from a float64 direct conv relative to the largest output."""
    t, n, m = transforms(plan.m), plan.n, plan.m
    rng = np.random.default_rng(seed)
    size = 2 * m + KERNEL - 1
    data = rng.standard_normal((plan.shape.channels, size, size)).astype(np.float32)
    f32 = {name: matrix.astype(np.float32) for name, matrix in (("a_t", t.a_t), ("g", t.g), ("b_t", t.b_t))}
    u = np.einsum("ai,kcij,bj->abck", f32["g"], weight, f32["g"], dtype=np.float32)  # as the lifted Relax ops
    output = np.zeros((plan.shape.out_channels, 2 * m, 2 * m), dtype=np.float32)
    for y in range(2):
        for x in range(2):
            tile = data[:, y * m : y * m + n, x * m : x * m + n]
            v = np.einsum("ai,cij,bj->abc", f32["b_t"], tile, f32["b_t"], dtype=np.float32)
            mm = np.einsum("abc,abck->abk", v, u, dtype=np.float32)
            output[:, y * m : y * m + m, x * m : x * m + m] = np.einsum(
                "ia,abk,jb->kij", f32["a_t"], mm, f32["a_t"], dtype=np.float32
            )
    windows = np.lib.stride_tricks.sliding_window_view(data.astype(np.float64), (KERNEL, KERNEL), axis=(1, 2))
    reference = np.einsum("cyxij,kcij->kyx", windows, weight.astype(np.float64))
    return float(np.abs(output - reference).max() / max(np.abs(reference).max(), 1e-30))


def multiply_adds(mod: Any) -> int:
    """Multiply-adds of the conv2d and matmul calls in a Relax module's functions (static shapes):
    the work that decides the speed of a compute-bound board."""
    total = 0
    for conv in calls_of(mod, "relax.nn.conv2d"):
        out = _static_shape(conv)
        if out:
            out_channels = out[str(conv.attrs.out_layout).index("C")]
            total += _product(out) * _product(_static_shape(conv.args[1])) // out_channels
    for matmul in calls_of(mod, "relax.matmul"):
        out = _static_shape(matmul)
        if out:
            total += _product(out) * _static_shape(matmul.args[0])[-1]
    return total


def _op_name(expr: Any) -> str:
    """The operator a Relax call applies ("relax.nn.conv2d"), "" for anything else."""
    import tvm
    from tvm import relax

    return str(expr.op.name) if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""


def _static_shape(expr: Any) -> tuple[int, ...]:
    from pipeline.tvm_release.compat import expr_type

    info = expr_type(expr)
    shape = getattr(info, "shape", None)
    try:
        return tuple(int(d) for d in shape) if shape is not None else ()
    except TypeError:  # a symbolic dimension
        return ()


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for value in values:
        result *= value
    return result


def report(
    mod: Any, done: list[Rewritten], weights: dict[str, np.ndarray], choices: Mapping[str, str] | None = None
) -> WinogradReport:
    """The rewrite's summary for the module it rewrote, with each layer's error on its own weights;
    `choices`: how a stored measurement chose a conv's form (by weight name), else the rule or the
    build-time timing says."""
    before = multiply_adds(mod)

    def chosen_by(candidate: Rewritten) -> str:
        if choices and candidate.weight in choices:
            return choices[candidate.weight]
        timing = candidate.timing
        if timing is None:
            return "rule"
        fastest = min(timing.winograd_ms.values())
        if candidate.chosen:
            return f"winograd (measured {timing.direct_ms / fastest:.1f}x faster than the direct default)"
        return f"direct (measured {fastest / timing.direct_ms:.1f}x faster than winograd)"

    def layer(candidate: Rewritten) -> WinogradLayer:
        shape = candidate.plan.shape
        return WinogradLayer(
            name=candidate.name,
            tile=candidate.plan.m,
            shape=f"{shape.batch}x{shape.channels}x{shape.height}x{shape.width} * "
            f"{shape.out_channels}x{shape.channels}x3x3",
            direct_multiply_adds=direct_multiply_adds(shape),
            winograd_multiply_adds=candidate.plan.multiply_adds(),
            error=layer_error(candidate.plan, weights[candidate.weight]) if candidate.chosen else 0.0,
            direct_ms=candidate.timing.direct_ms if candidate.timing else 0.0,
            winograd_ms=(
                candidate.timing.winograd_ms.get(candidate.plan.m, 0.0)
                if candidate.chosen
                else min(candidate.timing.winograd_ms.values())
            )
            if candidate.timing
            else 0.0,
            recorded=candidate.recorded,
            choice=chosen_by(candidate),
        )

    layers = tuple(layer(c) for c in done if c.chosen)
    kept = tuple(layer(c) for c in done if not c.chosen)
    after = before - sum(x.direct_multiply_adds - x.winograd_multiply_adds for x in layers)
    return WinogradReport(True, len(calls_of(mod, "relax.nn.conv2d")), layers, kept, before, after)


def calls_of(mod: Any, op_name: str) -> list[Any]:
    """Every call of the operator ("relax.nn.conv2d") in the module's Relax functions."""
    from tvm import relax
    from tvm.relax.analysis import post_order_visit

    found: list[Any] = []

    def visit(expr: Any) -> None:
        if _op_name(expr) == op_name:
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            post_order_visit(func, visit)
    return found
