"""VGG-16 (configuration D), the model of the user's report: 13 3x3 convs, 5 max pools, 3 dense layers."""

import onnx

from models.graph import GraphBuilder

INPUT_NAME = "data"
INPUT_SHAPE = (1, 3, 224, 224)
SEED = 16

# Output channels per conv; "M" is a 2x2 stride-2 max pool.
LAYERS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def build() -> onnx.ModelProto:
    """Builds the graph with deterministic weights (about 553 MB, 138 M parameters)."""
    g = GraphBuilder(SEED, INPUT_NAME, INPUT_SHAPE)
    x = g.input
    for layer in LAYERS:
        x = g.maxpool(x, kernel=2, stride=2) if layer == "M" else g.relu(g.conv(x, int(layer), kernel=3))
    x = g.flatten(x, features=512 * 7 * 7)
    x = g.relu(g.gemm(x, 4096))
    x = g.relu(g.gemm(x, 4096))
    return g.finish("vgg16", g.gemm(x, 1000, gain=1.0))
