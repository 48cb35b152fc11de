"""Cause attribution: what changed between the baseline and the flagged result, most likely first."""

from synthetic import HEALTHY, coverage_entry, hot, latencies, synthetic_result, vgg16_coverage

from pipeline.deploy.execute import KernelTime
from pipeline.nightly.causes import changed_tasks, likely_causes
from pipeline.nightly.provenance import RunProvenance

RUNS = latencies(990.0, 10, 0)


def kinds(causes: list) -> list[str]:
    return [cause.kind for cause in causes]


def test_the_vgg16_story_names_the_conv2d_workloads_that_lost_their_schedules_first() -> None:
    before = synthetic_result(RUNS, tvm_version="0.26.0", coverage=vgg16_coverage("tuned"))
    after = synthetic_result(RUNS, tvm_version="0.27.0", coverage=vgg16_coverage("fallback"))
    causes = likely_causes(before, after)
    assert kinds(causes) == ["coverage_lost", "tvm_version"]
    lost = causes[0].detail
    assert lost.startswith("9 conv2d workloads lost their tuned schedule")
    assert "conv2d(1x3x224x224, 64x3x3x3)" in lost and "and 4 more" in lost
    assert "dense" not in lost  # the dense layers never had a tuned schedule
    assert causes[1].detail == "TVM version changed: 0.26.0 -> 0.27.0"


def test_a_rising_untuned_share_is_reported_when_workload_keys_do_not_match() -> None:
    before = [coverage_entry("t1", "old-key", 90.0, "tuned"), coverage_entry("t2", "d", 10.0, "fallback")]
    after = [coverage_entry("t1", "new-key", 90.0, "fallback"), coverage_entry("t2", "d", 10.0, "fallback")]
    [cause] = likely_causes(synthetic_result(RUNS, coverage=before), synthetic_result(RUNS, coverage=after))
    assert cause.kind == "coverage_lost"
    assert cause.detail == "share of the FLOPs without a tuned schedule went from 10% to 100%"


def test_results_without_a_coverage_table_are_compared_on_everything_else() -> None:
    before = synthetic_result(RUNS, coverage=vgg16_coverage("tuned"))
    after = synthetic_result(RUNS, threads=1)
    assert kinds(likely_causes(before, after)) == ["threads"]


def test_a_changed_target_lists_the_fields_that_changed() -> None:
    before = synthetic_result(RUNS)
    after = synthetic_result(RUNS, target=before.target.with_cpu("generic"))
    [cause] = likely_causes(before, after)
    assert cause.detail == "target changed: mcpu cortex-a72 -> generic"


def test_a_hot_board_at_a_lower_clock_and_a_non_performance_governor_is_throttling() -> None:
    throttled = hot(temperature_c=82.5, cur_freq_khz=1416000, governor="ondemand")
    causes = likely_causes(synthetic_result(RUNS), synthetic_result(RUNS, facts=throttled))
    assert [cause.detail for cause in causes] == [
        "board ran hot: 82.5 °C (was 45.0 °C)",
        "CPU clock lower: cpu0 1800 -> 1416 MHz",
        "CPU governor is ondemand (was performance), not performance: the clock may vary",
    ]


RK3399_MAX = {"cpu0": 1416000, "cpu1": 1416000, "cpu2": 1416000, "cpu3": 1416000, "cpu4": 1800000, "cpu5": 1800000}


def test_throttled_big_cores_are_seen_although_cpu0_runs_at_full_clock() -> None:
    """On the RK3399 the model runs on the A72 cores cpu4 and cpu5; cpu0 is a little core."""
    cool = hot(core_freq_khz=RK3399_MAX, core_max_freq_khz=RK3399_MAX, cur_freq_khz=1416000)
    throttled = hot(cool, core_freq_khz={**RK3399_MAX, "cpu4": 1200000, "cpu5": 1200000})
    causes = likely_causes(synthetic_result(RUNS, facts=cool), synthetic_result(RUNS, facts=throttled))
    assert [cause.detail for cause in causes] == [
        "CPU clock lower: cpu4 1800 -> 1200 MHz, cpu5 1800 -> 1200 MHz",
        "below the maximum clock under the performance governor: cpu4 1200 of 1800 MHz, cpu5 1200 of 1800 MHz",
    ]


def test_a_board_without_sysfs_facts_gives_no_throttling_guess() -> None:
    blind = hot(governor=None, cur_freq_khz=None, temperature_c=None)
    assert likely_causes(synthetic_result(RUNS, facts=blind), synthetic_result(RUNS, facts=blind)) == []


def test_provenance_changes_are_reported_with_the_pipeline_last() -> None:
    before = RunProvenance(pipeline_commit="a" * 40, record_store_version="v1")
    after = RunProvenance(pipeline_commit="b" * 40, record_store_version="v2")
    causes = likely_causes(synthetic_result(RUNS), synthetic_result(RUNS), before=before, after=after)
    assert kinds(causes) == ["record_store", "pipeline"]
    assert causes[1].detail == f"pipeline code changed: {'a' * 12} -> {'b' * 12}"


def test_an_improvement_names_the_gained_schedules_and_ignores_the_board_state() -> None:
    before = synthetic_result(RUNS, coverage=vgg16_coverage("fallback"), facts=hot(temperature_c=80.0))
    after = synthetic_result(RUNS, coverage=vgg16_coverage("tuned"), facts=HEALTHY)
    [cause] = likely_causes(before, after, "improvement")
    assert cause.kind == "coverage_gained"
    assert cause.detail.startswith("9 conv2d workloads gained a tuned schedule")


def test_identical_results_have_no_cause() -> None:
    record = synthetic_result(RUNS, coverage=vgg16_coverage("tuned"))
    assert likely_causes(record, record) == []


def test_a_confirmed_regression_names_the_task_whose_time_grew() -> None:
    before = [KernelTime(f"fused_conv2d{i}_add_relu", 1, 2.1 if i == 5 else 1.0) for i in range(12)]
    before += [KernelTime("fused_matmul_add", 1, 0.5), KernelTime("vm.builtin.alloc_tensor", 40, 0.3)]
    after = [KernelTime(k.name, k.calls, 3.8 if k.name == "fused_conv2d5_add_relu" else k.ms * 1.02) for k in before]
    assert changed_tasks(before, after, "regression") == [
        "fused_conv2d5_add_relu +81%: 2.10 -> 3.80 ms; 11 of 12 conv tasks unchanged"
    ]
    assert changed_tasks(after, before, "regression") == []
    assert changed_tasks(after, before, "improvement")[0].startswith("fused_conv2d5_add_relu -45%: 3.80 -> 2.10 ms")


def test_a_tiny_task_that_doubles_is_not_named() -> None:
    """0.001 -> 0.002 ms in a 10 ms inference is timer noise, not a cause."""
    before = [KernelTime("fused_conv2d_add", 1, 10.0), KernelTime("mean", 1, 0.001)]
    after = [KernelTime("fused_conv2d_add", 1, 10.0), KernelTime("mean", 1, 0.002)]
    assert changed_tasks(before, after, "regression") == []
