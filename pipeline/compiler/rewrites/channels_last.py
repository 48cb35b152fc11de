"""Strided convolutions computed channels-last: a Relax rewrite that needs no tuning.

Why: the default schedules vectorize an NCHW conv along its output columns. With stride s the
vector's inputs lie s apart, so a vector load covers only lanes / s outputs: the 3x3 stride-2 convs
of ResNet-18 ran at about 82 GMAC/s and its 7x7 stride-2 stem at 87. Channels-last (NHWC data, HWIO
weight) puts the output channels innermost: the vector runs over them, contiguous in the weight, and
each input value is broadcast, whatever the stride. Measured on `local` (2 threads, conv + bias + ReLU
with both transposes, docs/winograd.md): 3x3 stride-2 convs 0.66-0.68 -> 0.33-0.36 ms, the 7x7 stem
1.20 -> 1.05 ms; 1x1 stride-2 convs were slower (0.09 -> 0.16 ms), so they stay NCHW, as do grouped
convs and convs with few multiply-adds per output (MIN_MULTIPLY_ADDS).

The rewrite is Relax's own ConvertLayout, asked for NHWC/HWIO on these convs and for their own layout
on every other conv: the ops after a rewritten conv that work in any layout (batch-norm, ReLU,
pooling, additions) follow it into NHWC, and one transpose goes back where an op needs NCHW (the next
conv, a flatten); the weight's transpose depends on the weight alone, so the build's weight lifting
does it once.
"""

from dataclasses import dataclass
from typing import Any

from pipeline.compiler.rewrites.winograd import calls_of, static_nchw_float32

CONV2D = "relax.nn.conv2d"
# Multiply-adds per output below which a conv stays NCHW: such a conv is bound by writing its output,
# and the transpose back to NCHW reads and writes that output once more. MobileNetV2's 3x3 stem on 3
# channels (27 per output) took 0.33 ms NCHW against 0.44 ms NHWC plus 0.39 ms for the transpose that
# its ReLU6 (an opaque call_tir, which ConvertLayout cannot pass) forced; ResNet-18's 7x7 stem (147)
# and 3x3 stride-2 convs (576 and more) gain.
MIN_MULTIPLY_ADDS = 64
DROPOUT = "relax.nn.dropout"


def eligible(call: Any) -> bool:
    """An NCHW/OIHW float32 conv2d with static shapes, one group, a kernel larger than 1x1, a stride
    and at least MIN_MULTIPLY_ADDS per output."""
    shapes = static_nchw_float32(call)
    if shapes is None:
        return False
    _, (_, channels, kh, kw) = shapes
    strided = max(int(s) for s in call.attrs.strides) > 1
    return int(call.attrs.groups) == 1 and strided and max(kh, kw) > 1 and channels * kh * kw >= MIN_MULTIPLY_ADDS


@dataclass(frozen=True)
class ChannelsLastReport:
    """What the rewrite did to one model, for the build's report."""

    enabled: bool
    convs: int = 0  # convs computed channels-last
    failure: str = ""  # why TVM could not convert this model's layout: its convs then stay NCHW
    kept_tuned: int = 0  # eligible convs kept NCHW: their direct task has a record

    def lines(self) -> list[str]:
        if self.failure:
            return [f"Channels-last: not applied ({self.failure}); strided convs run NCHW"]
        kept = [f"Channels-last: {self.kept_tuned} strided convs kept NCHW, tuned record"] if self.kept_tuned else []
        return ([f"Channels-last: {self.convs} strided convs run NHWC"] if self.convs else []) + kept


def rewrite(mod: Any, keep: frozenset[str] = frozenset()) -> tuple[Any, ChannelsLastReport]:
    """Every eligible conv2d of `mod` computed channels-last, and the ops after it that do not care
    about the layout (bias, batch-norm, ReLU, pooling) with it, up to the next op that needs NCHW
    (Relax's ConvertLayout places the transposes); the other convs unchanged. Where ConvertLayout
    fails on a model, the model is left as it is and the report says why: the layout is a speed-up,
    never a reason for a build to fail. `keep`: convs (by weight name) that stay NCHW whatever their
    shape: their direct task has a record (pipeline/compiler/rewrite_choices.py)."""
    import tvm
    from tvm import relax

    from pipeline.compiler.rewrites.winograd import var_name
    from pipeline.tvm_release.compat import TVM_ERRORS

    def taking(call: Any) -> bool:
        return eligible(call) and var_name(call.args[1]) not in keep

    taken = [call for call in calls_of(mod, CONV2D) if taking(call)]
    kept = sum(1 for call in calls_of(mod, CONV2D) if eligible(call)) - len(taken)
    if not taken:
        return mod, ChannelsLastReport(True, kept_tuned=kept)

    def desired(call: Any) -> dict[str, list[str]]:
        if call.op.name != CONV2D:
            return {}
        if taking(call):
            return {CONV2D: ["NHWC", "HWIO"]}
        return {CONV2D: [str(call.attrs.data_layout), str(call.attrs.kernel_layout)]}

    passes = [relax.transform.ConvertLayout({}, desired), relax.transform.EliminateCommonSubexpr()]
    try:
        converted = tvm.transform.Sequential(passes)(mod)
    except TVM_ERRORS as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        return mod, ChannelsLastReport(True, failure=f"TVM's ConvertLayout failed: {reason[:120]}")
    return converted, ChannelsLastReport(True, convs=len(taken), kept_tuned=kept)


def without_dropout(mod: Any) -> Any:
    """The module with every dropout replaced by its input: dropout is the identity at inference, yet
    TVM keeps it as a copy, and ConvertLayout cannot pass its (output, mask) tuple."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class DropoutRemover(PyExprMutator):
        def visit_tuple_getitem_(self, op: Any) -> Any:
            source = op.tuple_value
            bound = self.lookup_binding(source) if isinstance(source, relax.Var) else source
            if op.index == 0 and isinstance(bound, relax.Call) and getattr(bound.op, "name", "") == DROPOUT:
                return self.visit_expr(bound.args[0])
            return super().visit_tuple_getitem_(op)

    if not calls_of(mod, DROPOUT):
        return mod
    remover = DropoutRemover(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            remover.builder_.update_func(gv, remover.visit_expr(func))
    return relax.transform.DeadCodeElimination()(remover.builder_.get())
