"""ONNX -> one fused Relax module -> executable, with tuning records applied in between.

Records hit only when they were made for exactly the PrimFuncs the build lowers. So fusion runs
once, tasks are extracted from that fused module (for coverage and for tuning), the database is
applied to it, and the rest of TVM's CPU pipeline lowers it. `tvm.compile` alone applies no records.
"""

import re
import traceback
from dataclasses import dataclass
from typing import Any

from pipeline.build.channels_last import ChannelsLastReport, without_dropout
from pipeline.build.channels_last import rewrite as strided_channels_last
from pipeline.build.model_file import ModelSpec
from pipeline.build.tvm_errors import reason, tvm_errors
from pipeline.build.winograd import WinogradReport, multiply_adds, report, rewrite, var_name
from pipeline.errors import PipelineError, write_log
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


def import_model(
    model: ModelSpec, winograd: bool = False, target: Any = None, channels_last: bool = False
) -> tuple[Any, dict[str, list[Any]]]:
    """The model as a Relax module whose weights are runtime parameters (so the library stays small),
    with whatever depends on weights alone already computed (see lift_weight_transforms); with
    `winograd`, eligible 3x3 convs rewritten first (pipeline/build/winograd.py), with `channels_last`
    strided convs (pipeline/build/channels_last.py)."""
    mod, params, _, _ = import_model_reporting(model, winograd, target, channels_last)
    return mod, params


def import_model_reporting(
    model: ModelSpec, winograd: bool, target: Any = None, channels_last: bool = False
) -> tuple[Any, dict[str, list[Any]], WinogradReport, ChannelsLastReport]:
    """import_model, also saying which convs the Winograd rewrite took and how accurate each is, and
    which run channels-last; with a `target` that runs on this host, each eligible conv shape is
    timed both ways (winograd_choice.py)."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    proto = weights_not_inputs(onnx.load(model.path))
    try:
        mod = from_onnx(proto, shape_dict={model.input_name: list(model.input_shape)}, keep_params_in_input=True)
    except Exception as exc:  # TVM raises many types for graphs it cannot convert
        raise import_error(exc, model, proto) from None
    with tvm_errors(
        f"TVM imported {model.path.name} but could not precompute its weights",
        "report the model with the log file; TVM's ONNX support may be incomplete for it",
    ):
        mod, params = relax.frontend.detach_params(mod)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = without_dropout(mod)
        layout = ChannelsLastReport(False)
        if channels_last:
            mod, layout = strided_channels_last(mod)
        mod, summary = _winograd(mod, params, target) if winograd else (mod, WinogradReport.off(multiply_adds(mod)))
        mod, params = lift_weight_transforms(mod, params)
        return mod, params, summary, layout


def _winograd(mod: Any, params: dict[str, list[Any]], target: Any) -> tuple[Any, WinogradReport]:
    """The rewrite, and its report with each rewritten conv's error on its own weights."""
    from pipeline.build.winograd_choice import chooser
    from pipeline.build.winograd_schedules import gemm_width

    if target is None:
        rewritten, done = rewrite(mod)
    else:
        rewritten, done = rewrite(mod, chooser(target), width=gemm_width(target))
    main = mod["main"]
    names = [var_name(var) for var in main.params[int(main.attrs["num_input"]) :]]
    wanted = {layer.weight for layer in done}
    weights = {name: tensor.numpy() for name, tensor in zip(names, params.get("main", [])) if name in wanted}
    return rewritten, report(mod, done, weights)


def weights_not_inputs(proto: Any) -> Any:
    """Initializers that a graph also lists as inputs are weights, not inputs.

    ONNX IR version 3 required every weight to be a graph input (PyTorch writes the same with
    `keep_initializers_as_inputs=True`). TVM's frontend, keeping weights as parameters, would then take
    each weight twice. From IR version 4 on, the list of inputs may leave weights out, so the copy
    handed to TVM says version 4 at least; the operators and their opsets are unchanged."""
    graph = proto.graph
    weights = {tensor.name for tensor in graph.initializer}
    if any(value.name in weights for value in graph.input):
        inputs = [value for value in graph.input if value.name not in weights]
        del graph.input[:]
        graph.input.extend(inputs)
        proto.ir_version = max(proto.ir_version, 4)
    return proto


def import_error(exc: BaseException, model: ModelSpec, proto: Any) -> PipelineError:
    """The reason in words on the line, TVM's whole message and traceback in the log it names."""
    import tvm

    log = write_log("import", "".join(traceback.format_exception(exc)))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    unsupported = _UNSUPPORTED_OPS.search(str(exc)) if isinstance(exc, tvm.error.OpNotImplemented) else None
    if unsupported:
        ops = unsupported.group(1).strip()
        noun = "operators" if "," in ops else "operator"
        return PipelineError(
            f"TVM's ONNX frontend does not support {noun} {ops} (opset {opset}) in {model.path.name}",
            "replace the operator when exporting, or deploy a model without it",
            log=log,
        )
    missing = _MISSING_OPSET.search(str(exc))
    if missing:
        return PipelineError(
            f"TVM's ONNX frontend has no converter for {missing.group(2)} at opset {missing.group(1)} "
            f"in {model.path.name}",
            "re-export the model at another opset (onnx.version_converter can convert it)",
            log=log,
        )
    return PipelineError(
        f"TVM's ONNX frontend could not convert {model.path.name} (opset {opset}): {reason(exc)}",
        "check the model's operators against TVM's ONNX frontend",
        log=log,
    )


_UNSUPPORTED_OPS = re.compile(r"not supported for frontend ONNX: ([^\n]+)")
_MISSING_OPSET = re.compile(r"opset version (\d+) of (\w+) not implemented")


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

    from pipeline.build.winograd_schedules import transform_flops

    normalize = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(fused, target):
        mod = extracted.dispatched[0]
        tasks.append(
            Task(
                name=extracted.task_name,
                key=workload_key(extracted.task_name, mod),
                calls=int(extracted.weight),
                flops=(transform_flops(mod) or float(estimate_tir_flops(mod))) * int(extracted.weight),
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
