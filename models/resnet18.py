"""ResNet-18: 7x7 stem, 4 stages of 2 basic blocks with batch norm, 1x1 stride-2 shortcut convs."""

import onnx

from models.graph import GraphBuilder, Tensor

INPUT_NAME = "data"
INPUT_SHAPE = (1, 3, 224, 224)
SEED = 18

STAGES: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (256, 2), (512, 2))  # (width, first stride)
BLOCKS_PER_STAGE = 2


def _conv_bn(g: GraphBuilder, x: Tensor, channels: int, kernel: int, stride: int = 1, gain: float = 2.0) -> Tensor:
    return g.batchnorm(g.conv(x, channels, kernel, stride, bias=False, gain=gain))


def _basic_block(g: GraphBuilder, x: Tensor, channels: int, stride: int) -> Tensor:
    """Two 3x3 convs plus a shortcut that is projected by a 1x1 conv where the shape changes.

    Convs that feed the add get gain 1: the add, not a ReLU, follows them, so gain 2 would let
    the scale double with every block.
    """
    y = g.relu(_conv_bn(g, x, channels, 3, stride))
    y = _conv_bn(g, y, channels, 3, gain=1.0)
    downsample = stride != 1 or x.channels != channels
    shortcut = _conv_bn(g, x, channels, 1, stride, gain=1.0) if downsample else x
    return g.relu(g.add(y, shortcut))


def build() -> onnx.ModelProto:
    """Builds the graph with deterministic weights (11.7 M parameters, 20 convs)."""
    g = GraphBuilder(SEED, INPUT_NAME, INPUT_SHAPE)
    x = g.relu(_conv_bn(g, g.input, 64, kernel=7, stride=2))
    x = g.maxpool(x, kernel=3, stride=2, pad=1)
    for channels, stride in STAGES:
        for block in range(BLOCKS_PER_STAGE):
            x = _basic_block(g, x, channels, stride if block == 0 else 1)
    x = g.flatten(g.global_avg_pool(x), features=x.channels)
    return g.finish("resnet18", g.gemm(x, 1000, gain=1.0))
