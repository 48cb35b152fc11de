"""Semantic workload keys: what a tuning task computes, in words a person can compare.

TVM keys a tuning record by a structural hash of the whole PrimFunc, so a miss only says "not
found". Reading the operator, shapes, strides, padding, dilation, groups, layout, dtypes and fused
epilogue out of the same PrimFunc lets a miss say which of those differs from the nearest record.
"""

import re
from dataclasses import dataclass, fields
from typing import Any

# Reduction blocks whose names contain these are the conv/dense work that tuning exists for.
HEAVY_OPERATORS = ("conv", "matmul", "dense")

_LAYOUT_LETTERS = set("NCDHW")
# Blocks of the Winograd stages (pipeline/compiler/rewrites/winograd.py): conv2d_winograd_input, _gemm, _output.
WINOGRAD_PREFIX = "conv2d_winograd"


@dataclass(frozen=True)
class WorkloadKey:
    """What one task computes; equal keys mean a record made for one fits the other."""

    operator: str  # conv2d, group_conv2d, depthwise_conv2d, matmul, ...; the task's first op otherwise
    layout: str  # data layout of a conv (NCHW), else ""
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[int, ...]  # before per spatial dim, then after per spatial dim
    dilation: tuple[int, ...]
    groups: int
    dtypes: tuple[str, ...]  # input, weight, output
    epilogue: str  # ops fused after the anchor, e.g. "add_relu"

    @property
    def heavy(self) -> bool:
        return any(name in self.operator for name in HEAVY_OPERATORS)

    def text(self) -> str:
        """One line, e.g. `conv2d NCHW 1x3x32x32 * 16x3x3x3 -> 1x16x32x32 s1,1 p1,1,1,1 d1,1 g1 float32 +add_relu`."""
        parts = [self.operator]
        if self.layout:
            parts.append(self.layout)
        shapes = _dims(self.input_shape)
        if self.weight_shape:
            shapes += f" * {_dims(self.weight_shape)}"
        parts.append(f"{shapes} -> {_dims(self.output_shape)}")
        if self.strides:
            parts.append(f"s{_csv(self.strides)} p{_csv(self.padding)} d{_csv(self.dilation)} g{self.groups}")
        parts.append("/".join(dict.fromkeys(self.dtypes)))
        if self.epilogue:
            parts.append(f"+{self.epilogue}")
        return " ".join(parts)

    def differences(self, other: "WorkloadKey") -> list[str]:
        """Each field that differs, as `field mine != theirs` (empty when the keys are equal)."""
        return [
            f"{f.name.replace('_', ' ')} {_show(getattr(self, f.name))} != {_show(getattr(other, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def workload_key(task_name: str, mod: Any) -> WorkloadKey:
    """The key of a task's PrimFunc module (as extracted from the fused Relax module)."""
    from tvm.s_tir import Schedule

    sch = Schedule(mod)
    blocks = [sch.get(rv) for rv in sch.get_child_blocks(sch.get_sblock("root"))]
    stage = next((b.name_hint for b in blocks if b.name_hint.startswith(WINOGRAD_PREFIX)), None)
    if stage is not None:
        return _winograd_key(task_name, stage, mod)
    anchor = next((b for b in blocks if _is_reduction(b) and _op_name(b.name_hint)), None)
    if anchor is None:
        return _plain_key(task_name, mod)
    if "conv" in anchor.name_hint:
        return _conv_key(task_name, anchor, blocks)
    return _matmul_key(task_name, anchor)


def _plain_key(task_name: str, mod: Any) -> WorkloadKey:
    """Tasks without conv/dense work: named by their first op, with their first input and output shapes."""
    return _buffers_key("_".join(_name_tokens(task_name)), _buffers(mod), weight_shape=(), epilogue="")


def _winograd_key(task_name: str, stage: str, mod: Any) -> WorkloadKey:
    """A Winograd stage: its block name as the operator, its tensors' shapes (the GEMM's second input,
    the transformed weight, as the weight), and what fused after the output transform as epilogue."""
    buffers = _buffers(mod)
    weight = _shape(buffers[1]) if stage.endswith("gemm") and len(buffers) > 2 else ()
    tokens = _name_tokens(task_name)
    stage_tokens = stage.split("_")
    after = tokens[tokens.index(stage_tokens[-1]) + 1 :] if stage_tokens[-1] in tokens else []
    return _buffers_key(stage, buffers, weight_shape=weight, epilogue="_".join(after))


def _buffers(mod: Any) -> list[Any]:
    from tvm import tirx

    return [p for p in mod["main"].params if isinstance(p, tirx.Buffer)]


def _buffers_key(operator: str, buffers: list[Any], *, weight_shape: tuple[int, ...], epilogue: str) -> WorkloadKey:
    """A key from a task's first (input) and last (output) buffer, for tasks without conv attributes."""
    first, last = buffers[0], buffers[-1]
    return WorkloadKey(
        operator=operator,
        layout="",
        input_shape=_shape(first),
        weight_shape=weight_shape,
        output_shape=_shape(last),
        strides=(),
        padding=(),
        dilation=(),
        groups=1,
        dtypes=(str(first.dtype), str(last.dtype)),
        epilogue=epilogue,
    )


def _matmul_key(task_name: str, anchor: Any) -> WorkloadKey:
    from pipeline.tvm_release.compat import region_buffer

    data, weight = region_buffer(anchor.reads[0]), region_buffer(anchor.reads[1])
    output = region_buffer(anchor.writes[0])
    return WorkloadKey(
        operator=_op_name(anchor.name_hint),
        layout="",
        input_shape=_shape(data),
        weight_shape=_shape(weight),
        output_shape=_shape(output),
        strides=(),
        padding=(),
        dilation=(),
        groups=1,
        dtypes=(str(data.dtype), str(weight.dtype), str(output.dtype)),
        epilogue=_epilogue(task_name),
    )


def _conv_key(task_name: str, anchor: Any, blocks: list[Any]) -> WorkloadKey:
    """Strides and dilation are the coefficients of the output and window variables in the data index;
    padding is the offset and the growth of the pad block that feeds the conv."""
    from pipeline.tvm_release.compat import detect_linear_equation, region_buffer

    layout = _layout(anchor.name_hint)
    data_region, weight = anchor.reads[0], region_buffer(anchor.reads[1])
    output = region_buffer(anchor.writes[0])
    pad = next((b for b in blocks if b.writes and region_buffer(b.writes[0]).same_as(region_buffer(data_region))), None)
    data = region_buffer(pad.reads[0]) if pad is not None else region_buffer(data_region)
    kinds = {iv.var.name: iv.iter_type for iv in anchor.iter_vars}
    strides, dilation, before, after, window = [], [], [], [], 1
    for axis, letter in enumerate(layout):
        if letter not in "DHW":
            continue
        index = data_region.region[axis].min
        spatial = [v for v in _vars(index) if kinds.get(v.name) == 0]
        reduce = [v for v in _vars(index) if kinds.get(v.name) == 2]
        coeffs = detect_linear_equation(index, spatial[:1] + reduce[:1]) if spatial and reduce else []
        stride, dil = (int(coeffs[0]), int(coeffs[1])) if len(coeffs) == 3 else (0, 0)
        strides.append(stride)
        dilation.append(dil)
        window *= next((int(iv.dom.extent) for iv in anchor.iter_vars if reduce and iv.var.same_as(reduce[0])), 1)
        offset = -_constant_term(pad.reads[0].region[axis].min) if pad is not None else 0
        grown = int(region_buffer(data_region).shape[axis]) - int(data.shape[axis])
        before.append(offset)
        after.append(grown - offset)
    channels_in = int(data.shape[layout.index("C")]) if "C" in layout else 1
    channels_out = int(output.shape[layout.index("C")]) if "C" in layout else 1
    weight_size = _product(_shape(weight))
    return WorkloadKey(
        operator=_op_name(anchor.name_hint),
        layout=layout,
        input_shape=_shape(data),
        weight_shape=_shape(weight),
        output_shape=_shape(output),
        strides=tuple(strides),
        padding=tuple(before + after),
        dilation=tuple(dilation),
        groups=channels_in * channels_out * window // weight_size if weight_size else 1,
        dtypes=(str(data.dtype), str(weight.dtype), str(output.dtype)),
        epilogue=_epilogue(task_name),
    )


def _is_reduction(block: Any) -> bool:
    return any(iv.iter_type == 2 for iv in block.iter_vars)


def _op_name(block_name: str) -> str:
    """`conv2d_nchw` -> `conv2d`, `T_matmul_NT` -> `matmul`; "" for blocks that are not conv/dense."""
    if not any(name in block_name.lower() for name in HEAVY_OPERATORS):
        return ""
    name = block_name.removeprefix("T_")
    layout = _layout(name)
    if layout:
        name = name[: -len(layout) - 1]
    return re.sub(r"_?(NT|NN|TN|TT)$", "", name).removeprefix("NT_").lower()


def _layout(block_name: str) -> str:
    suffix = block_name.rsplit("_", 1)[-1]
    return suffix.upper() if len(suffix) >= 3 and set(suffix.upper()) <= _LAYOUT_LETTERS else ""


def _name_tokens(task_name: str) -> list[str]:
    """Fused function names join op names with `_` and number repeats (`fused_conv2d1_add2`)."""
    return [re.sub(r"\d+$", "", token) for token in task_name.removeprefix("fused_").split("_")]


def _epilogue(task_name: str) -> str:
    return "_".join(_name_tokens(task_name)[1:]) if task_name.startswith("fused_") else ""


def _vars(expr: Any) -> list[Any]:
    """The variables an index expression uses (none are defined inside an index)."""
    from tvm.tirx.analysis import undefined_vars

    return list(undefined_vars(expr))


def _constant_term(expr: Any) -> int:
    from pipeline.tvm_release.compat import detect_linear_equation

    coeffs = detect_linear_equation(expr, _vars(expr))
    return int(coeffs[-1]) if coeffs else 0


def _shape(buffer: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in buffer.shape)


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def _show(value: Any) -> str:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return _dims(value)
    return "/".join(value) if isinstance(value, tuple) else str(value) or "none"
