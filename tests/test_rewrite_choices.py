"""A tuned schedule is never replaced by an unmeasured one: a conv whose direct task has a record stays
direct (and NCHW) whatever rewrite it is eligible for, a stored measured choice decides where there is
one, and a conv without either takes the rule's choice."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.board.profile import TargetSpec, load_board
from pipeline.compiler import builder, passes
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.compiler.rewrite_choices import plan_rewrites
from pipeline.compiler.rewrites import channels_last, winograd
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.records.choices import Candidate, Choice, StoredChoice, load_choices, save_choice
from pipeline.records.store import Provenance, Record, StoredRecord, load_store
from pipeline.records.workloads import WorkloadKey

ARM_DICT = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 2}
ARM = TargetSpec.model_validate(ARM_DICT)


def two_convs(stride: int = 1) -> Any:
    """main(x, w1, b1, w2, b2): two 3x3 convs (64 -> 64 -> 128 channels) with bias and ReLU, one after the other."""
    from tvm import relax

    from pipeline.tvm_release.compat import TensorType as tensor

    block = relax.BlockBuilder()
    x = relax.Var("x", tensor((1, 64, 16, 16), "float32"))
    weights = [relax.Var(f"w{i}", tensor((k, 64, 3, 3), "float32")) for i, k in ((1, 64), (2, 128))]
    biases = [relax.Var(f"b{i}", tensor((1, k, 1, 1), "float32")) for i, k in ((1, 64), (2, 128))]
    with block.function("main", [x, weights[0], biases[0], weights[1], biases[1]], attrs={"num_input": 1}):
        with block.dataflow():
            first = block.emit(relax.op.nn.conv2d(x, weights[0], strides=stride, padding=1))
            first = block.emit(relax.op.nn.relu(relax.op.add(first, biases[0])))
            second = block.emit(relax.op.nn.conv2d(first, weights[1], strides=stride, padding=1))
            out = block.emit_output(relax.op.nn.relu(relax.op.add(second, biases[1])))
        block.emit_func_output(out)
    return block.get()


def record_for(mod: Any, target: Any, weight: str) -> StoredRecord:
    """A stand-in record of the direct task of one conv: the plan reads only its hash and provenance."""
    from pipeline.compiler.rewrite_choices import _conv_tasks, _lifted_structure

    fused = passes.fuse(_lifted_structure(mod), target)
    task_name = _conv_tasks(mod, fused)[weight]
    (task,) = [t for t in schedule_tasks.extract_tasks(fused, target) if t.name == task_name]
    provenance = Provenance("0.27.0", "rk3399-emu", "two", task.name, "2026-12-08T00:00:00Z", 10.0, 2, True)
    record = Record(task.key, ARM, task.structural_hash, provenance, "", [])
    return StoredRecord(Path("records/aarch64/conv2d-1.json"), record, "d1")


def choice_for(key: WorkloadKey, direct_ms: float, winograd_ms: float) -> StoredChoice:
    candidates = (
        Candidate("direct", 0, direct_ms, "records/aarch64/conv2d-1.json"),
        Candidate("winograd", 4, winograd_ms, "winograd"),
    )
    choice = Choice("winograd", key, ARM, "rk3399-emu", "0.27.0", "recipe 1", True, "2026-12-08", candidates)
    return StoredChoice(Path("records/aarch64/choices/winograd-1.json"), choice, "c1")


@pytest.fixture(scope="module")
def arm() -> Any:
    import tvm

    return tvm.target.Target(ARM_DICT)


def test_a_conv_with_a_record_stays_direct_and_one_without_takes_the_rule(arm: Any) -> None:
    mod = two_convs()
    plan = plan_rewrites(mod, arm, [record_for(mod, arm, "w1")], [])
    assert plan.keeps_direct("w1") and not plan.keeps_direct("w2")
    _, done = winograd.rewrite(mod, recorded=plan.winograd_timings())
    assert [(c.weight, c.chosen) for c in done] == [("w1", False), ("w2", True)]
    report = winograd.report(mod, done, {"w2": _weights()})
    assert "Winograd: kept direct, tuned record and no measured choice: 1 convs (conv2d #1)" in report.lines()


def test_without_records_or_choices_the_plan_is_empty_and_every_eligible_conv_takes_the_rule(arm: Any) -> None:
    mod = two_convs()
    plan = plan_rewrites(mod, arm, [], [])
    assert not plan.recorded and not plan.choices
    _, done = winograd.rewrite(mod, recorded=plan.winograd_timings())
    assert all(c.chosen for c in done)


def test_a_stored_measured_choice_decides_over_the_record(arm: Any) -> None:
    mod = two_convs()
    stored = record_for(mod, arm, "w1")
    faster_winograd = choice_for(stored.record.workload, direct_ms=2.3, winograd_ms=1.0)
    plan = plan_rewrites(mod, arm, [stored], [], [faster_winograd])
    assert not plan.keeps_direct("w1")
    _, done = winograd.rewrite(mod, recorded=plan.winograd_timings())
    assert done[0].chosen and done[0].plan.m == 4
    assert faster_winograd.choice.summary() == (
        "winograd (measured 2.3x faster than the tuned direct record on rk3399-emu, emulated)"
    )
    slower = choice_for(stored.record.workload, direct_ms=1.0, winograd_ms=1.8)
    assert plan_rewrites(mod, arm, [stored], [], [slower]).keeps_direct("w1")
    assert slower.choice.summary() == "tuned direct (measured 1.8x faster than winograd on rk3399-emu, emulated)"


def test_a_strided_conv_with_a_record_stays_nchw(arm: Any) -> None:
    mod = two_convs(stride=2)
    plan = plan_rewrites(mod, arm, [record_for(mod, arm, "w1")], [])
    _, report = channels_last.rewrite(mod, plan.direct_weights())
    assert (report.convs, report.kept_tuned) == (1, 1)
    assert "Channels-last: 1 strided convs kept NCHW, tuned record" in report.lines()


def test_choices_are_kept_beside_the_records_and_change_the_build_key(arm: Any, tmp_path: Path) -> None:
    mod = two_convs()
    key = record_for(mod, arm, "w1").record.workload
    path = save_choice(choice_for(key, 1.0, 2.0).choice, tmp_path)
    assert path.parent.name == "choices"
    (loaded,), problems = load_choices(ARM, "0.27.0", tmp_path)
    assert loaded.choice == choice_for(key, 1.0, 2.0).choice and not problems
    assert load_choices(ARM, "0.26.0", tmp_path)[0] == []  # another release: its choice does not apply
    assert load_choices(ARM.model_copy(update={"num_cores": 4}), "0.27.0", tmp_path)[0] == []
    assert load_store(tmp_path).problems == ()  # not a record, and not a damaged one either
    model, board = resolve_model("tiny"), load_board("rk3399-emu")
    assert builder.build_key(model, board) != builder.build_key(model, board, choices=[loaded])
    assert builder.build_key(model, board) != builder.build_key(model, board, host_timings="ab12")
    assert builder.build_key(model, board, choices=[loaded]) != builder.build_key(
        model, board, choices=[replace(loaded, digest="other")]
    )


def _weights() -> Any:
    import numpy as np

    return np.random.default_rng(0).standard_normal((128, 64, 3, 3)).astype("float32")


def host_record(mod: Any, target: Any, weight: str) -> StoredRecord:
    """A real record for this host of one conv's direct task: its default schedule, as if tuned."""
    from tvm.s_tir import meta_schedule as ms

    from pipeline.compiler.rewrite_choices import _conv_tasks, _lifted_structure
    from pipeline.compiler.schedules.default_schedules import default_schedule
    from pipeline.records.store import record_from_tuning

    fused = passes.fuse(_lifted_structure(mod), target)
    task_name = _conv_tasks(mod, fused)[weight]
    (task,) = [t for t in schedule_tasks.extract_tasks(fused, target) if t.name == task_name]
    schedule = default_schedule(task.extracted.dispatched[0], target, task.name)
    assert schedule is not None
    database = ms.database.MemoryDatabase()
    tuning = ms.database.TuningRecord(
        schedule.trace,
        database.commit_workload(schedule.workload),
        run_secs=[1e-3],
        target=target,
        args_info=ms.arg_info.ArgInfo.from_prim_func(schedule.workload["main"]),
    )
    dict_target = builder.resolved_target(load_board("local"))
    record = record_from_tuning(tuning, task.key, dict_target, "local", "two", task.name, 1, False)
    return StoredRecord(Path("records/x86_64/conv2d-1.json"), record, "d1")


def test_on_this_host_a_tuned_conv_races_its_record_against_winograd_once_per_cpu(tmp_path: Path) -> None:
    import tvm

    target = tvm.target.Target(builder.resolved_target(load_board("local")).as_tvm_dict())
    mod = two_convs()
    plan = plan_rewrites(mod, target, [host_record(mod, target, "w1")], [], cache_dir=tmp_path)
    choice = plan.choices["w1"].choice
    assert [(c.form, c.tile) for c in choice.candidates] == [("direct", 0), ("winograd", 2), ("winograd", 4)]
    assert choice.candidates[0].schedule == "records/x86_64/conv2d-1.json" and all(c.ms > 0 for c in choice.candidates)
    assert plan.keeps_direct("w1") == (choice.chosen == "direct")
    assert "w2" not in plan.choices  # no record: measured (or ruled) by the rewrite as before
    (timings,) = (tmp_path / "winograd").glob("*.json")
    again = plan_rewrites(mod, target, [host_record(mod, target, "w1")], [], cache_dir=tmp_path)
    assert again.choices["w1"].choice == choice  # read back, not measured again
    assert timings.is_file()


def small_cnn(path: Path) -> Path:
    """A 3-channel stem and two eligible 3x3 convs of 32 channels (the second with another epilogue)."""
    import onnx

    from models.graph import GraphBuilder

    g = GraphBuilder(7, "data", (1, 3, 16, 16))
    x = g.relu(g.conv(g.input, 32, 3))
    y = g.relu(g.conv(x, 32, 3))
    x = g.add(g.conv(y, 32, 3), x)
    x = g.flatten(g.global_avg_pool(x), features=x.channels)
    onnx.save(g.finish("small_cnn", g.gemm(x, 10, gain=1.0)), path)
    return path


@pytest.mark.board
def test_tune_choices_only_times_a_tuned_conv_on_the_board_and_the_build_applies_the_choice(tmp_path: Path) -> None:
    import tvm

    from pipeline.compiler import lowering
    from pipeline.compiler.choice_candidates import eligible_shapes
    from pipeline.compiler.coverage import coverage_lines
    from pipeline.records.store import save_record
    from pipeline.tuning.tuner import tune

    spec, board = resolve_model(str(small_cnn(tmp_path / "small_cnn.onnx"))), load_board("local")
    target = tvm.target.Target(builder.resolved_target(board).as_tvm_dict())
    mod = lowering.import_model(spec)[0]
    weight = sorted(eligible_shapes(mod))[0]
    records = tmp_path / "records"
    stored = host_record(mod, target, weight)
    save_record(stored.record, records)

    result = tune(spec, board, 1, records_dir=records, cache_dir=tmp_path / "cache", choices_only=True)
    assert result.tuned == () and len(result.choices) == 1
    (loaded,), _ = load_choices(builder.resolved_target(board), tvm.__version__, records)
    choice = loaded.choice
    assert (choice.board, choice.emulated, choice.workload) == ("local", False, stored.record.workload)
    assert [c.form for c in choice.candidates] == ["direct", "winograd", "winograd"]
    assert choice.candidates[0].schedule.endswith(".json") and all(c.ms > 0 for c in choice.candidates)

    artifact = builder.build(spec, board, cache_dir=tmp_path / "cache", records_dir=records)
    labelled = [t for t in artifact.coverage.tasks if t.choice == choice.summary()]
    assert labelled, "\n".join(coverage_lines(artifact.coverage))
    kept = [layer.name for layer in artifact.winograd.kept_direct]
    assert bool(kept) == (choice.chosen == "direct")


def test_a_form_measured_faster_than_the_tuned_record_counts_as_covered() -> None:
    from pipeline.compiler.coverage import Coverage, TaskCoverage, coverage_lines, with_choices

    def row(task: str, flops: float, tuned: bool) -> TaskCoverage:
        return TaskCoverage(task, f"{task} key", "conv2d", True, 1, flops, 0.0, tuned, "", "", ())

    coverage = Coverage((row("direct", 1.0, True), row("winograd_gemm", 3.0, False)), 0.25, 1, ())
    faster = "winograd (measured 2.3x faster than the tuned direct record on rk3399-emu, emulated)"
    labelled = with_choices(coverage, {"direct": ("rule", False), "winograd_gemm": (faster, True)})
    assert labelled.tuned_share == 1.0 and labelled.missing == []
    assert any(line.endswith(f"; {faster}") for line in coverage_lines(labelled))
    unmeasured = with_choices(coverage, {"winograd_gemm": ("rule", False)})
    assert unmeasured.tuned_share == 0.25 and [r.task for r in unmeasured.missing] == ["winograd_gemm"]
