"""The build step: TVM cross-compiles for the profile's target, and an unchanged input is never rebuilt."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.board.profile import load_board
from pipeline.compiler import builder
from pipeline.compiler.elf import elf_arch
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.compiler.rewrites.channels_last import ChannelsLastReport
from pipeline.compiler.rewrites.winograd import WinogradReport
from pipeline.deploy.check import compare
from pipeline.deploy.timing import summarize
from pipeline.errors import PipelineError

pytestmark = pytest.mark.board  # sshd, qemu or TVM builds: the slow tier


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.mark.parametrize(("board", "arch"), [("local", "x86_64"), ("rk3399-emu", "aarch64")])
def test_build_targets_the_boards_architecture(cache: Path, board: str, arch: str) -> None:
    artifact = builder.build(resolve_model("tiny"), load_board(board), cache_dir=cache)
    assert artifact.arch == arch
    assert elf_arch(artifact.library) == arch
    assert artifact.params.stat().st_size > 0
    assert artifact.cached is False


def test_unchanged_input_is_not_rebuilt(cache: Path) -> None:
    model, board = resolve_model("tiny"), load_board("local")
    first = builder.build(model, board, cache_dir=cache)
    second = builder.build(model, board, cache_dir=cache)
    assert second.cached is True
    assert second.key == first.key
    assert second.library == first.library


def test_another_target_or_model_is_a_different_build() -> None:
    model, board = resolve_model("tiny"), load_board("rk3399-emu")
    other_cpu = board.model_copy(update={"target": board.target.model_copy(update={"mcpu": "cortex-a53"})})
    assert builder.build_key(model, board) != builder.build_key(model, other_cpu)
    assert builder.build_key(model, board) != builder.build_key(resolve_model("mobilenet_v2"), board)


def test_the_key_and_the_files_hold_the_target_as_the_dict_tvm_takes() -> None:
    """The typed target serializes as before, so build keys, record folders and result files keep their meaning."""
    target = builder.resolved_target(load_board("rk3399-emu"))
    assert target.as_tvm_dict() == {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": "cortex-a72",
        "mattr": ["+neon"],
        "num-cores": 2,
    }
    assert target.arch == "aarch64" and target.text() == "aarch64-linux-gnu/cortex-a72/2 cores/+neon"


def test_build_json_is_versioned_and_an_older_one_is_read_back_typed(cache: Path) -> None:
    model, board = resolve_model("tiny"), load_board("local")
    built = builder.build(model, board, cache_dir=cache)
    info_path = built.directory / builder.BUILD_INFO_NAME
    current = json.loads(info_path.read_text())
    assert current["schema_version"] == builder.BUILD_SCHEMA_VERSION == 2
    assert builder.load_build(built.directory) == replace(built, cached=True)
    # Version 1: no schema_version, and (before the layout rewrites) no winograd or channels_last report.
    old = {key: value for key, value in current.items() if key not in ("schema_version", "winograd", "channels_last")}
    info_path.write_text(json.dumps(old, indent=2))

    cached = builder.build(model, board, cache_dir=cache)
    assert cached.cached is True and cached.key == built.key
    assert cached == replace(
        built, cached=True, winograd=WinogradReport.off(0), channels_last=ChannelsLastReport(False)
    )
    assert cached.target == builder.resolved_target(board)


def test_a_build_json_from_a_newer_pipeline_is_refused(cache: Path) -> None:
    built = builder.build(resolve_model("tiny"), load_board("local"), cache_dir=cache)
    info_path = built.directory / builder.BUILD_INFO_NAME
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "schema_version": 3}))
    with pytest.raises(PipelineError, match="has build schema version 3, this pipeline reads up to 2"):
        builder.load_build(built.directory)


def test_edited_model_file_is_rebuilt(cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tiny.onnx"
    shutil.copy(resolve_model("tiny").path, copy)
    spec = resolve_model(str(copy))
    key = builder.build_key(spec, load_board("local"))
    with copy.open("ab") as stream:
        stream.write(b"\0")
    assert builder.build_key(spec, load_board("local")) != key


def test_host_cpu_is_resolved_for_the_local_board() -> None:
    assert builder.resolved_target(load_board("local")).mcpu not in ("host", "")


def test_failed_build_leaves_nothing_in_the_cache(cache: Path, tmp_path: Path) -> None:
    board = load_board("rk3399-emu").model_copy(update={"cross_compiler": "no-such-compiler-g++"})
    with pytest.raises(PipelineError, match="no-such-compiler-g"):
        builder.build(resolve_model("tiny"), board, cache_dir=cache)
    assert list((cache / "builds").iterdir()) == []


def test_output_check_uses_relative_error() -> None:
    reference = np.array([[1.0, -4.0, 2.0]], dtype=np.float32)
    assert compare(reference + 1e-5, reference).passed
    wrong = compare(reference * 1.1, reference)
    assert not wrong.passed and wrong.relative_error == pytest.approx(0.1, rel=1e-3)
    assert not compare(reference[:, :2], reference).passed


def test_timing_summary() -> None:
    stats = summarize([10.0, 12.0, 11.0, 13.0, 14.0])
    assert (stats.count, stats.min_ms, stats.max_ms, stats.median_ms) == (5, 10.0, 14.0, 12.0)
    assert stats.mean_ms == pytest.approx(12.0)
    assert stats.std_ms == pytest.approx(np.std([10, 12, 11, 13, 14], ddof=1))
    assert 13.0 <= stats.p90_ms <= 14.0


def test_what_depends_on_weights_alone_is_computed_at_build_time_not_on_every_run() -> None:
    import tvm

    from pipeline.compiler.lowering import import_model
    from pipeline.compiler.passes import fuse

    target = tvm.target.Target(builder.resolved_target(load_board("local")).as_tvm_dict())
    mod, params = import_model(resolve_model("tiny"))
    functions = [gv.name_hint for gv in fuse(mod, target).functions]
    assert not [name for name in functions if "transpose" in name or "sqrt" in name]  # Gemm transB, batch norm
    assert len(params["main"]) == len(mod["main"].params) - 1  # every parameter but the input


def test_a_cold_build_registers_only_the_cpu_tensor_intrinsics(tmp_path: Path) -> None:
    """TVM's full set of tensor intrinsics (CUDA's alone ~10 s to import) is never loaded for a CPU build."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from pipeline.compiler import builder; from pipeline.board.profile import load_board;"
        "from pipeline.compiler.importer.model_file import resolve_model;"
        f"builder.build(resolve_model('tiny'), load_board('local'), cache_dir=Path({str(tmp_path)!r}));"
        "print(sorted(m for m in sys.modules if m.startswith('tvm.s_tir.tensor_intrin.')))"
    )
    root = Path(__file__).resolve().parents[1]
    loaded = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True).stdout
    assert "tvm.s_tir.tensor_intrin.x86" in loaded and "cuda" not in loaded
