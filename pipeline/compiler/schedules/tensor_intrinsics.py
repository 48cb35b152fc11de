"""Register only the CPU tensor intrinsics before MetaSchedule asks for all of them.

Why: `TuneContext` imports `tvm.s_tir.tensor_intrin`, whose package `__init__` registers the
intrinsics of every backend; CUDA's alone take ~10 s on a quiet 2-core host (43 s for the package
under load, against 2.5 s for the x86 and Arm ones that CPU targets can use). Every cold build pays
it once per process. The package is entered in `sys.modules` without running its `__init__`; its
submodules import as usual, so a GPU user still gets theirs on demand.
"""

import importlib
import importlib.util
import sys

PACKAGE = "tvm.s_tir.tensor_intrin"
CPU_MODULES = (f"{PACKAGE}.x86", f"{PACKAGE}.arm_cpu")


def register_cpu_intrinsics() -> None:
    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None:
            return
        sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
    for name in CPU_MODULES:
        importlib.import_module(name)
