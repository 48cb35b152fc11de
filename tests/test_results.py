"""Result files read back typed: every schema version written so far, byte for byte the same when
written again, and one clear error naming the file for a newer or broken one."""

import json
from pathlib import Path
from typing import Any

import pytest
from synthetic import latencies, synthetic_result, vgg16_coverage

from pipeline.deploy.results import SCHEMA_VERSION, UNKNOWN_STORE, DeployResult, load_result, write_result
from pipeline.errors import PipelineError

RESULT = synthetic_result(latencies(990, 10, 0), coverage=vgg16_coverage("tuned"))


def as_data(result: DeployResult) -> dict[str, Any]:
    return json.loads(result.to_json())


def written(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def build_table_task(task: str, flops: float, tuned: bool) -> dict[str, Any]:
    """A task of the build's coverage table as results of schema 1 wrote it (no fallback schedules yet)."""
    return {
        "task": task,
        "workload": f"{task} workload",
        "operator": "conv2d",
        "heavy": True,
        "calls": 1,
        "flops": flops,
        "share": 0.5,
        "tuned": tuned,
        "record": "",
        "nearest": "",
        "differs": [],
    }


def version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A result as schema 1 wrote it: no coverage entries, tuned share or record store version."""
    added_in_2 = ("coverage", "coverage_tuned_share", "record_store_version")
    return {**{key: value for key, value in data.items() if key not in added_in_2}, "schema_version": 1}


def test_a_result_file_reads_back_equal_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    path = write_result(RESULT, tmp_path)
    text = path.read_text()
    assert load_result(path) == RESULT
    assert load_result(path).to_json() == text
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION == 2


def test_a_schema_1_result_gets_its_coverage_from_the_build_table(tmp_path: Path) -> None:
    data = version_1(as_data(RESULT))
    data["build"]["coverage"] = {
        "tasks": [build_table_task("conv_a", 300.0, tuned=True), build_table_task("conv_b", 100.0, tuned=False)],
        "tuned_share": 0.75,
        "records_applicable": 1,
        "problems": [],
    }
    result = load_result(written(tmp_path, data))
    assert [(entry.task, entry.status, entry.schedule) for entry in result.coverage] == [
        ("conv_a", "tuned", ""),
        ("conv_b", "fallback", ""),
    ]
    assert result.coverage_tuned_share == 0.75
    assert result.record_store_version == UNKNOWN_STORE
    assert result.build.coverage.tasks[1].schedule == ""
    assert (result.timings, result.board_facts) == (RESULT.timings, RESULT.board_facts)


def test_a_schema_1_result_from_before_the_record_store_has_an_empty_table(tmp_path: Path) -> None:
    data = version_1(as_data(RESULT))
    del data["build"]["coverage"]
    result = load_result(written(tmp_path, data))
    assert (result.coverage, result.coverage_tuned_share) == ([], 0.0)
    assert result.build.coverage.tasks == ()


def test_a_schema_2_result_from_before_fallback_schedules_and_per_core_clocks_reads(tmp_path: Path) -> None:
    data = as_data(RESULT)
    for entry in data["coverage"]:
        del entry["schedule"]
    del data["board_facts"]["core_freq_khz"], data["board_facts"]["core_max_freq_khz"]
    result = load_result(written(tmp_path, data))
    assert {entry.schedule for entry in result.coverage} == {""}
    assert result.board_facts == RESULT.board_facts


def test_a_result_of_a_newer_schema_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = written(tmp_path, {**as_data(RESULT), "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(PipelineError, match=f"{path} has result schema version 3, this pipeline reads up to 2"):
        load_result(path)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**as_data(RESULT), "schema_version": "2"}), "no valid schema_version ('2')"),
        (json.dumps({key: value for key, value in as_data(RESULT).items() if key != "timings"}), "field 'timings'"),
    ],
)
def test_a_broken_result_is_one_error_naming_the_file_and_what_is_wrong(tmp_path: Path, text: str, detail: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(PipelineError) as error:
        load_result(path)
    assert str(path) in error.value.problem and detail in error.value.problem
    assert len(error.value.line()) <= 300
