"""Strided convs channels-last: which convs the rewrite takes, that the ops after them follow into
NHWC, that the build still computes the model, that the profile can switch it off, and the default
schedule rules it relies on (input channels as the outer reduction, a register tile of columns x
channel vectors)."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax, te, topi
from tvm.relax.frontend.onnx import from_onnx
from tvm.s_tir import Schedule

from models.graph import GraphBuilder
from models.light_zoo import light_model_path
from pipeline.board.profile import load_board
from pipeline.compiler import builder, lowering
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.compiler.rewrites import channels_last
from pipeline.compiler.schedules import default_schedules
from pipeline.deploy.check import compare, reference_output


def strided_cnn(path: Path) -> Path:
    """A 7x7 stride-2 stem with batch-norm, max-pooling, a 3x3 stride-2 conv, a 1x1 stride-2 shortcut
    and a 3x3 stride-1 conv: the first two are the rewrite's, the others stay NCHW."""
    g = GraphBuilder(11, "data", (1, 3, 32, 32))
    x = g.maxpool(g.relu(g.batchnorm(g.conv(g.input, 16, 7, stride=2, bias=False))), kernel=2, stride=2)
    y = g.relu(g.conv(x, 24, 3, stride=2))
    x = g.add(g.conv(x, 24, 1, stride=2), y)
    x = g.relu(g.conv(x, 24, 3))
    x = g.flatten(g.global_avg_pool(x), features=x.channels)
    onnx.save(g.finish("strided_cnn", g.gemm(x, 10, gain=1.0)), path)
    return path


def convs(mod: tvm.IRModule) -> list[tuple[str, str, int]]:
    """(data layout, kernel layout, stride) of every conv2d in the module's main function, in order."""
    found = []

    def visit(expr: object) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d":
            found.append((str(expr.attrs.data_layout), str(expr.attrs.kernel_layout), int(expr.attrs.strides[0])))

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> object:
    return resolve_model(str(strided_cnn(tmp_path_factory.mktemp("model") / "strided_cnn.onnx")))


def test_convs_with_a_stride_and_a_kernel_run_nhwc_and_the_others_stay_nchw(model: object) -> None:
    mod, _ = lowering.import_model(model, channels_last=True)
    assert convs(mod) == [("NHWC", "HWIO", 2), ("NHWC", "HWIO", 2), ("NCHW", "OIHW", 2), ("NCHW", "OIHW", 1)]
    script = mod["main"].script()
    # batch-norm, ReLU and max-pooling follow the stem into NHWC: one transpose back before the next NCHW op
    assert 'layout="NHWC"' in script  # the max-pooling
    assert script.count("R.permute_dims") >= 3  # the input, and back to NCHW after each rewritten conv's ops


def test_the_rewrite_counts_what_it_took_and_leaves_a_module_without_such_convs_alone(model: object) -> None:
    mod, params, _, report = lowering.import_model_reporting(model, False, None, True)
    assert report == channels_last.ChannelsLastReport(True, convs=2)
    assert report.lines() == ["Channels-last: 2 strided convs run NHWC"]
    g = GraphBuilder(3, "data", (1, 3, 16, 16))  # 27 multiply-adds per output: bound by its output
    x = g.relu(g.conv(g.conv(g.conv(g.input, 8, 3, stride=2), 8, 3), 8, 1, stride=2))
    mod = from_onnx(g.finish("plain", x))
    rewritten, report = channels_last.rewrite(mod)
    assert report.convs == 0 and report.lines() == [] and rewritten is mod


def test_a_model_whose_layout_tvm_cannot_convert_stays_nchw_and_the_report_says_why() -> None:
    """ConvertLayout rejects an op of the light zoo's ResNet-50 (a 5-D layout); the build goes on, NCHW."""
    model = resolve_model(str(light_model_path("resnet50")))
    mod, _, _, report = lowering.import_model_reporting(model, False, None, True)
    assert report.convs == 0 and "ConvertLayout failed" in report.failure
    assert "strided convs run NCHW" in report.lines()[0]
    assert {layout for layout, _, _ in convs(mod)} == {"NCHW"}


def test_dropout_is_gone_at_inference_so_the_layout_passes_through_it() -> None:
    """AlexNet's dropout returns an (output, mask) tuple that ConvertLayout could not pass."""
    model = resolve_model(str(light_model_path("bvlc_alexnet")))
    mod, _, _, report = lowering.import_model_reporting(model, False, None, True)
    assert report.convs == 1 and not report.failure
    assert "dropout" not in mod["main"].script()


@pytest.mark.board
def test_the_channels_last_build_computes_what_onnxruntime_does(model: object, tmp_path: Path) -> None:
    board = load_board("local")
    off = board.model_copy(update={"channels_last": False})
    assert board.channels_last is True  # the default
    assert builder.build_key(model, board) != builder.build_key(model, off)
    data = np.random.default_rng(0).standard_normal(model.input_shape, dtype=np.float32)
    expected = reference_output(model.path, model.input_name, data)
    operators = {}
    for name, profile in (("on", board), ("off", off)):
        artifact = builder.build(model, profile, cache_dir=tmp_path / name, records_dir=tmp_path / "records")
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.library)), tvm.cpu())
        params = tvm.runtime.load_param_dict_from_file(str(artifact.params))
        output = vm["main"](tvm.runtime.tensor(data), *(params[p] for p in sorted(params))).numpy()
        assert compare(output, expected).passed, name
        assert not artifact.coverage.naive
        operators[name] = sorted(t.workload.split()[1] for t in artifact.coverage.tasks if t.operator == "conv2d")
    assert operators == {"on": ["NCHW", "NCHW", "NHWC", "NHWC"], "off": ["NCHW"] * 4}


def nhwc_conv_block(channels: int, size: int, out_channels: int, kernel: int, stride: int) -> object:
    x = te.placeholder((1, size, size, channels), name="x")
    w = te.placeholder((kernel, kernel, channels, out_channels), name="w")
    conv = topi.nn.conv(x, w, stride, kernel // 2, 1, 1, "NHWC", "HWIO")
    sch = Schedule(tvm.IRModule({"main": te.create_prim_func([x, w, conv])}))
    return sch.get(sch.get_child_blocks(sch.get_sblock("root"))[-1])


def test_input_channels_are_the_outer_reduction_whatever_their_position_and_large_kernels_split() -> None:
    """NHWC reduces over (kernel row, kernel column, channel): the channel loop goes outside the
    register tile, the taps inside; a 7x7 kernel keeps only its columns inside."""
    block = nhwc_conv_block(64, 16, 64, 3, 2)
    reductions = [i for i, v in enumerate(block.iter_vars) if int(v.iter_type) != 0]
    spatial = [i for i in range(len(block.iter_vars)) if i not in reductions]
    assert default_schedules._outer_reductions(block, spatial) == {reductions[-1]}
    stem = nhwc_conv_block(3, 32, 16, 7, 2)
    assert default_schedules._outer_reductions(stem, spatial) == {reductions[0], reductions[-1]}
    assert default_schedules._channels_innermost(block, spatial)


@pytest.mark.parametrize(
    ("width", "channels", "tile"),
    [(112, 64, (4, 4)), (7, 512, (7, 2)), (14, 256, (7, 2)), (28, 128, (4, 4))],
)
def test_the_register_tile_of_an_nhwc_conv_loads_the_fewest_values_per_multiply_add(
    width: int, channels: int, tile: tuple[int, int]
) -> None:
    plan = default_schedules._channels_last_plan([1, width, width, channels], 16, 16, 8)
    assert (plan[2][2], plan[3][2]) == tile
    assert plan[3][3] == 16  # one vector of output channels innermost
    assert [s[0] * s[1] * s[2] * s[3] for s in plan] == [1, width, width, channels]
    chunks = [s[0] for s in plan]
    assert np.prod(chunks) == 8
    assert chunks[3] == min(8, channels // 16 // tile[1])  # parallel over output channels first
