"""Any ONNX file that onnxruntime runs and TVM's Relax frontend imports deploys: weights listed as graph
inputs (IR version 3, PyTorch's keep_initializers_as_inputs), weights in external data files, opsets
from 7 to the newest the installed onnx knows, symbolic input dimensions fixed with --input-shape.
Every one goes through the real build and a real deploy on `local`, checked against onnxruntime."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

from models import tiny
from pipeline.board.profile import load_board
from pipeline.board.sshd import SshEndpoint
from pipeline.compiler import builder, lowering
from pipeline.compiler.importer.model_file import ModelSpec, resolve_model
from pipeline.deploy.flow import DeployOutcome, deploy_once
from pipeline.errors import MAX_LINE, PipelineError
from pipeline.paths import ROOT

pytestmark = pytest.mark.board

NEWEST_OPSET = onnx.defs.onnx_opset_version()


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


def deploy(path: Path, results: Path, input_shape: tuple[int, ...] | None = None) -> DeployOutcome:
    return deploy_once("local", str(path), runs=2, warmup=0, input_shape=input_shape, results_dir=results)


def assert_matches_onnxruntime(outcome: DeployOutcome) -> None:
    check = outcome.result.check
    assert check.passed, check
    assert check.same_top1
    assert len(outcome.result.timings.runs_ms) == 2


def with_weights_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The IR version 3 form: every initializer is listed as a graph input as well."""
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer
    )
    model.ir_version = 3
    return model


def opset7_cnn() -> onnx.ModelProto:
    """A small CNN written at opset 7, IR version 3, with the classic operators in their old forms
    (Clip with min/max attributes, BatchNormalization with its `spatial` default, Softmax on 2-D)."""
    rng = np.random.default_rng(7)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    variance = numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "bn.var")
    weights = [weight("c1.w", 8, 3, 3, 3), weight("c1.b", 8), weight("bn.scale", 8), weight("bn.bias", 8)]
    weights += [weight("bn.mean", 8), variance, weight("c2.w", 8, 8, 1, 1), weight("fc.w", 10, 8), weight("fc.b", 10)]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"]),
        helper.make_node("Clip", ["bn"], ["relu6"], min=0.0, max=6.0),
        helper.make_node("MaxPool", ["relu6"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool", "c2.w"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["relu"]),
        helper.make_node("Add", ["relu", "pool"], ["sum"]),
        helper.make_node("GlobalAveragePool", ["sum"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"]),
    ]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph(nodes, "opset7_cnn", [image], [output], weights)
    return with_weights_as_inputs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)]))


def newest_opset_cnn() -> onnx.ModelProto:
    """The same CNN converted to the newest opset, in today's form: weights are not graph inputs."""
    model = version_converter.convert_version(opset7_cnn(), NEWEST_OPSET)
    weights = {t.name for t in model.graph.initializer}
    image = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(image)
    model.ir_version = onnx.IR_VERSION
    return model


def test_weights_listed_as_graph_inputs_deploy(embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path) -> None:
    """The issue's failure: TVM counted every weight twice (`expect a Tuple with 2n elements`)."""
    path = tmp_path / "tiny_ir3.onnx"
    onnx.save(with_weights_as_inputs(tiny.build()), path)
    assert_matches_onnxruntime(deploy(path, results))


@pytest.mark.parametrize(("make", "opset"), [(opset7_cnn, 7), (newest_opset_cnn, NEWEST_OPSET)], ids=["7", "newest"])
def test_opsets_from_7_to_the_newest_deploy(
    embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path, make: Callable[[], onnx.ModelProto], opset: int
) -> None:
    model = make()
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain == ""] == [opset]
    path = tmp_path / f"cnn_opset{opset}.onnx"
    onnx.save(model, path)
    assert_matches_onnxruntime(deploy(path, results))


def test_weights_in_an_external_data_file_deploy(embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path) -> None:
    path = tmp_path / "split.onnx"
    onnx.save(tiny.build(), path, save_as_external_data=True, location="split.data", size_threshold=0)
    assert path.stat().st_size < 4096  # the weights really are outside
    assert_matches_onnxruntime(deploy(path, results))


def test_external_data_bytes_are_part_of_the_build_key(tmp_path: Path) -> None:
    path = tmp_path / "split.onnx"
    onnx.save(tiny.build(), path, save_as_external_data=True, location="split.data", size_threshold=0)
    board = load_board("local")
    before = builder.build_key(resolve_model(str(path)), board)
    data = bytearray((tmp_path / "split.data").read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (tmp_path / "split.data").write_bytes(bytes(data))
    assert builder.build_key(resolve_model(str(path)), board) != before


def test_symbolic_batch_deploys_with_input_shape(embedded_endpoint: SshEndpoint, tmp_path: Path, results: Path) -> None:
    model = tiny.build()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "tiny_dynamic.onnx"
    onnx.save(model, path)
    env = {**os.environ, "PIPELINE_RESULTS": str(results)}
    command = [sys.executable, "-m", "invoke", "deploy", "--board", "local", "--model", str(path), "--runs", "2"]
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert "symbolic dimensions batch: [batch, 3, 32, 32]" in refused.stderr
    assert "--input-shape 1,3,32,32" in refused.stderr
    proc = subprocess.run(
        [*command, "--input-shape", "1,3,32,32"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "Model        tiny_dynamic  input 1x3x32x32" in proc.stdout
    assert "Check        output matches onnxruntime" in proc.stdout


def celu_model() -> onnx.ModelProto:
    """Celu runs in onnxruntime; TVM 0.27's ONNX frontend has no converter for it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Celu", ["x"], ["y"])], "celu", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_operator_is_named_on_one_line_with_the_log(tmp_path: Path) -> None:
    path = tmp_path / "celu.onnx"
    onnx.save(celu_model(), path)
    with pytest.raises(PipelineError) as err:
        lowering.import_model(resolve_model(str(path)))
    error = err.value
    assert error.problem == "TVM's ONNX frontend does not support operator Celu (opset 17) in celu.onnx"
    assert len(error.line()) <= MAX_LINE
    assert error.log is not None and str(error.log.name) in error.line()
    details = error.log.read_text()
    assert "Traceback" in details and "OpNotImplemented" in details


def test_a_failing_tvm_step_keeps_its_long_message_in_the_log_only(tmp_path: Path) -> None:
    """TVM prints whole parameter types into its messages (thousands of characters for a real model)."""
    dump = "R.Tensor((16, 3, 3, 3), dtype='float32'), " * 200
    error = lowering.import_error(
        ValueError(f"Check failed: (size == 2) is false: ErrorContext(param=model_params, annotation=T.Tuple({dump}))"),
        ModelSpec("m", tmp_path / "m.onnx", "x", (1,), "float32", False),
        tiny.build(),
    )
    assert len(error.line()) <= MAX_LINE
    assert error.problem.startswith("TVM's ONNX frontend could not convert m.onnx (opset 17): (size == 2) is false")
    assert "R.Tensor" not in error.problem
    assert error.log is not None and dump in error.log.read_text()


def test_a_failed_build_names_the_log_that_holds_tvms_traceback(tmp_path: Path) -> None:
    board = load_board("rk3399-emu").model_copy(update={"cross_compiler": "no-such-compiler-g++"})
    with pytest.raises(PipelineError) as err:
        builder.build(resolve_model("tiny"), board, cache_dir=tmp_path)
    error = err.value
    assert error.problem.startswith("TVM could not build tiny for aarch64-linux-gnu: ")
    assert len(error.line()) <= MAX_LINE
    assert error.log is not None and error.log.name in error.line()
    assert "Traceback" in error.log.read_text()
