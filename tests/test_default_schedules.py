"""Schedules without tuning: every conv and dense task of a model gets a default schedule or one
transferred from a record of another shape, the build applies it through a MetaSchedule database,
and the scheduled code computes what ONNX Runtime does."""

import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.s_tir import meta_schedule as ms
from tvm.support import cc
from tvm.target import codegen
from tvm.tirx import PrimFunc

from models import tiny
from models.graph import GraphBuilder, Tensor
from pipeline.board.bundle import runtime_bundle
from pipeline.compiler.passes import build_executable, fuse, lift_weight_transforms
from pipeline.compiler.schedules.default_schedules import (
    TaskSchedule,
    apply_schedules,
    commit_schedules,
    cpu_traits,
    default_schedule,
    default_schedules,
)
from pipeline.compiler.schedules.schedule_transfer import adapt_tile, donors, fallback_database, transferred_schedules

pytestmark = pytest.mark.board  # sshd, qemu or TVM builds: the slow tier

HOST = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": 2}
)
RK3399 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 2}
)
# The host reaches an emulated rk3399 this way; without the CPU model qemu accepts instructions it lacks.
EMULATED_RK3399 = ["qemu-aarch64", "-cpu", "cortex-a72", "-L", "/usr/aarch64-linux-gnu"]
INPUT = "data"
TOLERANCE = 1e-4  # relative to the output's largest magnitude; float32 sums of a few hundred terms


def fused_module(model: onnx.ModelProto, shape: tuple[int, ...], target: tvm.target.Target = HOST) -> tvm.IRModule:
    """The ONNX model as the build sees it before it applies a database: imported, weight-only work
    lifted, legalized and fused by the build's own passes; weights bound as constants so it runs alone."""
    mod = from_onnx(model, shape_dict={INPUT: list(shape)}, keep_params_in_input=True)
    mod, params = relax.frontend.detach_params(mod)
    mod, params = lift_weight_transforms(relax.transform.DecomposeOpsForInference()(mod), params)
    weights = dict(zip(mod["main"].params[1:], params["main"]))
    return fuse(relax.transform.BindParams("main", weights)(mod), target)


def run_with_defaults(model: onnx.ModelProto, shape: tuple[int, ...], data: np.ndarray) -> np.ndarray:
    fused = fused_module(model, shape)
    scheduled = apply_schedules(fused, default_schedules(fused, HOST), HOST)
    vm = relax.VirtualMachine(build_executable(scheduled, HOST), tvm.cpu())
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
def tiny_defaults(tiny_fused: tvm.IRModule) -> dict[str, TaskSchedule | None]:
    return default_schedules(tiny_fused, HOST)


def test_every_conv_and_dense_task_of_tiny_gets_a_default(tiny_defaults: dict[str, TaskSchedule | None]) -> None:
    schedules = tiny_defaults
    heavy = {name for name in schedules if any(op in name for op in ("conv2d", "matmul"))}
    assert len(heavy) == 5
    assert {name for name, s in schedules.items() if s is not None} == heavy
    assert all(s.kind == "default" for name, s in schedules.items() if name in heavy)


def test_the_build_applies_the_defaults_and_tiny_matches_onnxruntime(
    tiny_fused: tvm.IRModule, tiny_defaults: dict[str, TaskSchedule | None]
) -> None:
    scheduled = apply_schedules(tiny_fused, tiny_defaults, HOST)
    for gv, func in scheduled.functions.items():
        if isinstance(func, PrimFunc) and any(op in gv.name_hint for op in ("conv2d", "matmul")):
            assert func.attrs["tirx.is_scheduled"], gv.name_hint
    data = np.random.default_rng(1).standard_normal(tiny.INPUT_SHAPE, dtype=np.float32)
    expected = onnxruntime_output(tiny.build(), data)
    actual = relax.VirtualMachine(build_executable(scheduled, HOST), tvm.cpu())["main"](
        tvm.runtime.tensor(data)
    ).numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * np.abs(expected).max())


def test_a_tuned_record_outranks_the_default(tiny_defaults: dict[str, TaskSchedule | None]) -> None:
    """The default is only a fallback: the database returns a measured record first."""
    name, default = next((name, s) for name, s in tiny_defaults.items() if "conv2d" in name)
    database = ms.database.MemoryDatabase()
    commit_schedules(database, {name: default}, HOST)
    tuned = ms.database.TuningRecord(
        default.trace, database.commit_workload(default.workload), run_secs=[1e-4], target=HOST
    )
    database.commit_tuning_record(tuned)
    (best,) = database.get_top_k(database.commit_workload(default.workload), 1)
    assert [float(s) for s in best.run_secs] == [1e-4]


def test_elementwise_and_pooling_tasks_keep_tvm_lowering(tiny_defaults: dict[str, TaskSchedule | None]) -> None:
    for name in ("reshape", "max_pool2d", "mean"):
        assert tiny_defaults[name] is None, name


def test_vector_width_and_registers_come_from_the_target_cpu() -> None:
    def cpu(mcpu: str, mtriple: str = "x86_64-linux-gnu") -> tvm.target.Target:
        return tvm.target.Target({"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu, "num-cores": 4})

    assert (cpu_traits(cpu("skylake-avx512")).lanes, cpu_traits(cpu("skylake-avx512")).registers) == (16, 32)
    assert (cpu_traits(cpu("haswell")).lanes, cpu_traits(cpu("haswell")).registers) == (8, 16)
    assert (cpu_traits(RK3399).lanes, cpu_traits(RK3399).registers, cpu_traits(RK3399).cores) == (4, 32, 2)


def test_aarch64_target_gets_a_default_that_compiles(tiny_fused: tvm.IRModule) -> None:
    name = next(gv.name_hint for gv in tiny_fused.functions if "conv2d" in gv.name_hint)
    schedule = default_schedule(tiny_fused[name], RK3399, name)
    assert schedule is not None
    tvm.compile(schedule.mod, target=RK3399)  # lowers and generates aarch64 code


# Transfer: a record of the same operator at another shape, replayed with adapted tiles.


def test_adapted_tiles_multiply_to_the_new_extent_and_keep_the_inner_factors_close() -> None:
    assert adapt_tile((1, 4, 1, 16), 56) == [1, 4, 1, 14]
    assert adapt_tile((8, 4, 2, 1), 64) == [8, 4, 2, 1]
    assert adapt_tile((2, 8, 2), 13) == [1, 13, 1]
    assert adapt_tile((512, 1), 3) == [3, 1]


def conv_donor(model: onnx.ModelProto, shape: tuple[int, ...], target: tvm.target.Target = HOST):
    """A conv's schedule committed as if tuning had measured it, plus the database holding it."""
    fused = fused_module(model, shape)
    name = next(gv.name_hint for gv in fused.functions if "conv2d" in gv.name_hint)
    donor = default_schedule(fused[name], HOST, name)
    database = ms.database.MemoryDatabase()
    record = ms.database.TuningRecord(
        donor.trace, database.commit_workload(donor.workload), run_secs=[1e-4], target=target
    )
    database.commit_tuning_record(record)
    return database


@pytest.mark.parametrize(
    "case", ["3x3 stride 2, odd size", "7x7 output", "1x1 with residual add"], ids=lambda case: case
)
def test_transferred_schedule_from_another_conv_shape_matches_onnxruntime(case: str) -> None:
    donor_db = conv_donor(*conv_case(16, 20, 24, 3, epilogue="none"))
    model, shape = CONV_CASES[case]
    fused = fused_module(model, shape)
    name = next(gv.name_hint for gv in fused.functions if "conv2d" in gv.name_hint)
    usable = donors(donor_db.get_all_tuning_records(), HOST)
    (transferred, *_) = transferred_schedules(fused[name], HOST, usable, name)
    assert transferred.kind == "transferred"
    assert transferred.rule.startswith("record conv2d_nchw 1x24x20x20x16x3x3")
    scheduled = apply_schedules(fused, {name: transferred}, HOST)
    data = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    expected = onnxruntime_output(model, data)
    actual = relax.VirtualMachine(build_executable(scheduled, HOST), tvm.cpu())["main"](
        tvm.runtime.tensor(data)
    ).numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * np.abs(expected).max())


def test_records_of_another_cpu_or_operator_are_not_transferred(tiny_fused: tvm.IRModule) -> None:
    other_cpu = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2})
    assert donors(conv_donor(*conv_case(16, 20, 24, 3), target=other_cpu).get_all_tuning_records(), HOST) == []
    same_cpu = donors(conv_donor(*conv_case(16, 20, 24, 3)).get_all_tuning_records(), HOST)
    assert len(same_cpu) == 1
    assert transferred_schedules(tiny_fused["fused_matmul_add3"], HOST, same_cpu, "fused_matmul_add3") == []


def test_coverage_names_tuned_transferred_default_and_unscheduled_tasks(tiny_fused: tvm.IRModule) -> None:
    """One conv of tiny has a (pretend) tuned record; every other tiled task gets a fallback."""
    tuned_name = "fused_conv2d_add_relu"
    tuned = ms.database.MemoryDatabase()
    own = default_schedule(tiny_fused[tuned_name], HOST, tuned_name)
    tuned.commit_tuning_record(
        ms.database.TuningRecord(own.trace, tuned.commit_workload(own.workload), run_secs=[1e-5], target=HOST)
    )
    database, coverage = fallback_database(tiny_fused, HOST, tuned)
    kinds = {row.task: row.kind for row in coverage}
    assert kinds[tuned_name] == "tuned"
    assert kinds["reshape"] == kinds["max_pool2d"] == kinds["mean"] == "unscheduled"
    for name in ("fused_conv2d3_add1_add2", "fused_matmul_add3"):
        assert kinds[name] in ("transferred", "default")
    assert all(row.source for row in coverage if row.kind in ("transferred", "default"))
    with HOST, database:
        scheduled = relax.transform.MetaScheduleApplyDatabase()(tiny_fused)
    for row in coverage:
        func = scheduled[row.task]
        assert bool(func.attrs and func.attrs.get("tirx.is_scheduled")) == (row.kind != "unscheduled"), row


def test_neon_default_schedules_run_correctly_on_the_emulated_rk3399(tmp_path: Path) -> None:
    """The aarch64 defaults are not only compiled: tiny runs with them under qemu (cortex-a72)."""
    fused = fused_module(tiny.build(), tiny.INPUT_SHAPE, RK3399)
    scheduled = apply_schedules(fused, default_schedules(fused, RK3399), RK3399)
    library = tmp_path / "model.so"
    build_executable(scheduled, RK3399).export_library(
        str(library), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++")
    )
    (tmp_path / "params.bin").write_bytes(tvm.runtime.save_param_dict({}))  # weights are bound constants
    data = np.random.default_rng(1).standard_normal(tiny.INPUT_SHAPE, dtype=np.float32)
    data.tofile(tmp_path / "input.bin")
    runner = runtime_bundle("aarch64").files["tvm_runner"]
    shape = ",".join(map(str, tiny.INPUT_SHAPE))
    result = subprocess.run(
        [
            *EMULATED_RK3399,
            str(runner),
            "--lib",
            "model.so",
            "--params",
            "params.bin",
            "--input",
            "input.bin",
            "--input-shape",
            shape,
            "--output",
            "out.bin",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    expected = onnxruntime_output(tiny.build(), data)
    actual = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * np.abs(expected).max())
