"""A small ONNX graph builder with seeded random weights, so the zoo needs no downloaded weights.

Weights use He-style scaling (variance gain / fan_in, gain 2 where a rectifier follows and 1 where
none does) so activations keep roughly unit scale through any depth: a model whose output vanished
to zero or overflowed would hide numerical bugs in the compiled code instead of exposing them.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; newer readers all accept it


@dataclass(frozen=True)
class Tensor:
    """A value in the graph under construction; `channels` lets each layer size its weights."""

    name: str
    channels: int


class GraphBuilder:
    """Appends layers to one ONNX graph; every call returns the layer's output tensor."""

    def __init__(self, seed: int, input_name: str, input_shape: tuple[int, ...]) -> None:
        self._rng = np.random.default_rng(seed)
        self._model = onnx.ModelProto()
        self._graph = self._model.graph
        self._graph.input.append(helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape)))
        self._constants: set[str] = set()
        self._count = 0
        self.input = Tensor(input_name, input_shape[1])

    def _name(self, op: str) -> str:
        """Numbered names keep the graph readable and identical from run to run."""
        self._count += 1
        return f"{op.lower()}_{self._count}"

    def _weight(self, name: str, values: np.ndarray) -> str:
        """Adds an initializer in place: VGG-16 holds 553 MB, and helper.make_graph would copy it twice."""
        tensor = self._graph.initializer.add()
        tensor.name = name
        tensor.data_type = TensorProto.FLOAT
        tensor.dims.extend(values.shape)
        tensor.raw_data = values.astype(np.float32, copy=False).tobytes()
        return name

    def _he_uniform(self, shape: tuple[int, ...], fan_in: int, gain: float) -> np.ndarray:
        """Uniform with variance gain / fan_in; uniform because it is several times faster to draw than normal."""
        bound = np.float32((3.0 * gain / fan_in) ** 0.5)
        values = self._rng.random(shape, dtype=np.float32)
        values *= 2 * bound
        values -= bound
        return values

    def _node(self, op: str, inputs: list[str], channels: int, **attrs: object) -> Tensor:
        name = self._name(op)
        self._graph.node.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return Tensor(name, channels)

    def conv(
        self,
        x: Tensor,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        group: int = 1,
        bias: bool = True,
        gain: float = 2.0,
    ) -> Tensor:
        """Square conv with 'same' padding (kernel // 2); group == channels makes it depthwise."""
        name = self._name("conv")
        fan_in = x.channels // group * kernel * kernel
        shape = (out_channels, x.channels // group, kernel, kernel)
        inputs = [x.name, self._weight(f"{name}.weight", self._he_uniform(shape, fan_in, gain))]
        if bias:
            inputs.append(self._weight(f"{name}.bias", self._rng.normal(0.0, 0.01, out_channels)))
        pad = kernel // 2
        self._graph.node.append(
            helper.make_node(
                "Conv",
                inputs,
                [name],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=group,
            )
        )
        return Tensor(name, out_channels)

    def batchnorm(self, x: Tensor) -> Tensor:
        """Inference-mode BN with non-trivial statistics, so folding it is actually exercised."""
        name = self._name("bn")
        c = x.channels
        params = {
            "scale": self._rng.uniform(0.8, 1.2, c),
            "bias": self._rng.normal(0.0, 0.05, c),
            "mean": self._rng.normal(0.0, 0.05, c),
            "var": self._rng.uniform(0.8, 1.2, c),
        }
        inputs = [x.name] + [self._weight(f"{name}.{k}", v) for k, v in params.items()]
        self._graph.node.append(helper.make_node("BatchNormalization", inputs, [name], name=name, epsilon=1e-5))
        return Tensor(name, c)

    def relu(self, x: Tensor) -> Tensor:
        return self._node("Relu", [x.name], x.channels)

    def relu6(self, x: Tensor) -> Tensor:
        """ReLU6 as Clip(0, 6); since opset 11 the bounds are inputs.

        The bounds come from Constant nodes, not initializers: with keep_params_in_input TVM's importer
        turns every initializer into a runtime parameter, so the bounds could not be folded at compile time.
        """
        low = self._scalar_constant("clip_min", 0.0)
        high = self._scalar_constant("clip_max", 6.0)
        return self._node("Clip", [x.name, low, high], x.channels)

    def _scalar_constant(self, name: str, value: float) -> str:
        """One Constant node per value, emitted before its first use so the graph stays in order."""
        if name not in self._constants:
            self._constants.add(name)
            tensor = numpy_helper.from_array(np.array(value, dtype=np.float32), name)
            self._graph.node.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return self._node("Add", [a.name, b.name], a.channels)

    def maxpool(self, x: Tensor, kernel: int, stride: int, pad: int = 0) -> Tensor:
        return self._node(
            "MaxPool", [x.name], x.channels, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4
        )

    def global_avg_pool(self, x: Tensor) -> Tensor:
        return self._node("GlobalAveragePool", [x.name], x.channels)

    def flatten(self, x: Tensor, features: int) -> Tensor:
        """`features` is the flattened size (channels x height x width), which the caller knows."""
        return self._node("Flatten", [x.name], features, axis=1)

    def gemm(self, x: Tensor, out_features: int, gain: float = 2.0) -> Tensor:
        """Dense layer y = x W^T + b, weights stored [out, in] as PyTorch exports them."""
        name = self._name("gemm")
        w = self._weight(f"{name}.weight", self._he_uniform((out_features, x.channels), x.channels, gain))
        b = self._weight(f"{name}.bias", self._rng.normal(0.0, 0.01, out_features))
        self._graph.node.append(helper.make_node("Gemm", [x.name, w, b], [name], name=name, transB=1))
        return Tensor(name, out_features)

    def finish(self, graph_name: str, output: Tensor) -> onnx.ModelProto:
        """Completes the model with a fixed opset, IR version and producer, so its bytes are stable."""
        self._graph.name = graph_name
        self._graph.output.append(helper.make_tensor_value_info(output.name, TensorProto.FLOAT, [1, output.channels]))
        self._model.ir_version = IR_VERSION
        self._model.producer_name = "pipeline-model-zoo"
        self._model.opset_import.append(helper.make_opsetid("", OPSET))
        return self._model
