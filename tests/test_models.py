"""The model zoo and resolve_model: what the pipeline accepts as a model, and how it refuses the rest."""

import importlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models import tiny
from pipeline import paths
from pipeline.compiler.importer.model_file import (
    BUILTIN_MODELS,
    SOURCE_DIGEST_KEY,
    ModelSpec,
    parse_input_shape,
    resolve_model,
)
from pipeline.errors import PipelineError

OUTPUT_CLASSES = {"vgg16": 1000, "resnet18": 1000, "mobilenet_v2": 1000, "tiny": 10}


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One private cache for the module, so built-ins (VGG-16 is 553 MB) are generated once per run."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "CACHE_DIR", cache)
        yield cache


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache for tests that watch generation itself."""
    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def specs(zoo_cache: Path) -> dict[str, ModelSpec]:
    return {name: resolve_model(name) for name in BUILTIN_MODELS}


@pytest.fixture(scope="module")
def graphs(specs: dict[str, ModelSpec]) -> dict[str, onnx.GraphProto]:
    """Each generated file parsed once (parsing VGG-16 takes half a second)."""
    return {name: onnx.load(spec.path).graph for name, spec in specs.items()}


def op_counts(graph: onnx.GraphProto) -> Counter[str]:
    return Counter(node.op_type for node in graph.node)


def save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, path)
    return str(path)


def graph_model(inputs: list[onnx.ValueInfoProto], node: onnx.NodeProto, shape: list[int | str]) -> onnx.ModelProto:
    """A minimal valid one-node model; `shape` is its float output's shape."""
    output = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, shape)
    graph = helper.make_graph([node], "g", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# Built-in models


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_resolves_to_a_generated_file_in_the_cache(
    specs: dict[str, ModelSpec], zoo_cache: Path, name: str
) -> None:
    module = importlib.import_module(f"models.{name}")
    spec = specs[name]
    assert spec == ModelSpec(
        name=name,
        path=zoo_cache / "models" / f"{name}.onnx",
        input_name=module.INPUT_NAME,
        input_shape=module.INPUT_SHAPE,
        input_dtype="float32",
        builtin=True,
    )
    assert spec.path.is_file()


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_passes_the_onnx_checker(specs: dict[str, ModelSpec], name: str) -> None:
    onnx.checker.check_model(str(specs[name].path), full_check=True)


def test_vgg16_has_13_convs_5_pools_and_3_dense_layers(graphs: dict[str, onnx.GraphProto]) -> None:
    ops = op_counts(graphs["vgg16"])
    assert (ops["Conv"], ops["MaxPool"], ops["Gemm"], ops["Relu"]) == (13, 5, 3, 15)


def test_vgg16_dense_layers_are_25088_4096_4096_1000(graphs: dict[str, onnx.GraphProto]) -> None:
    initializers = graphs["vgg16"].initializer
    assert [tuple(t.dims) for t in initializers if t.name.startswith("gemm") and t.name.endswith(".weight")] == [
        (4096, 25088),
        (4096, 4096),
        (1000, 4096),
    ]


def test_resnet18_has_20_convs_with_batch_norm_and_8_residual_adds(graphs: dict[str, onnx.GraphProto]) -> None:
    ops = op_counts(graphs["resnet18"])
    assert (ops["Conv"], ops["BatchNormalization"], ops["Add"], ops["Gemm"]) == (20, 20, 8, 1)


def test_mobilenet_v2_has_depthwise_convs_and_relu6(graphs: dict[str, onnx.GraphProto]) -> None:
    graph = graphs["mobilenet_v2"]
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    groups = [
        (next(a.i for a in node.attribute if a.name == "group"), weights[node.input[1]])
        for node in graph.node
        if node.op_type == "Conv"
    ]
    depthwise = [g for g, dims in groups if g > 1 and g == dims[0] and dims[1] == 1]
    assert len(groups) == 52
    assert len(depthwise) == 17
    assert op_counts(graph)["Clip"] == 35


def test_tiny_uses_every_operator_of_the_zoo(graphs: dict[str, onnx.GraphProto]) -> None:
    """So that a compile path tested on tiny meets no new operator on the big models."""
    zoo_ops = set().union(*(op_counts(graph) for graph in graphs.values()))
    assert set(op_counts(graphs["tiny"])) == zoo_ops


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_is_byte_identical_when_generated_again(
    specs: dict[str, ModelSpec], fresh_cache: Path, name: str
) -> None:
    again = resolve_model(name)
    assert again.path != specs[name].path
    assert again.path.read_bytes() == specs[name].path.read_bytes()


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_runs_in_onnxruntime_with_a_finite_spread_output(specs: dict[str, ModelSpec], name: str) -> None:
    spec = specs[name]
    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal(spec.input_shape, dtype=np.float32)
    (logits,) = session.run(None, {spec.input_name: image})
    assert logits.shape == (1, OUTPUT_CLASSES[name])
    assert np.isfinite(logits).all()
    assert 0.1 < logits.std() < 100  # weights scaled so activations neither vanish nor explode


# The cache of generated built-ins


def test_second_resolve_reuses_the_generated_file(fresh_cache: Path) -> None:
    first = os.stat(resolve_model("tiny").path)
    second = os.stat(resolve_model("tiny").path)
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


@pytest.mark.parametrize(
    "damage",
    [lambda good: b"", lambda good: b"not a protobuf \xff\xff", lambda good: good[: len(good) // 2]],
    ids=["empty", "garbage", "truncated"],
)
def test_damaged_cached_file_is_regenerated(fresh_cache: Path, damage: Callable[[bytes], bytes]) -> None:
    path = resolve_model("tiny").path
    good = path.read_bytes()
    path.write_bytes(damage(good))
    assert resolve_model("tiny").path.read_bytes() == good


def test_cached_file_from_an_older_definition_is_regenerated(fresh_cache: Path) -> None:
    path = resolve_model("tiny").path
    good = path.read_bytes()
    stale = onnx.load(path)
    stale.metadata_props[0].value = "digest of code that has since changed"
    assert stale.metadata_props[0].key == SOURCE_DIGEST_KEY
    onnx.save(stale, path)
    assert resolve_model("tiny").path.read_bytes() == good


def test_interrupted_generation_leaves_no_file_behind(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("tiny")
    assert list((fresh_cache / "models").iterdir()) == []


def test_unwritable_cache_is_a_pipeline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setattr(paths, "CACHE_DIR", blocker / "cache")
    with pytest.raises(PipelineError, match="cannot write the model cache"):
        resolve_model("tiny")


# User ONNX files


def test_user_onnx_file_resolves_by_path(tmp_path: Path) -> None:
    path = save(tiny.build(), tmp_path / "my_net.onnx")
    assert resolve_model(path) == ModelSpec(
        name="my_net",
        path=Path(path),
        input_name="data",
        input_shape=(1, 3, 32, 32),
        input_dtype="float32",
        builtin=False,
    )


def test_initializers_listed_as_inputs_are_not_counted_as_inputs(tmp_path: Path) -> None:
    """Exporters before IR version 4 listed every weight as a graph input."""
    model = tiny.build()
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer
    )
    spec = resolve_model(save(model, tmp_path / "old_style.onnx"))
    assert (spec.input_name, spec.input_shape) == ("data", (1, 3, 32, 32))


def two_input_model() -> onnx.ModelProto:
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "ab")
    return graph_model([a, b], helper.make_node("Add", ["a", "b"], ["y"]), [1, 4])


def dynamic_batch_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    return graph_model([x], helper.make_node("Relu", ["x"], ["y"]), ["batch", 3, 8, 8])


def int64_input_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])
    return graph_model([x], helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT), [1, 16])


def no_input_model() -> onnx.ModelProto:
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    return graph_model([], helper.make_node("Constant", [], ["y"], value=value), [1])


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        (two_input_model, "has 2 inputs (a, b); the pipeline needs exactly one"),
        (no_input_model, "has 0 inputs (none)"),
        (dynamic_batch_model, "input 'x' of bad.onnx has symbolic dimensions batch: [batch, 3, 8, 8]"),
        (int64_input_model, "input 'ids' of bad.onnx is int64, not float32"),
    ],
)
def test_model_the_pipeline_cannot_compile_is_refused(
    tmp_path: Path, model: Callable[[], onnx.ModelProto], problem: str
) -> None:
    with pytest.raises(PipelineError) as err:
        resolve_model(save(model(), tmp_path / "bad.onnx"))
    assert problem in err.value.problem
    assert err.value.fix


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "model file not found: "),
        (b"hello, this is not a model\n", "not an ONNX model (cannot parse it): "),
        (b"", "not an ONNX model (no IR version): "),
    ],
)
def test_missing_or_corrupt_file_is_a_one_line_error(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "x.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PipelineError) as err:
        resolve_model(str(path))
    assert err.value.problem == problem + str(path)
    assert err.value.fix == "give a path to an .onnx file or one of: vgg16, resnet18, mobilenet_v2, tiny"
    assert "\n" not in str(err.value)


def test_unknown_name_lists_the_builtin_models() -> None:
    with pytest.raises(PipelineError) as err:
        resolve_model("resnet50")
    assert err.value.problem == "unknown model name: resnet50"
    assert "vgg16, resnet18, mobilenet_v2, tiny" in err.value.fix


def test_model_whose_weights_file_is_missing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.onnx"
    onnx.save(tiny.build(), path, save_as_external_data=True, location="split.data", size_threshold=0)
    (tmp_path / "split.data").unlink()
    with pytest.raises(PipelineError, match=r"^invalid ONNX model .*split\.onnx: "):
        resolve_model(str(path))


def test_model_with_weights_in_an_external_file_names_that_file(tmp_path: Path) -> None:
    path = tmp_path / "split.onnx"
    onnx.save(tiny.build(), path, save_as_external_data=True, location="split.data", size_threshold=0)
    spec = resolve_model(str(path))
    assert spec.external_data == (tmp_path / "split.data",)
    assert spec.files == (path, tmp_path / "split.data")


# Symbolic input dimensions and --input-shape


def free_size_model() -> onnx.ModelProto:
    """A dynamic batch and a free image size, as exporters write them with dynamic axes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    return graph_model([x], helper.make_node("Relu", ["x"], ["y"]), ["batch", 3, "height", "width"])


def test_symbolic_dimensions_are_named_with_the_flag_that_fixes_them(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as err:
        resolve_model(save(free_size_model(), tmp_path / "free.onnx"))
    assert err.value.problem == "input 'x' of free.onnx has symbolic dimensions batch, height, width: " + (
        "[batch, 3, height, width]"
    )
    assert err.value.fix == "set them with --input-shape, e.g. --input-shape 1,3,224,224"


def test_input_shape_fixes_the_symbolic_dimensions(tmp_path: Path) -> None:
    spec = resolve_model(save(free_size_model(), tmp_path / "free.onnx"), (2, 3, 64, 48))
    assert (spec.input_name, spec.input_shape) == ("x", (2, 3, 64, 48))


def test_input_shape_may_repeat_a_fully_fixed_shape() -> None:
    assert resolve_model("tiny", (1, 3, 32, 32)).input_shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ((1, 3, 224), "--input-shape 1,3,224 has 3 dimensions, but input 'x' of free.onnx has 4"),
        ((1, 4, 8, 8), "--input-shape 1,4,8,8 sets dimension 1 to 4, but input 'x' of free.onnx fixes it to 3"),
        ((1, 3, 0, 8), "--input-shape 1,3,0,8 has a size below 1"),
    ],
    ids=["wrong-rank", "clashes-with-a-fixed-size", "zero"],
)
def test_input_shape_that_does_not_fit_the_model_is_refused(
    tmp_path: Path, shape: tuple[int, ...], problem: str
) -> None:
    with pytest.raises(PipelineError) as err:
        resolve_model(save(free_size_model(), tmp_path / "free.onnx"), shape)
    assert err.value.problem.startswith(problem)
    assert err.value.fix


@pytest.mark.parametrize(
    ("text", "shape"),
    [("1,3,224,224", (1, 3, 224, 224)), (" 1, 3,8 ,8 ", (1, 3, 8, 8)), ("[2,3]", (2, 3)), ("7", (7,))],
)
def test_input_shape_text_is_sizes_separated_by_commas(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1,x,3", "--input-shape must be whole numbers separated by commas, got '1,x,3'"),
        ("1,,3", "--input-shape must be whole numbers separated by commas, got '1,,3'"),
        ("", "--input-shape must be whole numbers separated by commas, got ''"),
        ("1.5,3", "--input-shape must be whole numbers separated by commas, got '1.5,3'"),
        ("1,-3,8,8", "--input-shape sizes must be positive, got -3 in '1,-3,8,8'"),
        ("0,3", "--input-shape sizes must be positive, got 0 in '0,3'"),
    ],
)
def test_input_shape_text_that_is_not_a_shape_is_refused(text: str, problem: str) -> None:
    with pytest.raises(PipelineError) as err:
        parse_input_shape(text)
    assert err.value.problem == problem
    assert err.value.fix == "pass e.g. --input-shape 1,3,224,224"
