"""The board runtime: the C++ runner from pipeline.board.bundle runs a TVM-compiled model and reports
timings in the format the host parses, natively on x86_64 and under qemu as an emulated rk3399.

A tiny conv2d + bias + ReLU model whose weights are passed as parameters is compiled for each
architecture, run through the real bundle, and compared with a numpy reference."""

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.board.bundle import RuntimeBundle, runtime_bundle
from pipeline.board.profile import Arch

pytestmark = pytest.mark.board  # sshd, qemu or TVM builds: the slow tier

ARCHES: list[Arch] = ["x86_64", "aarch64"]
INPUT_SHAPE = (1, 3, 8, 8)
WEIGHT_SHAPE = (4, 3, 3, 3)
BIAS_SHAPE = (1, 4, 1, 1)
OUTPUT_SHAPE = [1, 4, 8, 8]
TARGETS: dict[Arch, dict] = {
    "x86_64": {"kind": "llvm"},
    "aarch64": {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": "cortex-a72",
        "mattr": ["+neon"],
        "num-cores": 2,
    },
}
# How the host reaches an emulated rk3399: without this CPU model qemu accepts instructions the board lacks.
BOARD_PREFIX: dict[Arch, list[str]] = {
    "x86_64": [],
    "aarch64": ["qemu-aarch64", "-cpu", "cortex-a72", "-L", "/usr/aarch64-linux-gnu"],
}


@dataclass(frozen=True)
class Case:
    arch: Arch
    bundle: RuntimeBundle
    lib: Path
    params: Path
    input: Path
    expected: np.ndarray
    workdir: Path


def conv_relu_module() -> tvm.IRModule:
    """main(x, weight, bias): the weights are arguments, as the pipeline's models pass them."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(INPUT_SHAPE, "float32"))
    weight = relax.Var("weight", relax.TensorType(WEIGHT_SHAPE, "float32"))
    bias = relax.Var("bias", relax.TensorType(BIAS_SHAPE, "float32"))
    with builder.function("main", [x, weight, bias]):
        with builder.dataflow():
            conv = builder.emit(relax.op.nn.conv2d(x, weight, padding=1))
            biased = builder.emit(relax.op.add(conv, bias))
            out = builder.emit_output(relax.op.nn.relu(biased))
        builder.emit_func_output(out)
    return builder.get()


def numpy_conv_relu(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    return np.maximum(np.einsum("nchwij,kcij->nkhw", windows, weight) + bias, 0.0)


def export_model(arch: Arch, path: Path) -> None:
    executable = tvm.compile(conv_relu_module(), target=tvm.target.Target(TARGETS[arch]))
    if arch == "aarch64":
        # cross_compiler mutates its own option list on every call: make a fresh one per export.
        executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler("aarch64-linux-gnu-g++"))
    else:
        executable.export_library(str(path))


@pytest.fixture(scope="module", params=ARCHES)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    arch: Arch = request.param
    if BOARD_PREFIX[arch]:
        assert shutil.which(BOARD_PREFIX[arch][0]), f"{BOARD_PREFIX[arch][0]} not found: run scripts/install.sh"
    workdir = tmp_path_factory.mktemp(arch)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(INPUT_SHAPE, dtype=np.float32)
    weight = rng.standard_normal(WEIGHT_SHAPE, dtype=np.float32)
    bias = rng.standard_normal(BIAS_SHAPE, dtype=np.float32)
    lib, params, inputs = workdir / "model.so", workdir / "params.bin", workdir / "input.bin"
    export_model(arch, lib)
    params.write_bytes(
        tvm.runtime.save_param_dict({"p00000": tvm.runtime.tensor(weight), "p00001": tvm.runtime.tensor(bias)})
    )
    x.tofile(inputs)
    return Case(arch, runtime_bundle(arch), lib, params, inputs, numpy_conv_relu(x, weight, bias), workdir)


def run_runner(case: Case, *args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [*BOARD_PREFIX[case.arch], str(case.bundle.files["tvm_runner"]), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=case.workdir)


def model_args(case: Case, output: Path, shape: str = "1,3,8,8") -> list[str | Path]:
    return [
        "--lib",
        case.lib,
        "--params",
        case.params,
        "--input",
        case.input,
        "--input-shape",
        shape,
        "--output",
        output,
    ]


def test_bundle_holds_runner_and_both_runtime_libraries(case: Case) -> None:
    assert set(case.bundle.files) == {"tvm_runner", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"}
    assert case.bundle.root.name == case.arch
    assert all(path.is_file() and path.parent.is_relative_to(case.bundle.root) for path in case.bundle.files.values())


def test_bundle_is_cached_after_the_first_build(case: Case) -> None:
    runner = case.bundle.files["tvm_runner"]
    built_at = runner.stat().st_mtime_ns
    assert runtime_bundle(case.arch) == case.bundle
    assert runner.stat().st_mtime_ns == built_at


def test_info_reports_compiled_in_architecture(case: Case) -> None:
    result = run_runner(case, "--info")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["arch"] == case.arch
    assert info["runner_version"] == 1
    assert isinstance(info["cores"], int) and info["cores"] >= 1


def test_runner_output_matches_numpy_and_reports_every_inference(case: Case) -> None:
    output = case.workdir / "out.bin"
    result = run_runner(case, *model_args(case, output), "--warmup", "1", "--runs", "2")
    assert result.returncode == 0, result.stderr

    report = json.loads(result.stdout)
    assert report["output_shape"] == OUTPUT_SHAPE
    assert report["num_outputs"] == 1
    assert len(report["warmup_ms"]) == 1 and len(report["runs_ms"]) == 2
    assert all(ms >= 0 for ms in [report["load_ms"], report["first_ms"], *report["warmup_ms"], *report["runs_ms"]])

    progress = [line.split()[:4] for line in result.stderr.splitlines() if line.startswith("progress ")]
    assert progress == [
        ["progress", "first", "1", "1"],
        ["progress", "warmup", "1", "1"],
        ["progress", "run", "1", "2"],
        ["progress", "run", "2", "2"],
    ]

    actual = np.fromfile(output, dtype=np.float32).reshape(OUTPUT_SHAPE)
    np.testing.assert_allclose(actual, case.expected, rtol=1e-4, atol=1e-4)


def test_profile_times_every_kernel_call_after_the_timed_runs_and_peak_memory_is_reported(case: Case) -> None:
    output = case.workdir / "profiled.bin"
    result = run_runner(case, *model_args(case, output), "--runs", "1", "--profile", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    phases = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("progress ")]
    assert phases == ["first", "warmup", "run", "profile", "profile", "profile"]
    kernels = [entry for entry in report["profile"] if not entry["name"].startswith("vm.builtin.")]
    assert [entry["name"] for entry in kernels] == ["conv2d", "add", "relu"]  # tvm.compile without fusion
    assert all(entry["calls"] == 1 and entry["ms"] >= 0 for entry in kernels) and kernels[0]["ms"] > 0
    weights_kb = (np.prod(WEIGHT_SHAPE) + np.prod(BIAS_SHAPE)) * 4 / 1024
    assert report["peak_rss_kb"] > weights_kb


def test_missing_library_exits_2_with_a_message(case: Case) -> None:
    result = run_runner(case, *model_args(case, case.workdir / "out.bin")[2:], "--lib", case.workdir / "absent.so")
    assert result.returncode == 2
    assert "absent.so" in result.stderr
    assert result.stdout == ""


def test_input_of_the_wrong_size_exits_2_with_a_message(case: Case) -> None:
    result = run_runner(case, *model_args(case, case.workdir / "out.bin", shape="1,3,8,9"))
    assert result.returncode == 2
    assert "bytes" in result.stderr
    assert result.stdout == ""
