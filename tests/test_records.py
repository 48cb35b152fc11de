"""The record store: our JSON files round-trip into a MetaSchedule database, are filtered by target and
TVM release, keep the faster record per workload, and a bad file is reported and skipped, never fatal."""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tvm
from tuned_records import TUNED_TASK, copy_store, local, tiny, tuned_store, work_dir

from pipeline.board.profile import load_board
from pipeline.compiler.builder import resolved_target
from pipeline.compiler.lowering import import_model
from pipeline.compiler.passes import fuse
from pipeline.compiler.schedules.tasks import extract_tasks
from pipeline.records.store import (
    FORMAT,
    load_store,
    record_path,
    same_release,
    save_record,
    to_database,
)
from pipeline.tuning.tuner import plan_trials, tune

pytestmark = pytest.mark.board  # the store fixture tunes with TVM: the slow tier


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tuned_store(tmp_path_factory)


@pytest.fixture
def store_copy(store_dir: Path, tmp_path: Path) -> Path:
    return copy_store(store_dir, tmp_path / "records")


def the_record_file(store: Path) -> Path:
    (path,) = store.rglob("*.json")
    return path


def test_a_record_file_says_what_was_tuned_where_and_how_fast(store_dir: Path) -> None:
    document = json.loads(the_record_file(store_dir).read_text())
    assert document["format"] == FORMAT
    assert document["key"] == "conv2d NCHW 1x3x32x32 * 16x3x3x3 -> 1x16x32x32 s1,1 p1,1,1,1 d1,1 g1 float32 +add_relu"
    assert document["target"] == resolved_target(local()).as_tvm_dict()
    provenance = document["provenance"]
    assert provenance["tvm_version"] == tvm.__version__
    assert (provenance["board"], provenance["model"], provenance["task"]) == ("local", "tiny", TUNED_TASK)
    assert provenance["latency_us"] > 0 and 1 <= provenance["trials"] <= 4 + 1  # the trials and the default
    assert the_record_file(store_dir).stat().st_size < 16_000  # the IR is stored compressed


def test_records_round_trip_into_a_metaschedule_database(store_dir: Path) -> None:
    store = load_store(store_dir)
    (stored,) = store.for_target(resolved_target(local()), tvm.__version__)
    database, by_hash, problems = to_database([stored])
    assert problems == [] and list(by_hash) == [stored.record.structural_hash]
    assert len(database.get_all_tuning_records()) == 1


def test_records_for_another_target_or_tvm_release_are_not_offered(store_dir: Path) -> None:
    store = load_store(store_dir)
    rk3399 = resolved_target(load_board("rk3399-emu"))
    assert store.for_target(rk3399, tvm.__version__) == []
    assert store.for_target(resolved_target(local()), "0.25.0") == []
    assert same_release("0.27.0.post1", "0.27.0") and not same_release("0.27.0", "0.26.0")


def test_a_record_for_another_target_is_stored_beside_not_over_the_original(store_copy: Path) -> None:
    (stored,) = load_store(store_copy).records
    rk3399 = resolved_target(load_board("rk3399-emu"))
    path = save_record(replace(stored.record, target=rk3399), store_copy)
    assert path != stored.path and path.parent.name.startswith("aarch64-cortex-a72-")
    assert len(load_store(store_copy).records) == 2


def test_the_store_version_changes_with_its_contents(store_copy: Path) -> None:
    (stored,) = load_store(store_copy).records
    before = load_store(store_copy).version
    save_record(replace(stored.record, target=resolved_target(load_board("rk3399-emu"))), store_copy)
    assert load_store(store_copy).version != before and len(before) == 12


def test_saving_keeps_the_faster_record_of_a_workload(store_copy: Path) -> None:
    (stored,) = load_store(store_copy).records
    slower = replace(stored.record, provenance=replace(stored.record.provenance, latency_us=1e9))
    faster = replace(stored.record, provenance=replace(stored.record.provenance, latency_us=0.5))
    assert save_record(slower, store_copy) == stored.path
    assert load_store(store_copy).records[0].record.provenance.latency_us == stored.record.provenance.latency_us
    save_record(faster, store_copy)
    assert load_store(store_copy).records[0].record.provenance.latency_us == 0.5


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text[: len(text) // 2], "invalid JSON at line"),
        (lambda text: text.replace('"format": "tvm-pipeline-record/1"', '"format": "other"'), "not a tvm-pipeline"),
        (lambda text: text.replace('"latency_us": ', '"latency_us": "fast", "x": '), "field 'provenance.latency_us'"),
    ],
    ids=["truncated", "foreign-format", "bad-field"],
)
def test_an_unreadable_record_is_reported_and_the_others_still_load(store_copy: Path, damage, message: str) -> None:
    good = the_record_file(store_copy)
    bad = good.with_name("conv2d-0.json")
    bad.write_text(damage(good.read_text()))
    store = load_store(store_copy)
    assert [s.path for s in store.records] == [good]
    (problem,) = store.problems
    assert problem.startswith(f"{store_copy.name}/{good.parent.name}/conv2d-0.json: skipped: ") and message in problem


def break_ir(document: dict) -> None:
    document["ir"] = "bm90IFRWTSBJUg=="


def break_trace(document: dict) -> None:
    document["tvm_record"][0][0][0][0] = "NoSuchInstruction"


@pytest.mark.parametrize("damage", [break_ir, break_trace], ids=["ir", "trace"])
def test_a_record_tvm_rejects_is_reported_and_the_others_still_apply(store_copy: Path, damage) -> None:
    good = the_record_file(store_copy)
    document = json.loads(good.read_text())
    damage(document)
    good.with_name("conv2d-1.json").write_text(json.dumps(document))
    store = load_store(store_copy)
    assert len(store.records) == 2 and not store.problems  # readable files: only TVM can tell they are bad
    database, by_hash, problems = to_database(list(store.records))
    assert [s.path for s in by_hash.values()] == [good]
    (problem,) = problems
    assert "/conv2d-1.json: skipped: " in problem
    assert len(database.get_all_tuning_records()) == 1


def test_records_live_in_one_file_per_target_and_workload(store_dir: Path) -> None:
    (stored,) = load_store(store_dir).records
    assert record_path(stored.record, store_dir) == stored.path
    assert stored.path.name == f"conv2d-{stored.record.structural_hash}.json"


def test_a_record_whose_ir_does_not_match_its_hash_is_rejected(store_copy: Path) -> None:
    good = the_record_file(store_copy)
    document = json.loads(good.read_text())
    document["structural_hash"] = "1"
    good.write_text(json.dumps(document))
    database, by_hash, problems = to_database(list(load_store(store_copy).records))
    assert by_hash == {} and len(database.get_all_tuning_records()) == 0
    (problem,) = problems
    assert problem.endswith("skipped: the IR does not match structural_hash (edited or written by another TVM)")


def test_tuning_again_resumes_from_the_work_database_without_new_trials(
    store_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fresh = tmp_path_factory.mktemp("records")
    result = tune(tiny(), local(), 4, records_dir=fresh, cache_dir=work_dir(tmp_path_factory), only=(TUNED_TASK,))
    assert (result.tuned, result.already_covered) == ((), (TUNED_TASK,))
    assert [without_creation_time(p) for p in result.saved] == [without_creation_time(the_record_file(store_dir))]


def without_creation_time(path: Path) -> dict[str, Any]:
    """A re-export stamps the time it was written; everything else must be identical."""
    document = json.loads(path.read_text())
    del document["provenance"]["created"]
    return document


def test_a_small_budget_goes_to_the_largest_tasks_first() -> None:
    target = tvm.target.Target(resolved_target(local()).as_tvm_dict())
    heavy = [t for t in extract_tasks(fuse(import_model(tiny())[0], target), target) if t.key.heavy]
    chosen, per_task = plan_trials(heavy, 32)
    assert per_task == 16 and [t.flops for t in chosen] == sorted((t.flops for t in heavy), reverse=True)[:2]
    assert plan_trials(heavy, 4) == (chosen[:1], 4)
    assert len(plan_trials(heavy, 1000)[0]) == len(heavy)


def test_tuning_starts_from_the_measured_default_schedule_so_it_never_ends_slower(
    store_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tvm.s_tir import meta_schedule as ms

    from pipeline.compiler.schedules.default_schedules import default_schedule
    from pipeline.records.store import target_slug
    from pipeline.tvm_release.catalog import release_name

    target = tvm.target.Target(resolved_target(local()).as_tvm_dict())
    (task,) = [t for t in extract_tasks(fuse(import_model(tiny())[0], target), target) if t.name == TUNED_TASK]
    default = default_schedule(task.extracted.dispatched[0], target, task.name)
    measured_dir = (
        work_dir(tmp_path_factory)
        / "tuning"
        / release_name(tvm.__version__)
        / target_slug(resolved_target(local()))
        / "tiny"
    )
    database = ms.database.JSONDatabase(
        path_workload=str(measured_dir / "workloads.json"), path_tuning_record=str(measured_dir / "records.json")
    )
    measured = database.get_top_k(database.commit_workload(default.workload), 1 << 20)
    (default_seconds,) = [sum(r.run_secs) / len(r.run_secs) for r in measured if str(r.trace) == str(default.trace)]
    saved = json.loads(the_record_file(store_dir).read_text())["provenance"]["latency_us"]
    assert saved <= default_seconds * 1e6 + 1e-3


def test_a_board_where_measurements_are_slow_spreads_a_small_budget_over_every_task() -> None:
    target = tvm.target.Target(resolved_target(local()).as_tvm_dict())
    heavy = [t for t in extract_tasks(fuse(import_model(tiny())[0], target), target) if t.key.heavy]
    chosen, per_task = plan_trials(heavy, 2 * len(heavy), least=2)
    assert (len(chosen), per_task) == (len(heavy), 2)
