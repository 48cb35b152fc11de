"""The real architectures the `onnx` wheel ships as backend test data, and copies with random weights.

`onnx/backend/test/data/light/` holds nine classic ImageNet models in the form the ONNX model zoo
published them: IR version 3 (every weight tensor is also listed as a graph input), opset 9, batch 1,
224x224. Their weights are produced by `ConstantOfShape` nodes and all equal, so every channel computes
the same thing and an output that agrees with onnxruntime proves the model runs, not that its numerics
are right. `with_random_weights` replaces the convolution and dense weights with seeded random values.
"""

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_MODELS: tuple[str, ...] = (
    "squeezenet",
    "bvlc_alexnet",
    "zfnet512",
    "resnet50",
    "shufflenet",
    "inception_v1",
    "inception_v2",
    "densenet121",
    "vgg19",
)


def light_model_path(name: str) -> Path:
    """The model file inside the installed onnx package."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


# The layers whose weights are replaced: their weight is the second input. A dense layer whose weight
# rows are all equal makes every logit equal, so convolutions alone would leave the output uniform.
WEIGHTED_OPS = ("Conv", "Gemm")


def with_random_weights(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """A copy whose convolution and dense weights are random (He-scaled normal, seeded); biases and
    batch-norm parameters stay as they were, so batch-norm variances stay positive. Each replaced
    weight becomes an initializer in place of the `ConstantOfShape` node that made it (and the shape
    tensor that fed the node goes); the graph keeps its IR version 3 form: the new initializers are
    listed as graph inputs too."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    rng = np.random.default_rng(seed)
    initializers = {t.name: t for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    weights = {_source(node.input[1], producers) for node in graph.node if node.op_type in WEIGHTED_OPS}
    for name in sorted(w for w in weights if w in producers and producers[w].op_type == "ConstantOfShape"):
        producer = producers[name]
        shape_tensor = initializers[producer.input[0]]
        shape = tuple(int(d) for d in numpy_helper.to_array(shape_tensor))
        fan_in = math.prod(shape[1:])
        values = rng.standard_normal(shape).astype(np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        graph.node.remove(producer)
        graph.initializer.remove(shape_tensor)
        graph.initializer.append(numpy_helper.from_array(values, name))
        (listed,) = [value for value in graph.input if value.name == shape_tensor.name]
        graph.input.remove(listed)
        graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    return copy


def _source(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The tensor a weight is reshaped from (Inception v1 reshapes its classifier's weight)."""
    while name in producers and producers[name].op_type == "Reshape":
        name = producers[name].input[0]
    return name
