"""Every build applies the records for its board's target and says which tasks run tuned schedules,
what share of the conv/dense FLOPs that is, and for each miss the nearest record and what differs."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tvm
from tuned_records import TUNED_TASK, copy_store, local, tiny, tuned_store
from tvm import relax

from pipeline.board.profile import CoverageSettings, load_board
from pipeline.compiler.builder import BuildArtifact, build, resolved_target
from pipeline.compiler.coverage import Coverage, TaskCoverage, check_policy, coverage_lines, resolve_policy
from pipeline.deploy.check import compare, reference_output
from pipeline.errors import PipelineError
from pipeline.records.store import compressed_ir, load_store, save_record, structural_hash, workload_module

pytestmark = pytest.mark.board  # sshd, qemu or TVM builds: the slow tier

OTHER_CONVS = {
    "fused_conv2d1_subtract_divide_multiply_add1_relu1",
    "fused_conv2d2_add2_maximum_minimum",
    "fused_conv2d3_add2_add3",
}
DENSE = "fused_matmul_add4"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tuned_store(tmp_path_factory)


@pytest.fixture(scope="module")
def tuned_build(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildArtifact:
    return build(tiny(), local(), cache_dir=tmp_path_factory.mktemp("cache"), records_dir=store_dir)


def rows(coverage: Coverage) -> dict[str, TaskCoverage]:
    return {row.task: row for row in coverage.tasks}


def test_a_build_with_a_record_for_one_conv_reports_that_conv_tuned_and_the_others_missing(
    tuned_build: BuildArtifact,
) -> None:
    table = rows(tuned_build.coverage)
    assert table[TUNED_TASK].tuned and table[TUNED_TASK].record.endswith(".json (local)")
    assert {row.task for row in tuned_build.coverage.missing} == OTHER_CONVS | {DENSE}
    heavy = [row for row in tuned_build.coverage.tasks if row.heavy]
    assert tuned_build.coverage.tuned_share == pytest.approx(table[TUNED_TASK].flops / sum(r.flops for r in heavy))
    assert sum(row.share for row in tuned_build.coverage.tasks) == pytest.approx(1.0)
    assert tuned_build.coverage.records_applicable == 1 and tuned_build.coverage.problems == ()
    assert table[TUNED_TASK].schedule == "tuned"
    assert {table[name].schedule for name in OTHER_CONVS | {DENSE}} <= {"transferred", "default"}
    assert tuned_build.coverage.naive == []


def test_a_result_records_each_task_by_its_workload_key_and_status(tuned_build: BuildArtifact) -> None:
    entries = {e.workload: e for e in tuned_build.coverage.result_entries()}
    stem = entries["conv2d NCHW 1x3x32x32 * 16x3x3x3 -> 1x16x32x32 s1,1 p1,1,1,1 d1,1 g1 float32 +add_relu"]
    assert (stem.task, stem.operator, stem.status) == (TUNED_TASK, "conv2d", "tuned")
    assert sorted(e.status for e in entries.values() if e.operator in ("conv2d", "group_conv2d", "matmul")) == [
        "fallback",
        "fallback",
        "fallback",
        "fallback",
        "tuned",
    ]
    fallbacks = [e.schedule for e in entries.values() if e.status == "fallback" and e.heavy]
    assert fallbacks and set(fallbacks) <= {"transferred", "default"}


def test_a_miss_names_the_nearest_record_and_what_differs(tuned_build: BuildArtifact) -> None:
    pointwise = rows(tuned_build.coverage)["fused_conv2d3_add2_add3"]
    assert pointwise.nearest.endswith(".json")
    assert "input shape 1x32x16x16 != 1x3x32x32" in pointwise.differs
    assert "padding 0x0x0x0 != 1x1x1x1" in pointwise.differs
    assert "epilogue add_add != add_relu" in pointwise.differs
    depthwise = rows(tuned_build.coverage)["fused_conv2d2_add2_maximum_minimum"]
    assert depthwise.nearest == "" and depthwise.differs == ("no record for group_conv2d",)


def test_the_tuned_build_still_computes_the_model(tuned_build: BuildArtifact) -> None:
    spec = tiny()
    data = np.random.default_rng(0).standard_normal(spec.input_shape, dtype=np.float32)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tuned_build.library)), tvm.cpu())
    params = tvm.runtime.load_param_dict_from_file(str(tuned_build.params))
    output = vm["main"](tvm.runtime.tensor(data), *(params[name] for name in sorted(params))).numpy()
    assert compare(output, reference_output(spec.path, spec.input_name, data)).passed


def test_the_table_shows_each_conv_and_the_tuned_share(tuned_build: BuildArtifact) -> None:
    text = "\n".join(coverage_lines(tuned_build.coverage))
    assert f"{TUNED_TASK:44}" in text and "tuned  " in text
    # the four untuned conv/dense tasks run fallback schedules, transferred from the record or default
    transferred = [line for line in text.splitlines() if "  transferred from " in line]
    assert len(transferred) + text.count("default  (rule ") == 4
    assert all(".json: record conv2d_nchw " in line for line in transferred)  # the donor's file and shape
    assert "NAIVE" not in text
    assert "nearest: none: no record for group_conv2d" in "\n".join(coverage_lines(tuned_build.coverage, verbose=True))
    assert f"conv/dense FLOPs tuned: {tuned_build.coverage.tuned_share:.0%} (1 of 5 workloads; 1 records" in text


def test_a_record_for_another_target_is_not_applied(store_dir: Path, tmp_path: Path) -> None:
    (stored,) = load_store(store_dir).records
    other = tmp_path / "records"
    save_record(replace(stored.record, target=resolved_target(load_board("rk3399-emu"))), other)
    artifact = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=other)
    row = rows(artifact.coverage)[TUNED_TASK]
    assert not row.tuned and artifact.coverage.tuned_share == 0.0
    assert row.nearest.startswith("records/aarch64-cortex-a72-")
    (difference,) = row.differs
    assert (
        difference.startswith("target x86_64-linux-gnu/")
        and "!= aarch64-linux-gnu/cortex-a72/2 cores/+neon" in difference
    )


def test_a_record_from_another_tvm_release_is_not_applied(store_dir: Path, tmp_path: Path) -> None:
    (stored,) = load_store(store_dir).records
    older = replace(stored.record, provenance=replace(stored.record.provenance, tvm_version="0.26.0"))
    save_record(older, tmp_path / "records")
    row = rows(build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=tmp_path / "records").coverage)[
        TUNED_TASK
    ]
    assert not row.tuned and row.differs == (f"TVM {tvm.__version__} != 0.26.0",)


def test_a_record_for_the_same_workload_but_other_ir_is_explained_as_such(store_dir: Path, tmp_path: Path) -> None:
    """The seed report's failure: a conv tuned on a module that differs only in a function attribute
    (here the `op_pattern` that AnnotateTIROpPattern adds) has the same semantic key but never hits."""
    (stored,) = load_store(store_dir).records
    mod = workload_module(stored.record)
    annotated = tvm.IRModule({"main": mod["main"].with_attr("op_pattern", 4)})
    other_ir = replace(stored.record, structural_hash=structural_hash(annotated), ir=compressed_ir(annotated))
    save_record(other_ir, tmp_path / "records")
    artifact = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=tmp_path / "records")
    row = rows(artifact.coverage)[TUNED_TASK]
    assert not row.tuned and artifact.coverage.problems == ()
    assert row.differs == ("IR differs: same workload key, but TVM's structural hash does not match",)


def test_a_corrupt_record_is_skipped_with_a_message_and_the_good_one_still_applies(
    store_dir: Path, tmp_path: Path
) -> None:
    store = copy_store(store_dir, tmp_path / "records")
    (good,) = store.rglob("*.json")
    good.with_name("conv2d-0.json").write_text(good.read_text()[:100])
    document = json.loads(good.read_text())
    document["ir"] = "bm90IFRWTSBJUg=="
    good.with_name("conv2d-1.json").write_text(json.dumps(document))
    artifact = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=store)
    assert rows(artifact.coverage)[TUNED_TASK].tuned
    assert [p.split(": skipped: ")[0].rsplit("/", 1)[1] for p in artifact.coverage.problems] == [
        "conv2d-0.json",
        "conv2d-1.json",
    ]


def test_adding_a_record_rebuilds_and_an_unchanged_store_reuses_the_build(store_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "records"
    untuned = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=store)
    assert untuned.coverage.tuned_share == 0.0 and len(untuned.coverage.missing) == 5
    copy_store(store_dir, store)
    tuned = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=store)
    assert not tuned.cached and tuned.key != untuned.key and rows(tuned.coverage)[TUNED_TASK].tuned
    again = build(tiny(), local(), cache_dir=tmp_path / "cache", records_dir=store)
    assert again.cached and again.coverage == tuned.coverage


def test_refuse_stops_below_the_threshold_with_one_clear_line(tuned_build: BuildArtifact) -> None:
    refuse = CoverageSettings(policy="refuse", min_tuned_flops=0.9)
    with pytest.raises(PipelineError) as raised:
        check_policy(tuned_build.coverage, refuse, "local", "tiny")
    share = f"{tuned_build.coverage.tuned_share:.0%}"
    assert raised.value.problem == (
        f"only {share} of conv/dense FLOPs run tuned schedules (2 conv2d, 1 group_conv2d, 1 matmul workloads missing)"
    )
    assert raised.value.fix == (
        "invoke tune --board local --model tiny, or lower coverage.min_tuned_flops (now 0.9) in boards/local.yaml"
    )
    assert "\n" not in str(raised.value)


def test_warn_reports_the_same_line_and_a_met_threshold_says_nothing(tuned_build: BuildArtifact) -> None:
    warning = check_policy(tuned_build.coverage, CoverageSettings(policy="warn"), "local", "tiny")
    assert warning is not None and warning.startswith("warning: only ")
    met = CoverageSettings(policy="refuse", min_tuned_flops=tuned_build.coverage.tuned_share)
    assert check_policy(tuned_build.coverage, met, "local", "tiny") is None


def test_the_profile_sets_the_policy_and_flags_override_it(tmp_path: Path) -> None:
    profile = tmp_path / "strict.yaml"
    local_yaml = (Path(__file__).parent.parent / "boards" / "local.yaml").read_text()
    profile.write_text(local_yaml + "coverage:\n  policy: refuse\n  min_tuned_flops: 0.75\n")
    section = load_board(str(profile)).coverage
    assert resolve_policy(section) == CoverageSettings(policy="refuse", min_tuned_flops=0.75)
    assert resolve_policy(section, policy="warn", min_tuned_flops=0.5) == CoverageSettings(
        policy="warn", min_tuned_flops=0.5
    )
    assert resolve_policy(None) == CoverageSettings(policy="warn", min_tuned_flops=0.9)


@pytest.mark.parametrize(
    ("policy", "minimum", "message"),
    [("strict", None, "unknown coverage policy 'strict'"), (None, 1.5, "--min-tuned-flops 1.5 is not a fraction")],
)
def test_bad_policy_flags_are_one_line_errors(policy: str | None, minimum: float | None, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        resolve_policy(None, policy=policy, min_tuned_flops=minimum)


def test_a_bad_coverage_section_in_a_profile_is_a_one_line_error(tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    local_yaml = (Path(__file__).parent.parent / "boards" / "local.yaml").read_text()
    profile.write_text(local_yaml + "coverage:\n  policy: sometimes\n")
    with pytest.raises(PipelineError, match=r"field 'coverage.policy'"):
        load_board(str(profile))


def untuned(task: str, schedule: str, source: str) -> TaskCoverage:
    """A conv task of 50 FLOPs, half the model's, with no record of its operator in the store."""
    return TaskCoverage(
        task, f"{task} key", "conv2d", True, 1, 50.0, 0.5, False, "", "", ("no record for conv2d",), schedule, source
    )


def test_a_conv_without_any_schedule_is_shown_naive_loudly() -> None:
    """A conv/dense task that got neither a record nor a fallback schedule is named NAIVE, and counted."""
    row = untuned
    coverage = Coverage(
        (row("conv_a", "naive", "no default schedule applies to conv_a"), row("conv_b", "default", "ch16/sketch1")),
        0.0,
        0,
        (),
    )
    text = "\n".join(coverage_lines(coverage))
    assert "NAIVE  (no schedule: no default schedule applies to conv_a;" in text
    assert "default  (rule ch16/sketch1)" in text
    assert "untuned conv/dense: 0 migrated, 0 transferred, 1 default, 1 naive" in text
    assert [r.task for r in coverage.naive] == ["conv_a"]
    assert [e.schedule for e in coverage.result_entries()] == ["naive", "default"]
    assert {e.status for e in coverage.result_entries()} == {"fallback"}


def test_the_table_is_one_line_per_task_and_verbose_adds_shapes_and_nearest_records() -> None:
    """VGG-16's table took three lines per task before anything was pushed: the detail is asked for."""
    coverage = Coverage((untuned("conv_a", "default", "ch16/sketch1"), untuned("conv_b", "default", "ch8")), 0.0, 0, ())
    short, verbose = coverage_lines(coverage), coverage_lines(coverage, verbose=True)
    assert [line.split()[0] for line in short[1:3]] == ["conv_a", "conv_b"]
    assert short[3].startswith("conv/dense FLOPs tuned: 0% (0 of 2 workloads")
    assert "conv_a key" not in "\n".join(short) and "nearest" not in "\n".join(short)
    assert len(verbose) == len(short) + 4
    assert verbose[2].strip() == "conv_a key" and verbose[3].strip() == "nearest: none: no record for conv2d"
    assert [line for line in verbose if line.startswith("conv/dense")] == [short[3]]
