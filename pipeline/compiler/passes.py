"""TVM's CPU pass pipeline, cut where the records are keyed: fusion before, lowering to code after."""

from typing import Any


def lift_weight_transforms(mod: Any, params: dict[str, list[Any]]) -> tuple[Any, dict[str, list[Any]]]:
    """Compute once, here, what the model would otherwise recompute from its weights on every run.

    Why: ONNX Gemm with transB=1 makes VGG-16 transpose its 25088x4096 weight on every inference
    (1.1-1.3 s of a ~1.8 s tuned run on this host), and batch-norm epilogues take square roots of
    constant variances. `LiftTransformParams` moves such weight-only computations into
    `main_transform_params`; it runs on this host and `main` gets the transformed weights."""
    import tvm
    from tvm import relax

    lifted = relax.transform.LiftTransformParams()(mod)
    names = {gv.name_hint for gv in lifted.functions}
    if "main_transform_params" not in names:
        return mod, params
    transform = tvm.IRModule({"main_transform_params": lifted["main_transform_params"]})
    host = tvm.target.Target({"kind": "llvm"})
    machine = relax.VirtualMachine(tvm.compile(transform, target=host), tvm.cpu())
    transformed = list(machine["main_transform_params"](list(params["main"])))
    main = tvm.IRModule({gv: func for gv, func in lifted.functions.items() if gv.name_hint != "main_transform_params"})
    return main, {"main": transformed}


def fuse(mod: Any, target: Any) -> Any:
    """The CPU pipeline's dispatch, legalization and fusion passes: the boundary where records are keyed."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with target:
        return tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(mod)


def scheduled_functions(applied: Any) -> set[str]:
    """Names of the PrimFuncs that now run a tuned schedule (TVM marks them `tirx.is_scheduled`)."""
    from tvm import tirx

    return {
        gv.name_hint
        for gv, func in applied.functions.items()
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and func.attrs.get("tirx.is_scheduled", False)
    }


def build_executable(applied: Any, target: Any) -> Any:
    """The remaining CPU passes, imported from their module: `relax.pipeline` does not export them in 0.27."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    rest = tvm.transform.Sequential(cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
    return tvm.compile(applied, target=target, relax_pipeline=rest)
