"""`invoke upgrade-check`: both releases built, pushed and run interleaved on the board, printed side by
side, written as JSON, and exit 0 only when the new release is not slower and loses no coverage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tuned_records import tuned_under_026

from pipeline.paths import ROOT

ROUNDS = 4


def upgrade_check(records: Path, results: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINE_RECORDS": str(records), "PIPELINE_RESULTS": str(results)}
    command = [sys.executable, "-m", "invoke", "upgrade-check", "--board", "local", "--model", "tiny", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def store_026(tmp_path_factory: pytest.TempPathFactory, embedded_endpoint: object) -> Path:
    return tuned_under_026(tmp_path_factory)


def test_upgrade_check_prints_both_releases_side_by_side_and_writes_the_comparison(
    store_026: Path, tmp_path: Path
) -> None:
    proc = upgrade_check(store_026, tmp_path, "--from", "0.26", "--to", "0.27", "--rounds", str(ROUNDS))
    header = next(line for line in proc.stdout.splitlines() if "TVM 0.26" in line)
    assert "TVM 0.27" in header
    median = next(line for line in proc.stdout.splitlines() if line.startswith("median"))
    assert median.count(" ms") == 2
    [path] = (tmp_path / "upgrade-check" / "local").glob("tiny-0.26-to-0.27-*.json")
    report = json.loads(path.read_text())
    assert (report["old"]["release"], report["new"]["release"]) == ("0.26", "0.27")
    assert len(report["old"]["runs_ms"]) == len(report["new"]["runs_ms"]) == ROUNDS
    assert report["new"]["coverage"]["counts"]["migrated"] == 1  # the stem conv's 0.26 record
    assert report["old"]["coverage"]["counts"]["tuned"] == 1
    assert report["new"]["check"]["passed"] and report["old"]["check"]["passed"]
    for side in ("old", "new"):  # every task timed on the board, per release
        assert any(name.startswith("fused_conv2d") and ms > 0 for name, ms in report[side]["task_ms"].items())
    assert all({"before_ms", "after_ms"} <= set(change) for change in report["changes"])
    assert proc.returncode == (0 if report["passed"] else 1)
    if report["passed"]:
        assert proc.stdout.splitlines()[-1].startswith("upgrade-check: ok: ")
    else:
        assert proc.stderr.splitlines()[-1] == f"upgrade-check: not safe: {report['reason']}"


def test_an_upgrade_that_drops_the_records_is_not_safe(store_026: Path, tmp_path: Path) -> None:
    proc = upgrade_check(store_026, tmp_path, "--from", "0.26", "--to", "0.27", "--rounds", "2", "--no-migrate")
    assert proc.returncode == 1
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("upgrade-check: not safe: ")
    assert "loses coverage" in last or "slower" in last


def test_an_unknown_release_is_one_error_line(tmp_path: Path) -> None:
    proc = upgrade_check(tmp_path, tmp_path, "--to", "0.99")
    assert proc.returncode == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: TVM release '0.99'"), lines
    assert not (tmp_path / "upgrade-check").exists()
