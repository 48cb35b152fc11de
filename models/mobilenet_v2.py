"""MobileNetV2 (width 1.0): inverted residuals with depthwise 3x3 convs, ReLU6 and linear bottlenecks."""

import onnx

from models.graph import GraphBuilder, Tensor

INPUT_NAME = "data"
INPUT_SHAPE = (1, 3, 224, 224)
SEED = 2

# (expansion t, output channels c, repeats n, first stride s), table 2 of the paper.
BOTTLENECKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def _inverted_residual(g: GraphBuilder, x: Tensor, expansion: int, channels: int, stride: int) -> Tensor:
    """Expand (1x1), filter (depthwise 3x3), project linearly (1x1); residual when shapes match."""
    y = x
    if expansion != 1:
        y = g.relu6(g.batchnorm(g.conv(y, x.channels * expansion, 1, bias=False)))
    y = g.relu6(g.batchnorm(g.conv(y, y.channels, 3, stride, group=y.channels, bias=False)))
    y = g.batchnorm(g.conv(y, channels, 1, bias=False, gain=1.0))
    return g.add(y, x) if stride == 1 and x.channels == channels else y


def build() -> onnx.ModelProto:
    """Builds the graph with deterministic weights (3.5 M parameters, 17 depthwise convs)."""
    g = GraphBuilder(SEED, INPUT_NAME, INPUT_SHAPE)
    x = g.relu6(g.batchnorm(g.conv(g.input, STEM_CHANNELS, 3, stride=2, bias=False)))
    for expansion, channels, repeats, stride in BOTTLENECKS:
        for i in range(repeats):
            x = _inverted_residual(g, x, expansion, channels, stride if i == 0 else 1)
    x = g.relu6(g.batchnorm(g.conv(x, LAST_CHANNELS, 1, bias=False)))
    x = g.flatten(g.global_avg_pool(x), features=x.channels)
    return g.finish("mobilenet_v2", g.gemm(x, 1000, gain=1.0))
