"""A small CNN for fast tests that still uses every operator of the larger models.

Strided, depthwise and 1x1 convs, batch norm, ReLU and ReLU6, a residual add, max and global
average pooling and a dense layer: a compile path that handles `tiny` meets no new op in the zoo.
"""

import onnx

from models.graph import GraphBuilder

INPUT_NAME = "data"
INPUT_SHAPE = (1, 3, 32, 32)
SEED = 0


def build() -> onnx.ModelProto:
    """Builds the graph with deterministic weights (about 4 k parameters)."""
    g = GraphBuilder(SEED, INPUT_NAME, INPUT_SHAPE)
    x = g.relu(g.conv(g.input, 16, 3))
    x = g.relu(g.batchnorm(g.conv(x, 32, 3, stride=2, bias=False)))
    y = g.relu6(g.conv(x, 32, 3, group=32))
    x = g.add(g.conv(y, 32, 1, gain=1.0), x)
    x = g.maxpool(x, kernel=2, stride=2)
    x = g.flatten(g.global_avg_pool(x), features=x.channels)
    return g.finish("tiny", g.gemm(x, 10, gain=1.0))
