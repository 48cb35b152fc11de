"""The coverage a build would report, without compiling it: import, the rewrites, fusion, and the
records matched to the tasks by TVM's structural hash.

Why: a pipeline change that makes the shipped records stop applying (a rewrite that changes the
convs' tasks, a fusion change) shows here in seconds, where a build takes minutes; the test suite
checks every model with shipped records against its profile's threshold (tests/test_shipped_coverage.py).
"""

from pathlib import Path

from pipeline.board.profile import BoardProfile
from pipeline.compiler import lowering, passes
from pipeline.compiler.builder import resolved_target
from pipeline.compiler.coverage import Coverage, measure_coverage, with_choices
from pipeline.compiler.importer.model_file import ModelSpec
from pipeline.compiler.rewrite_choices import RecordingPlanner, planner_for, task_labels
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.paths import RECORDS_DIR
from pipeline.records.choices import load_choices
from pipeline.records.store import load_store, to_database


def planned_coverage(model: ModelSpec, profile: BoardProfile, records_dir: Path = RECORDS_DIR) -> Coverage:
    """The tasks the build of `model` for `board` lowers, each tuned when a record of this target and
    release has its structural hash (as MetaScheduleApplyDatabase would apply it); no fallback
    schedules and no code (for a target this host runs, the Winograd choices are timed as a build
    times them, once per CPU, then read from the cache)."""
    import tvm

    store = load_store(records_dir)
    target = resolved_target(profile)
    tvm_target = tvm.target.Target(target.as_tvm_dict())
    records = store.for_target(target, tvm.__version__)
    older = store.older_releases(target, tvm.__version__)
    choices, _ = load_choices(target, tvm.__version__, records_dir)
    planner = RecordingPlanner(planner_for(tvm_target, records, older, choices))
    mod, _, winograd, _ = lowering.import_model_reporting(
        model, profile.winograd, tvm_target, profile.channels_last, planner
    )
    tasks = schedule_tasks.extract_tasks(passes.fuse(mod, tvm_target), tvm_target)
    _, applicable, rejected = to_database(records)
    hit = {t.name for t in tasks if t.structural_hash in applicable}
    coverage = measure_coverage(tasks, hit, applicable, store, target, tvm.__version__, rejected)
    return with_choices(coverage, task_labels(tasks, planner.plan, winograd))
