"""The model zoo test: the real architectures shipped inside the installed onnx wheel build with the
pipeline's real build step, deploy on `local` and match onnxruntime.

The files as shipped (IR version 3, weights listed as graph inputs) all have equal weights, so their
agreement with onnxruntime shows that they run, not that their numerics are right. Each model is
therefore also deployed with random convolution and dense weights (models/light_zoo.py), checked on a
non-uniform output. To keep the suite's time reasonable every model is built once in that form; the
files as shipped are deployed too where their build is quick (the large ones add minutes each and
nothing the random-weight build does not already cover). benchmarks/onnx_zoo.py times all of them.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest

from models.light_zoo import LIGHT_MODELS, light_model_path, with_random_weights
from pipeline.board.sshd import SshEndpoint
from pipeline.deploy.check import reference_output
from pipeline.deploy.flow import DeployOutcome, deploy_once
from pipeline.deploy.inputs import make_input

pytestmark = pytest.mark.board

AS_SHIPPED = ("squeezenet", "bvlc_alexnet", "zfnet512")
SEED = 0


def deploy(path: Path, results: Path) -> DeployOutcome:
    return deploy_once("local", str(path), runs=2, warmup=0, results_dir=results)


def assert_matches_onnxruntime(outcome: DeployOutcome) -> None:
    check = outcome.result.check
    assert check.passed, check
    assert check.same_top1
    assert tuple(outcome.result.build.input_shape) == (1, 3, 224, 224)


def test_the_wheel_ships_the_nine_models_in_ir_version_3_form() -> None:
    for name in LIGHT_MODELS:
        model = onnx.load(light_model_path(name))
        weights = {tensor.name for tensor in model.graph.initializer}
        assert model.ir_version == 3
        assert weights and weights <= {value.name for value in model.graph.input}


@pytest.mark.parametrize("name", AS_SHIPPED)
def test_zoo_model_as_shipped_deploys_and_matches_onnxruntime(
    embedded_endpoint: SshEndpoint, tmp_path: Path, name: str
) -> None:
    assert_matches_onnxruntime(deploy(light_model_path(name), tmp_path))


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_zoo_model_with_random_weights_deploys_and_matches_onnxruntime(
    embedded_endpoint: SshEndpoint, tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"{name}_random.onnx"
    onnx.save(with_random_weights(onnx.load(light_model_path(name)), SEED), path)
    outcome = deploy(path, tmp_path / "results")
    assert_matches_onnxruntime(outcome)
    # The same input the deploy made: its reference must be spread out, or agreement proves little.
    data, _ = make_input((1, 3, 224, 224))
    reference = reference_output(path, outcome.result.build.input_name, data)
    assert np.ptp(reference) > 0.1 * np.max(np.abs(reference))


def test_random_weights_replace_only_conv_and_dense_weights() -> None:
    original = onnx.load(light_model_path("resnet50"))
    copy = with_random_weights(original, SEED)
    onnx.checker.check_model(copy)
    made = {node.output[0]: node for node in original.graph.node if node.op_type == "ConstantOfShape"}
    replaced = set(made) - {node.output[0] for node in copy.graph.node if node.op_type == "ConstantOfShape"}
    consumers = {node.op_type for node in original.graph.node for name in node.input[1:2] if name in replaced}
    assert consumers == {"Conv", "Gemm"}
    assert len(replaced) == 54  # 53 convolutions and the classifier
    kept = {name for node in original.graph.node if node.op_type == "BatchNormalization" for name in node.input[1:]}
    assert kept and not kept & replaced
    assert copy.ir_version == 3
