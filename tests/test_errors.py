"""Error lines: one line of at most 300 characters that names the problem and the fix; the long story
(TVM's message, a traceback) in a log file the line names; our own bugs reported as bugs."""

from pathlib import Path

import pytest
from invoke import Exit

import tasks
from pipeline import paths
from pipeline.errors import MAX_LINE, PipelineError, error_line
from pipeline.tvm_release.errors import tvm_errors


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path)
    return tmp_path / "logs"


def test_a_long_problem_is_shortened_but_the_fix_and_the_log_stay_on_the_line() -> None:
    line = error_line("x" * 5000, "pass --input-shape 1,3,224,224", Path("/var/log/details.log"))
    assert len(line) <= MAX_LINE
    assert line.startswith("error: xxx") and "…" in line
    assert line.endswith(" — fix: pass --input-shape 1,3,224,224 (details: /var/log/details.log)")


def test_a_failing_tvm_call_is_one_line_with_tvms_reason_and_its_whole_message_in_a_log(log_dir: Path) -> None:
    import tvm

    with pytest.raises(PipelineError) as caught, tvm_errors("TVM rejected the target", "use a target dict"):
        tvm.target.Target("llvm -mcpu=no-such-cpu -bogus-option")
    error = caught.value
    assert error.log is not None and error.log.parent == log_dir
    assert "Traceback" in error.log.read_text() and "TVM rejected the target" in error.log.read_text()
    line = error.line()
    assert len(line) <= MAX_LINE and "\n" not in line
    assert line.startswith("error: TVM rejected the target: ") and line.endswith(f"(details: {error.log})")


def test_a_bug_of_ours_exits_3_with_a_line_that_says_so_and_the_traceback_logged(log_dir: Path) -> None:
    @tasks._clean_errors
    def broken() -> float:
        return {"ms": 1.0}["median_ms"]

    with pytest.raises(Exit) as caught:
        broken()
    assert caught.value.code == 3
    line = str(caught.value.message)
    assert line.startswith("error: bug in the pipeline (KeyError: 'median_ms')") and len(line) <= MAX_LINE
    (log,) = log_dir.iterdir()
    assert str(log) in line and 'return {"ms": 1.0}["median_ms"]' in log.read_text()
