"""ONNX -> one fused Relax module -> executable, with tuning records applied in between.

Records hit only when they were made for exactly the PrimFuncs the build lowers. So fusion runs
once, tasks are extracted from that fused module (for coverage and for tuning), the database is
applied to it, and the rest of TVM's CPU pipeline lowers it. `tvm.compile` alone applies no records.
"""

from dataclasses import dataclass
from typing import Any

from pipeline.build.model_file import ModelSpec
from pipeline.build.tvm_errors import tvm_errors
from pipeline.records.store import structural_hash
from pipeline.records.workloads import WorkloadKey, workload_key


@dataclass(frozen=True)
class Task:
    """One distinct PrimFunc of the fused module: what MetaSchedule tunes and a record is keyed by."""

    name: str
    key: WorkloadKey
    calls: int
    flops: float  # per model run: per-call FLOPs times calls
    structural_hash: str
    extracted: Any  # MetaSchedule's ExtractedTask, for tuning


def import_model(model: ModelSpec) -> tuple[Any, dict[str, list[Any]]]:
    """The model as a Relax module whose weights are runtime parameters (so the library stays small),
    with whatever depends on weights alone already computed (see lift_weight_transforms)."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    with tvm_errors(f"TVM cannot import {model.path.name}", "check the ONNX model's operators and opset"):
        mod = from_onnx(
            onnx.load(model.path), shape_dict={model.input_name: list(model.input_shape)}, keep_params_in_input=True
        )
        mod, params = relax.frontend.detach_params(mod)
        return lift_weight_transforms(relax.transform.DecomposeOpsForInference()(mod), params)


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


def extract_tasks(fused: Any, target: Any) -> list[Task]:
    """The fused module's PrimFuncs as tasks, each with its semantic key, FLOPs and TVM's hash."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    normalize = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(fused, target):
        mod = extracted.dispatched[0]
        tasks.append(
            Task(
                name=extracted.task_name,
                key=workload_key(extracted.task_name, mod),
                calls=int(extracted.weight),
                flops=float(estimate_tir_flops(mod)) * int(extracted.weight),
                structural_hash=structural_hash(normalize(mod)),
                extracted=extracted,
            )
        )
    return tasks


def apply_database(fused: Any, database: Any, target: Any) -> Any:
    """Replace each PrimFunc that has a record with its tuned schedule; the rest stay as they are."""
    from tvm import relax

    with target, database:
        return relax.transform.MetaScheduleApplyDatabase()(fused)


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
