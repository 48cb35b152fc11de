"""Every flag's value is checked before anything is built: a bad one ends in one error line (at most 300
characters, naming the flag and a value that works), exit code 1 and no traceback, whatever the flag's
type. invoke hands flag values over as strings; these go through the real command line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import MAX_LINE, PipelineError
from pipeline.nightly.loop import Point, load_matrix
from pipeline.paths import ROOT


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINE_RESULTS": os.devnull}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


BAD_VALUES = [
    (("deploy", "--tolerance", "abc"), "--tolerance must be a number, got 'abc'"),
    (("deploy", "--tolerance", "0"), "--tolerance must be a positive number, got '0'"),
    (("deploy", "--runs", "0"), "--runs must be at least 1, got '0'"),
    (("deploy", "--runs", "1.5"), "--runs must be a whole number, got '1.5'"),
    (("deploy", "--warmup", "-1"), "--warmup must be at least 0, got '-1'"),
    (("deploy", "--timeout", "nan"), "--timeout must be a positive number, got 'nan'"),
    (("deploy", "--timeout", "-5"), "--timeout must be a positive number, got '-5'"),
    (("deploy", "--coverage", "maybe"), "unknown coverage policy 'maybe'"),
    (("deploy", "--min-tuned-flops", "lots"), "--min-tuned-flops must be a fraction, got 'lots'"),
    (("deploy", "--min-tuned-flops", "2"), "--min-tuned-flops 2.0 is not a fraction"),
    (("deploy", "--input-shape", "1,x,3"), "--input-shape must be whole numbers separated by commas, got '1,x,3'"),
    (("deploy", "--input-shape", "1,-3,32,32"), "--input-shape sizes must be positive, got -3 in '1,-3,32,32'"),
    (
        ("deploy", "--input-shape", "1,3,32"),
        "--input-shape 1,3,32 has 3 dimensions, but input 'data' of tiny.onnx has 4",
    ),
    (
        ("build", "--input-shape", "1,3,64,32"),
        "--input-shape 1,3,64,32 sets dimension 2 to 64, but input 'data' of tiny.onnx fixes it to 32",
    ),
    (("build", "--min-tuned-flops", "x"), "--min-tuned-flops must be a fraction, got 'x'"),
    (("tune", "--trials", "0"), "--trials must be at least 1, got '0'"),
    (("tune", "--trials", "many"), "--trials must be a whole number, got 'many'"),
    (("tune", "--input-shape", "0,3,32,32"), "--input-shape sizes must be positive, got 0 in '0,3,32,32'"),
    (("tune", "--only", "fused_conv2d_add_relu,fused_typo"), "no conv/dense task of tiny is named fused_typo"),
]


@pytest.mark.parametrize(("args", "problem"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_flag_value_is_one_clear_line(args: tuple[str, ...], problem: str) -> None:
    command, *flags = args
    proc = invoke(command, "--board", "local", "--model", "tiny", *flags)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {problem}")
    assert " — fix: " in lines[0]
    assert len(lines[0]) <= MAX_LINE


def matrix_file(tmp_path: Path, entry: str) -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text(f"matrix:\n  - boards: [local]\n    models: [tiny, net.onnx]\n{entry}")
    return path


def test_nightly_matrix_entry_fixes_the_input_shape_of_its_points(tmp_path: Path) -> None:
    matrix = load_matrix(matrix_file(tmp_path, "    input_shape: [1, 3, 32, 32]\n"))
    assert matrix.points() == [
        Point("local", "tiny", input_shape=(1, 3, 32, 32)),
        Point("local", "net.onnx", input_shape=(1, 3, 32, 32)),
    ]


def test_nightly_matrix_entry_without_input_shape_leaves_it_to_the_model(tmp_path: Path) -> None:
    assert all(point.input_shape is None for point in load_matrix(matrix_file(tmp_path, "")).points())


@pytest.mark.parametrize("shape", ["[1, -3, 32, 32]", "[]", "'1,3,32,32'", "[1, 3.5]"])
def test_nightly_matrix_entry_with_a_bad_input_shape_is_refused(tmp_path: Path, shape: str) -> None:
    with pytest.raises(PipelineError) as err:
        load_matrix(matrix_file(tmp_path, f"    input_shape: {shape}\n"))
    assert "field 'matrix.0.input_shape" in err.value.problem


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("--history", "/proc/no-such-folder/history.sqlite", "cannot create its folder (No such file or directory)"),
        ("--history", "{tmp}", "is a folder"),
        ("--report", "{tmp}/a-file", "cannot create its folder (File exists)"),
    ],
    ids=["history-in-an-impossible-folder", "history-is-a-folder", "report-is-a-file"],
)
def test_bad_nightly_output_path_is_refused_before_anything_runs(
    tmp_path: Path, flag: str, value: str, problem: str
) -> None:
    """Checked before the matrix runs: a nightly run takes hours. (Its one point would fail fast anyway.)"""
    (tmp_path / "a-file").write_text("")
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("matrix:\n  - boards: [no-such-board]\n    models: [tiny]\n")
    path = value.format(tmp=tmp_path)
    proc = invoke("nightly", "--matrix", str(matrix), flag, path)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line]
    assert lines == [lines[0]] and lines[0].startswith(f"error: {flag} {path}")
    assert problem in lines[0]
    assert not (tmp_path / "history.sqlite").exists()


def test_a_rerun_under_another_release_drops_the_tvm_flag_in_both_spellings() -> None:
    from pipeline.tvm_release.rerun import without_tvm_flag

    assert without_tvm_flag(["build", "--tvm", "0.26", "--model", "tiny"]) == ["build", "--model", "tiny"]
    assert without_tvm_flag(["deploy", "--tvm=0.26", "--runs", "3"]) == ["deploy", "--runs", "3"]
