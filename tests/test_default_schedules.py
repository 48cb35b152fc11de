"""Default CPU schedules: every conv and dense task of a model gets one without tuning, the build
applies it through a MetaSchedule database, and the scheduled code computes what ONNX Runtime does."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.s_tir import meta_schedule as ms
from tvm.target import codegen
from tvm.tirx import PrimFunc

from models import tiny
from models.graph import GraphBuilder, Tensor
from pipeline.default_schedules import (
    DefaultSchedule,
    apply_schedules,
    build_fused,
    commit_defaults,
    cpu_traits,
    default_schedule,
    default_schedules,
    legalize_and_fuse,
)

HOST = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": 2}
)
RK3399 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 2}
)
INPUT = "data"
TOLERANCE = 1e-4  # relative to the output's largest magnitude; float32 sums of a few hundred terms


def fused_module(model: onnx.ModelProto, shape: tuple[int, ...]) -> tvm.IRModule:
    """The ONNX model as the build sees it before it applies a database: imported, weights bound as
    constants, legalized and fused."""
    mod = from_onnx(model, shape_dict={INPUT: list(shape)}, keep_params_in_input=True)
    mod, params = relax.frontend.detach_params(mod)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    weights = dict(zip(mod["main"].params[1:], params["main"]))
    return legalize_and_fuse(relax.transform.BindParams("main", weights)(mod))


def run_with_defaults(model: onnx.ModelProto, shape: tuple[int, ...], data: np.ndarray) -> np.ndarray:
    fused = fused_module(model, shape)
    scheduled = apply_schedules(fused, default_schedules(fused, HOST), HOST)
    vm = relax.VirtualMachine(build_fused(scheduled, HOST), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(data)).numpy()


def onnxruntime_output(model: onnx.ModelProto, data: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT: data})[0]


def finished(g: GraphBuilder, out: Tensor) -> onnx.ModelProto:
    """The builder writes a [1, C] output type (right for classifiers); conv outputs are 4-D, so
    their type comes from ONNX shape inference."""
    model = g.finish("case", out)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(model)


def conv_case(channels: int, size: int, out: int, kernel: int, stride: int = 1, group: int = 1, epilogue: str = "relu"):
    g = GraphBuilder(0, INPUT, (1, channels, size, size))
    y = g.conv(g.input, out, kernel, stride=stride, group=group)
    if epilogue == "relu":
        y = g.relu(y)
    elif epilogue == "relu6":
        y = g.relu6(y)
    elif epilogue == "residual":
        y = g.add(y, g.input)
    return finished(g, y), (1, channels, size, size)


CONV_CASES = {
    "3x3 pad 1": conv_case(32, 16, 32, 3),
    "3x3 stride 2, odd size": conv_case(16, 15, 32, 3, stride=2),
    "1x1 with residual add": conv_case(32, 14, 32, 1, epilogue="residual"),
    "1x1 stride 2, no epilogue": conv_case(24, 14, 48, 1, stride=2, epilogue="none"),
    "depthwise 3x3 with relu6, 13x13": conv_case(32, 13, 32, 3, group=32, epilogue="relu6"),
    "grouped 3x3 (4 groups)": conv_case(32, 12, 32, 3, group=4),
    "7x7 output": conv_case(64, 7, 64, 3),
    "3-channel stem 7x7 stride 2": conv_case(3, 33, 16, 7, stride=2),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_default_conv_schedule_matches_onnxruntime(case: str) -> None:
    model, shape = CONV_CASES[case]
    data = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    expected = onnxruntime_output(model, data)
    actual = run_with_defaults(model, shape, data)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * np.abs(expected).max())


def test_default_dense_schedule_matches_onnxruntime() -> None:
    g = GraphBuilder(0, INPUT, (1, 300))
    model = g.finish("dense", g.gemm(g.input, 100))
    data = np.random.default_rng(1).standard_normal((1, 300), dtype=np.float32)
    expected = onnxruntime_output(model, data)
    np.testing.assert_allclose(
        run_with_defaults(model, (1, 300), data), expected, rtol=0, atol=TOLERANCE * np.abs(expected).max()
    )


@pytest.fixture(scope="module")
def tiny_fused() -> tvm.IRModule:
    return fused_module(tiny.build(), tiny.INPUT_SHAPE)


@pytest.fixture(scope="module")
def tiny_defaults(tiny_fused: tvm.IRModule) -> dict[str, DefaultSchedule | None]:
    return default_schedules(tiny_fused, HOST)


def test_every_conv_dense_and_pool_task_of_tiny_gets_a_default(
    tiny_defaults: dict[str, DefaultSchedule | None],
) -> None:
    schedules = tiny_defaults
    heavy = {name for name in schedules if any(op in name for op in ("conv2d", "matmul", "pool", "mean"))}
    assert len(heavy) >= 7
    assert {name for name, s in schedules.items() if s is not None} == heavy
    assert all(s.kind == "default" for name, s in schedules.items() if name in heavy)


def test_the_build_applies_the_defaults_and_tiny_matches_onnxruntime(
    tiny_fused: tvm.IRModule, tiny_defaults: dict[str, DefaultSchedule | None]
) -> None:
    scheduled = apply_schedules(tiny_fused, tiny_defaults, HOST)
    for gv, func in scheduled.functions.items():
        if isinstance(func, PrimFunc) and any(op in gv.name_hint for op in ("conv2d", "matmul")):
            assert func.attrs["tirx.is_scheduled"], gv.name_hint
    data = np.random.default_rng(1).standard_normal(tiny.INPUT_SHAPE, dtype=np.float32)
    expected = onnxruntime_output(tiny.build(), data)
    actual = relax.VirtualMachine(build_fused(scheduled, HOST), tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * np.abs(expected).max())


def test_a_tuned_record_outranks_the_default(tiny_defaults: dict[str, DefaultSchedule | None]) -> None:
    """The default is only a fallback: the database returns a measured record first."""
    name, default = next((name, s) for name, s in tiny_defaults.items() if "conv2d" in name)
    database = ms.database.MemoryDatabase()
    commit_defaults(database, {name: default}, HOST)
    tuned = ms.database.TuningRecord(
        default.trace, database.commit_workload(default.workload), run_secs=[1e-4], target=HOST
    )
    database.commit_tuning_record(tuned)
    (best,) = database.get_top_k(database.commit_workload(default.workload), 1)
    assert [float(s) for s in best.run_secs] == [1e-4]


def test_elementwise_tasks_keep_tvm_lowering(tiny_defaults: dict[str, DefaultSchedule | None]) -> None:
    assert tiny_defaults["fused_relu1"] is None
    assert tiny_defaults["reshape2"] is None


def test_aarch64_target_gets_neon_sized_vectors(tiny_fused: tvm.IRModule) -> None:
    assert cpu_traits(RK3399).lanes == 4
    assert cpu_traits(HOST).lanes in (8, 16)
    name = next(gv.name_hint for gv in tiny_fused.functions if "conv2d" in gv.name_hint)
    schedule = default_schedule(tiny_fused[name], RK3399, name)
    assert schedule is not None
    tvm.compile(schedule.mod, target=RK3399)  # lowers and generates aarch64 code
