"""ONNX -> one fused Relax module -> executable, with tuning records applied in between.

Records hit only when they were made for exactly the PrimFuncs the build lowers. So fusion runs
once, tasks are extracted from that fused module (for coverage and for tuning), the database is
applied to it, and the rest of TVM's CPU pipeline lowers it. `tvm.compile` alone applies no records.
"""

import re
import traceback
from collections.abc import Callable
from typing import Any

from pipeline.compiler.importer.model_file import ModelSpec
from pipeline.compiler.passes import lift_weight_transforms
from pipeline.compiler.rewrite_choices import RewritePlan
from pipeline.compiler.rewrites.channels_last import ChannelsLastReport, without_dropout
from pipeline.compiler.rewrites.channels_last import rewrite as strided_channels_last
from pipeline.compiler.rewrites.winograd import WinogradReport, multiply_adds, report, rewrite, var_name
from pipeline.errors import PipelineError, write_log
from pipeline.tvm_release.errors import reason, tvm_errors

# The conv-by-conv plan of the rewrites for an imported NCHW module (rewrite_choices.plan_rewrites).
Planner = Callable[[Any], RewritePlan]


def import_model(
    model: ModelSpec,
    winograd: bool = False,
    target: Any = None,
    channels_last: bool = False,
    planner: Planner | None = None,
) -> tuple[Any, dict[str, list[Any]]]:
    """The model as a Relax module whose weights are runtime parameters (so the library stays small),
    with whatever depends on weights alone already computed (see lift_weight_transforms); with
    `winograd`, eligible 3x3 convs rewritten first (pipeline/compiler/rewrites/winograd.py), with `channels_last`
    strided convs (pipeline/compiler/rewrites/channels_last.py); `planner` says which convs keep their
    records (pipeline/compiler/rewrite_choices.py)."""
    mod, params, _, _ = import_model_reporting(model, winograd, target, channels_last, planner)
    return mod, params


def import_model_reporting(
    model: ModelSpec, winograd: bool, target: Any = None, channels_last: bool = False, planner: Planner | None = None
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
        plan = planner(mod) if planner is not None and (winograd or channels_last) else RewritePlan()
        if channels_last:
            mod, layout = strided_channels_last(mod, plan.direct_weights())
        mod, summary = (
            _winograd(mod, params, target, plan) if winograd else (mod, WinogradReport.off(multiply_adds(mod)))
        )
        mod, params = lift_weight_transforms(mod, params)
        return mod, params, summary, layout


def _winograd(mod: Any, params: dict[str, list[Any]], target: Any, plan: RewritePlan) -> tuple[Any, WinogradReport]:
    """The rewrite, and its report with each rewritten conv's error on its own weights."""
    from pipeline.compiler.schedules.winograd_schedules import gemm_width
    from pipeline.compiler.winograd_choice import chooser

    if target is None:
        rewritten, done = rewrite(mod, recorded=plan.winograd_timings())
    else:
        rewritten, done = rewrite(mod, chooser(target), width=gemm_width(target), recorded=plan.winograd_timings())
    main = mod["main"]
    names = [var_name(var) for var in main.params[int(main.attrs["num_input"]) :]]
    wanted = {layer.weight for layer in done}
    weights = {name: tensor.numpy() for name, tensor in zip(names, params.get("main", [])) if name in wanted}
    return rewritten, report(mod, done, weights, plan.choice_summaries())


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
