"""Record migration across a TVM upgrade: a record the pipeline itself makes under TVM 0.26 (`invoke tune
--tvm 0.26`, in the 0.26 environment that scripts/install.sh creates) is replayed by a 0.27 build on the
task with the same semantic workload key, checked against the default schedule's output, applied and
reported as migrated; `invoke migrate` measures it on the board and keeps it as a 0.27 record. Traces
that do not replay, compute other numbers or come from a release pair without a table entry are
reported with the reason and never applied."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from tuned_records import TUNED_TASK, local, tiny, tuned_under_026

from pipeline.compiler import lowering, passes
from pipeline.compiler.builder import BuildArtifact, build, resolved_target
from pipeline.compiler.coverage import TaskCoverage, coverage_lines
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.paths import ROOT
from pipeline.records.store import load_store
from pipeline.tvm_release import trace_renames as migration_table
from pipeline.tvm_release.trace_renames import NoTableEntry, Renames, translate_trace


def invoke(*args: str, records: Path, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINE_RECORDS": str(records)}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def store_026(tmp_path_factory: pytest.TempPathFactory, embedded_endpoint: object) -> Path:
    """A store holding one record of tiny's stem conv, tuned by the pipeline under TVM 0.26 on `local`."""
    return tuned_under_026(tmp_path_factory)


def record_file(store: Path) -> Path:
    [path] = sorted(store.rglob("*.json"))
    return path


def edited_store(store: Path, destination: Path, edit: object) -> Path:
    """A copy of `store` whose one record went through `edit(data)`."""
    shutil.copytree(store, destination)
    path = record_file(destination)
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    return destination


def row(artifact: BuildArtifact, task: str) -> TaskCoverage:
    return next(r for r in artifact.coverage.tasks if r.task == task)


def test_a_026_record_is_migrated_by_a_027_build_and_the_build_says_so(store_026: Path, tmp_path: Path) -> None:
    artifact = build(tiny(), local(), cache_dir=tmp_path, records_dir=store_026)
    stem = row(artifact, TUNED_TASK)
    assert artifact.tvm_version.startswith("0.27")
    assert stem.schedule == "migrated" and not stem.tuned  # tuned only once measured on the board
    assert stem.source == f"0.26 ({'/'.join(record_file(store_026).parts[-3:])})"
    assert f"migrated from {stem.source}" in "\n".join(coverage_lines(artifact.coverage))
    assert not artifact.coverage.naive
    entry = next(e for e in artifact.coverage.result_entries() if e.task == TUNED_TASK)
    assert (entry.schedule, entry.source) == ("migrated", stem.source)


def test_without_migration_the_027_build_finds_no_record_like_tvms_own_lookup(store_026: Path, tmp_path: Path) -> None:
    artifact = build(tiny(), local(), cache_dir=tmp_path, records_dir=store_026, migrate=False)
    stem = row(artifact, TUNED_TASK)
    assert stem.schedule == "default"
    assert any(d.startswith("TVM 0.27") and d.endswith("!= 0.26.0") for d in stem.differs), stem.differs


def test_a_corrupted_trace_is_rejected_with_a_reason_and_not_applied(store_026: Path, tmp_path: Path) -> None:
    def damage(data: dict) -> None:
        first = next(inst for inst in data["tvm_record"][0][0] if inst[0] == "GetSBlock")
        first[2][0] = "no_such_block"

    store = edited_store(store_026, tmp_path / "records", damage)
    artifact = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=store)
    assert row(artifact, TUNED_TASK).schedule == "default"
    [problem] = [p for p in artifact.coverage.problems if "not migrated" in p]
    assert f"not migrated from TVM 0.26 to {TUNED_TASK}: its trace does not replay" in problem


def test_a_trace_of_another_operator_is_rejected_with_a_reason(store_026: Path, tmp_path: Path) -> None:
    import tvm

    target = tvm.target.Target(resolved_target(local()).as_tvm_dict())
    mod = lowering.import_model(tiny(), channels_last=local().channels_last)[0]  # as the build imports it
    tasks = schedule_tasks.extract_tasks(passes.fuse(mod, target), target)
    other = next(t for t in tasks if t.key.operator == "conv2d" and t.key.strides == (2, 2))  # a conv, not the stem

    def relabel(data: dict) -> None:  # the stem conv's trace, claimed for the stride-2 conv's workload
        data["workload"] = asdict(other.key)

    store = edited_store(store_026, tmp_path / "records", relabel)
    artifact = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=store)
    assert row(artifact, other.name).schedule != "migrated"
    [problem] = [p for p in artifact.coverage.problems if "not migrated" in p]
    assert f"to {other.name}: " in problem
    assert "does not replay" in problem or "computes other numbers" in problem


def test_a_trace_from_a_release_pair_without_a_table_entry_is_reported_not_applied(
    store_026: Path, tmp_path: Path
) -> None:
    def older(data: dict) -> None:
        data["provenance"]["tvm_version"] = "0.25.0"

    store = edited_store(store_026, tmp_path / "records", older)
    artifact = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=store)
    assert row(artifact, TUNED_TASK).schedule == "default"
    assert any("no migration table entry for TVM 0.25 -> 0.27" in p for p in artifact.coverage.problems)


def test_the_table_renames_instructions_and_attributes_of_its_release_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        migration_table.TABLE, ("0.26", "0.27"), Renames({"GetBlock": "GetSBlock"}, {"old.key": "new.key"})
    )
    trace = [[["GetBlock", [], ["conv", "main"], ["b0"]], ["Annotate", ["b0", 1], ["old.key"], []]], [[0, 2]]]
    assert translate_trace(trace, "0.26.0", "0.27.0.post1") == [
        [["GetSBlock", [], ["conv", "main"], ["b0"]], ["Annotate", ["b0", 1], ["new.key"], []]],
        [[0, 2]],
    ]
    with pytest.raises(NoTableEntry, match="0.25 -> 0.27"):
        translate_trace(trace, "0.25.0", "0.27.0")


def test_migrate_measures_the_schedule_on_the_board_and_keeps_it_as_a_027_record(
    store_026: Path, tmp_path: Path
) -> None:
    store = tmp_path / "records"
    shutil.copytree(store_026, store)
    proc = invoke("migrate", "--board", "local", "--model", "tiny", records=store)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"from 0.26 (records/{'/'.join(record_file(store_026).parts[-2:])})" in proc.stdout
    new = [s for s in load_store(store).records if s.record.provenance.tvm_version.startswith("0.27")]
    if "kept as" in proc.stdout:
        [record] = new
        assert record.record.provenance.migrated_from.startswith("0.26 (")
        artifact = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=store)
        assert row(artifact, TUNED_TASK).tuned
    else:
        assert "not kept: slower than the default schedule" in proc.stdout and not new
