"""A store holding one real MetaSchedule record for `tiny` on the `local` board, shared by the record
and coverage tests. Tuning runs once per test session: the second caller finds the measurements in
the tuning work database and only exports them again (which is how `invoke tune` resumes)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.board.profile import BoardProfile, load_board
from pipeline.compiler.importer.model_file import ModelSpec, resolve_model
from pipeline.paths import ROOT
from pipeline.records.store import load_store, save_record
from pipeline.tuning.tuner import measured_schedules, tune

TUNED_TASK = "fused_conv2d_add_relu"  # the stem conv: 3 -> 16 channels, 3x3, 32x32
TRIALS = 4


def tuned_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh store folder with the tuned record of TUNED_TASK for the local board's target."""
    store = tmp_path_factory.mktemp("records")
    result = tune(tiny(), local(), TRIALS, records_dir=store, cache_dir=work_dir(tmp_path_factory), only=(TUNED_TASK,))
    assert len(result.saved) == 1 and not load_store(store).problems
    return store


def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MetaSchedule's work database, shared by the whole session like a checkout's .cache/tuning."""
    return tmp_path_factory.getbasetemp() / "tuning-work"


def copy_store(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def tiny() -> ModelSpec:
    return resolve_model("tiny")


def local() -> BoardProfile:
    return load_board("local")


def tuned_under_026(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh store with one record of TUNED_TASK made by the pipeline itself under TVM 0.26
    (`invoke tune --tvm 0.26`; its work database under .cache/tuning/0.26 makes a second call quick)."""
    store = tmp_path_factory.mktemp("records-0.26")
    command = [sys.executable, "-m", "invoke", "tune", "--tvm", "0.26", "--board", "local", "--model", "tiny"]
    env = {**os.environ, "PIPELINE_RECORDS": str(store)}
    proc = subprocess.run(
        [*command, "--trials", "2", "--only", TUNED_TASK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [record] = load_store(store).records
    assert record.record.provenance.tvm_version.startswith("0.26")
    return store


def tuned_and_slower(model: ModelSpec, task: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two stores with one record each for `task` on the local board, from one short tuning run: its
    fastest schedule (the search starts from the default schedule) and its slowest measured one, as a
    record replaced by a slower one would be."""
    tuned = tmp_path_factory.mktemp("records-tuned")
    cache = tmp_path_factory.mktemp("tuning-cache")
    tune(model, local(), TRIALS, records_dir=tuned, cache_dir=cache, only=(task,))
    measured = measured_schedules(model, local(), task, cache_dir=cache)
    assert len(measured) > 1 and load_store(tuned).records[0].record.tvm_record == measured[0].tvm_record
    slower = tmp_path_factory.mktemp("records-slower")
    save_record(measured[-1], slower)
    return tuned, slower
