"""Winograd F(m x m, 3x3): the rewrite computes the direct conv's output, takes only the convs it is
meant for, can be switched off per board, shows in the coverage table, and deploys."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.graph import GraphBuilder
from pipeline.board.profile import load_board
from pipeline.compiler import builder
from pipeline.compiler.coverage import coverage_lines
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.compiler.rewrites import winograd
from pipeline.paths import ROOT

INVOKE = [sys.executable, "-m", "invoke"]


def conv_module(
    shape: tuple[int, int, int, int],
    out_channels: int,
    kernel: int = 3,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    padding: int = 1,
    inputs: int = 1,
) -> object:
    """main(x, w, b) = relu(conv2d(x, w) + b); the parameters after the first `inputs` are weights."""
    from tvm import relax

    tensor = getattr(relax, "TensorType", None) or relax.TensorStructInfo
    builder_ = relax.BlockBuilder()
    x = relax.Var("x", tensor(shape, "float32"))
    w = relax.Var("w", tensor((out_channels, shape[1] // groups, kernel, kernel), "float32"))
    b = relax.Var("b", tensor((1, out_channels, 1, 1), "float32"))
    with builder_.function("main", [x, w, b], attrs={"num_input": inputs}):
        with builder_.dataflow():
            conv = builder_.emit(
                relax.op.nn.conv2d(x, w, strides=stride, padding=padding, dilation=dilation, groups=groups)
            )
            out = builder_.emit_output(relax.op.nn.relu(relax.op.add(conv, b)))
        builder_.emit_func_output(out)
    return builder_.get()


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_3x3_correlation_exactly(m: int) -> None:
    t = winograd.transforms(m)
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((t.n, t.n)), rng.standard_normal((3, 3))
    y = t.a_t @ ((t.g @ g @ t.g.T) * (t.b_t @ d @ t.b_t.T)) @ t.a_t.T
    direct = np.array([[np.sum(d[i : i + 3, j : j + 3] * g) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, direct, atol=1e-12)
    assert np.array_equal(t.b_t, np.round(t.b_t))  # the runtime transform multiplies by small integers only


@pytest.mark.parametrize(
    ("shape", "out_channels"),
    [((1, 32, 10, 9), 48), ((2, 32, 8, 8), 32), ((1, 64, 7, 7), 64), ((1, 32, 2, 2), 32)],
    ids=["odd-size", "batch2", "7x7", "2x2-tile"],
)
def test_rewritten_conv_matches_the_direct_conv_with_the_builds_schedules(
    shape: tuple[int, int, int, int], out_channels: int
) -> None:
    """The whole build path (weight lifting, fusion, the stages' schedules, lowering) on float32 random data."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from pipeline.compiler import passes
    from pipeline.compiler.schedules import tasks as schedule_tasks
    from pipeline.compiler.schedules.schedule_transfer import fallback_database

    mod = conv_module(shape, out_channels)
    rewritten, done = winograd.rewrite(mod)
    assert len(done) == 1 and done[0].chosen  # no measurement: the rule takes every eligible conv
    rng = np.random.default_rng(0)
    data = rng.standard_normal(shape).astype("float32")
    weight = rng.standard_normal((out_channels, shape[1], 3, 3)).astype("float32")
    bias = rng.standard_normal((1, out_channels, 1, 1)).astype("float32")
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    outputs, kinds = [], []
    for module in (mod, rewritten):
        lifted, params = passes.lift_weight_transforms(
            module, {"main": [tvm.runtime.tensor(weight), tvm.runtime.tensor(bias)]}
        )
        fused = passes.fuse(lifted, target)
        database, choices = fallback_database(fused, target, ms.database.MemoryDatabase())
        kinds.append({choice.task: choice.kind for choice in choices})
        machine = relax.VirtualMachine(
            passes.build_executable(schedule_tasks.apply_database(fused, database, target), target), tvm.cpu()
        )
        outputs.append(machine["main"](tvm.runtime.tensor(data), *params["main"]).numpy())
    direct, fast = outputs
    assert np.abs(fast - direct).max() <= 1e-4 * np.abs(direct).max()
    assert sorted(kinds[1].values()) == ["winograd"] * 3  # input, GEMM, output(+epilogue): none naive
    assert done[0].plan.m == (2 if shape[2] == 2 else 4)


@pytest.mark.parametrize(
    "conv",
    [
        {"stride": 2},
        {"kernel": 1, "padding": 0},
        {"groups": 64},
        {"dilation": 2, "padding": 2},
        {"channels": 3},
    ],
    ids=["stride2", "1x1", "depthwise", "dilated", "3-channel-stem"],
)
def test_ineligible_convs_are_left_alone(conv: dict[str, int]) -> None:
    channels = conv.pop("channels", 64)
    mod = conv_module((1, channels, 16, 16), 64, **conv)
    rewritten, done = winograd.rewrite(mod)
    assert done == []
    script = rewritten["main"].script()
    assert "R.nn.conv2d" in script and "winograd" not in script


def test_a_conv_whose_weight_is_a_run_time_input_stays_direct() -> None:
    """Its weight transform could not be lifted to build time: it would run on every inference."""
    rewritten, done = winograd.rewrite(conv_module((1, 64, 16, 16), 64, inputs=2))
    assert done == [] and "winograd" not in rewritten["main"].script()


def test_layer_error_is_float32_rounding_on_the_layers_weights() -> None:
    plan = winograd.Plan(winograd.ConvShape(1, 64, 8, 8, 64, (1, 1, 1, 1)), 4)
    weight = np.random.default_rng(1).standard_normal((64, 64, 3, 3)).astype(np.float32)
    assert 1e-8 < winograd.layer_error(plan, weight) < 1e-4


def small_cnn(path: Path) -> Path:
    """Two eligible 3x3 convs (32 channels), a 3-channel stem and a stride-2 conv that stay direct."""
    g = GraphBuilder(7, "data", (1, 3, 16, 16))
    x = g.relu(g.conv(g.input, 32, 3))
    x = g.relu(g.conv(x, 32, 3))
    y = g.relu(g.conv(x, 32, 3))
    x = g.add(y, x)
    x = g.relu(g.conv(x, 32, 3, stride=2))
    x = g.flatten(g.global_avg_pool(x), features=x.channels)
    onnx.save(g.finish("small_cnn", g.gemm(x, 10, gain=1.0)), path)
    return path


@pytest.mark.board
def test_winograd_false_leaves_every_conv_direct_and_is_another_build(tmp_path: Path) -> None:
    spec = resolve_model(str(small_cnn(tmp_path / "small_cnn.onnx")))
    on = load_board("local")
    off = on.model_copy(update={"winograd": False})
    assert on.winograd is True  # the default
    assert builder.build_key(spec, on) != builder.build_key(spec, off)
    artifact = builder.build(spec, off, cache_dir=tmp_path / "cache", records_dir=tmp_path / "records")
    assert artifact.winograd.enabled is False and artifact.winograd.layers == ()
    assert not [t for t in artifact.coverage.tasks if "winograd" in t.operator or t.schedule == "winograd"]
    assert [t.operator for t in artifact.coverage.tasks if t.heavy].count("conv2d") == 4


@pytest.mark.board
def test_coverage_table_names_the_winograd_stages_and_the_build_reports_them(tmp_path: Path) -> None:
    """Built for the ARM board, where the rule decides (nothing is timed): every eligible conv is rewritten."""
    spec = resolve_model(str(small_cnn(tmp_path / "small_cnn.onnx")))
    board = load_board("rk3399-emu")
    artifact = builder.build(spec, board, cache_dir=tmp_path / "cache", records_dir=tmp_path / "records")
    report = artifact.winograd
    assert [layer.name for layer in report.layers] == ["conv2d #2", "conv2d #3"]
    assert report.convs == 4 and report.kept_direct == ()
    assert all(layer.direct_ms == 0 for layer in report.layers)  # by rule
    assert report.multiply_adds_after < report.multiply_adds_before
    assert max(layer.error for layer in report.layers) < 1e-4
    stages = {t.operator: t for t in artifact.coverage.tasks if t.operator.startswith("conv2d_winograd")}
    assert set(stages) == {"conv2d_winograd_input", "conv2d_winograd_gemm", "conv2d_winograd_output"}
    assert all(t.schedule == "winograd" and t.heavy for t in stages.values())
    # U packed in blocks of two NEON vectors of output channels (4 x 8)
    assert stages["conv2d_winograd_gemm"].workload.startswith("conv2d_winograd_gemm 36x16x32 * 36x4x32x8 -> 36x16x32")
    assert not artifact.coverage.naive
    table = "\n".join(coverage_lines(artifact.coverage) + report.lines())
    assert "WINOGRAD" in table
    assert "Winograd: 2 of 4 convs as F(4x4, 3x3)" in table
    assert "worst per-layer error" in table
    assert json.loads((artifact.directory / "build.json").read_text())["winograd"]["layers"][0]["tile"] == 4


def deploy(board: str, model: Path, results: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINE_RESULTS": str(results)}
    command = [*INVOKE, "deploy", "--board", board, "--model", str(model), "--runs", "2", "--warmup", "1"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_small_model_deploys_on_local_with_winograd_and_matches_onnxruntime(
    embedded_endpoint: object, tmp_path: Path
) -> None:
    """On local each eligible conv is timed both ways at build time: whichever runs, the output matches,
    and the result's coverage lists three Winograd stages for each conv the report says runs Winograd."""
    proc = deploy("local", small_cnn(tmp_path / "small_cnn.onnx"), tmp_path / "results")
    assert proc.returncode == 0, proc.stderr
    assert "output matches onnxruntime" in proc.stdout
    text = proc.stdout + proc.stderr  # the build report goes beside the coverage table
    runs_winograd = "Winograd: 2 of 4 convs as F(" in text  # both eligible convs have one shape
    assert runs_winograd or "kept direct, measured slower: conv2d #2" in text
    [result] = (tmp_path / "results").rglob("*.json")
    entries = json.loads(result.read_text())["coverage"]
    gemms = {e["task"] for e in entries if e["schedule"] == "winograd" and e["operator"] == "conv2d_winograd_gemm"}
    assert len(gemms) == (1 if runs_winograd else 0)
    assert not [e for e in entries if e["schedule"] == "naive"]


def test_winograd_build_for_the_emulated_rk3399_runs_and_matches_onnxruntime(
    embedded_endpoint: object, tmp_path: Path
) -> None:
    """aarch64 under qemu: the rule rewrites both eligible convs, and the output still matches."""
    proc = deploy("rk3399-emu", small_cnn(tmp_path / "small_cnn.onnx"), tmp_path / "results")
    assert proc.returncode == 0, proc.stderr
    assert "output matches onnxruntime" in proc.stdout
    assert "Winograd: 2 of 4 convs as F(4x4, 3x3)" in proc.stdout + proc.stderr


def test_the_build_report_says_what_the_rewrite_did() -> None:
    layer = winograd.WinogradLayer("conv2d #2", 4, "1x64x56x56 * 64x64x3x3", 115_605_504, 28_901_376, 3e-6, 1.2, 0.6)
    slower = winograd.WinogradLayer("conv2d #5", 4, "1x64x224x224 * 64x64x3x3", 1, 1, 0.0, 19.2, 20.0)
    report = winograd.WinogradReport(True, 3, (layer,), (slower,), 1_500_000_000, 1_413_295_872)
    lines = report.lines()
    assert lines[0] == "Winograd: 1 of 3 convs as F(4x4, 3x3); multiply-adds 1.50 G -> 1.41 G (1.06x fewer)"
    assert "worst per-layer error 3.0e-06 relative (conv2d #2, 1x64x56x56 * 64x64x3x3" in lines[1]
    assert lines[2] == (
        "Winograd: kept direct, measured slower: conv2d #5 1x64x224x224 * 64x64x3x3: 20.00 ms Winograd vs 19.20 ms direct"
    )
    assert winograd.WinogradReport.off(5).lines() == [
        "Winograd: off in the board profile (winograd: false); every conv runs direct"
    ]
