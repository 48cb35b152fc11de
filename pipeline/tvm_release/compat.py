"""Every name that differs between the supported TVM releases, in one place.

Each shim says which release has which spelling; the rest of the pipeline imports from here instead of
guessing. Verified differences (0.26 -> 0.27): `SBlock`/`SBlockRealize` moved from `tvm.tirx` to
`tvm.s_tir`; `detect_linear_equation` moved from `tvm.arith` to `tvm.sym`; `BufferRegion.buffer` was
renamed `.source`; Relax's `TensorStructInfo` is `TensorType`, and an expression's `.struct_info` is `.ty`."""

from typing import Any

try:  # 0.27
    from tvm.s_tir import SBlock, SBlockRealize
except ImportError:  # 0.26
    from tvm.tirx import SBlock, SBlockRealize

try:  # 0.27
    from tvm.sym.pattern import detect_linear_equation
except ImportError:  # 0.26
    from tvm.arith import detect_linear_equation

try:  # 0.27
    from tvm.relax import TensorType
except ImportError:  # 0.26
    from tvm.relax import TensorStructInfo as TensorType

__all__ = [
    "TVM_ERRORS",
    "SBlock",
    "SBlockRealize",
    "TensorType",
    "detect_linear_equation",
    "expr_type",
    "region_buffer",
]

# What a failing TVM call raises in both releases: tvm-ffi maps TVM's error kinds onto Python's built-in
# exceptions (a schedule primitive that cannot apply raises ValueError or RuntimeError); there is no
# `tvm.TVMError` any more.
TVM_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, TypeError, IndexError, KeyError)


def region_buffer(region: Any) -> Any:
    """The buffer a BufferRegion reads or writes: `.source` in 0.27, `.buffer` in 0.26."""
    return region.source if hasattr(region, "source") else region.buffer


def expr_type(expr: Any) -> Any:
    """A Relax expression's type (shape and dtype): `.ty` in 0.27, `.struct_info` in 0.26."""
    return getattr(expr, "ty", None) or expr.struct_info
