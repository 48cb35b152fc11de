"""`invoke migrate`: measure each migrated schedule on the board and keep the ones that are not slower.

A build applies an older release's record once its trace replays and computes the same (migrated), but
that says nothing about speed under the new release: its code generator may compile the same schedule
differently. So the model is built twice, with the migrated schedules and without them (this release's
records, the default schedule elsewhere), and both builds run interleaved in one A/B session on the
board (pipeline/deploy/ab_session.py): each task's time is the fastest of PROFILE_ROUNDS profiled runs
per build. The rule: a migrated schedule is kept when its task's time in the migrated build is at most
KEEP_FACTOR (1.02) of the same task's time in the build without migration; it is saved as a record of
this release whose provenance names the record it came from (`migrated_from`). The next build then
applies it as tuned. Traces that do not replay, or compute other numbers, are reported and never timed."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.board.profile import BoardProfile
from pipeline.compiler import builder, lowering, passes
from pipeline.compiler.builder import resolved_target
from pipeline.compiler.importer.model_file import ModelSpec
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.deploy import inputs
from pipeline.deploy.ab_session import AbSide, open_ab_session
from pipeline.paths import RECORDS_DIR
from pipeline.records.store import load_store, record_from_tuning, save_record, to_database

# A migrated schedule is kept when its task's time is at most this factor of the default's: equal
# within the run-to-run noise of the fastest profiled run counts as not slower.
KEEP_FACTOR = 1.02
PROFILE_ROUNDS = 5  # profiled runs per build, interleaved (A B, B A, ...); each task's fastest counts


@dataclass(frozen=True)
class MigratedTask:
    """One migrated schedule as measured on the board, against the task's default schedule."""

    task: str
    source: str  # `<release> (records/…json)`
    migrated_us: float
    default_us: float
    kept: bool
    saved: Path | None  # the new release's record, when kept
    reason: str  # why it was not kept, "" when kept


@dataclass(frozen=True)
class MigrateResult:
    measured: tuple[MigratedTask, ...]
    rejected: tuple[str, ...]  # records whose trace did not replay or computes other numbers, with the reason
    release: str


def migrate_model(
    model: ModelSpec,
    profile: BoardProfile,
    records_dir: Path = RECORDS_DIR,
    on_step: Callable[[str], None] | None = None,
    on_task: Callable[[MigratedTask], None] | None = None,
) -> MigrateResult:
    """Measure and keep the migrated schedules of `model`'s tasks for `board` (see the module docstring);
    `on_step` hears what starts, `on_task` of each task as soon as it is measured (a large model takes minutes)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from pipeline.compiler.rewrite_choices import store_planner
    from pipeline.compiler.schedules.record_migration import migrate, migration_candidates
    from pipeline.tvm_release.catalog import release_name

    target = resolved_target(profile)
    tvm_target = tvm.target.Target(target.as_tvm_dict())
    planner = store_planner(target, tvm_target, records_dir)
    imported = lowering.import_model(model, profile.winograd, tvm_target, profile.channels_last, planner)[0]
    fused = passes.fuse(imported, tvm_target)
    tasks = schedule_tasks.extract_tasks(fused, tvm_target)
    store = load_store(records_dir)
    covered = set(to_database(store.for_target(target, tvm.__version__))[1])
    candidates = migration_candidates(tasks, covered, store.older_releases(target, tvm.__version__))
    functions = {gv.name_hint: func for gv, func in fused.functions.items()}
    migrations = [
        migrate(functions[name], tvm_target, name, stored, tvm.__version__) for name, stored in candidates.items()
    ]
    accepted = [m for m in migrations if m.schedule is not None]
    rejected = tuple(m.problem() for m in migrations if m.schedule is None)
    release = release_name(tvm.__version__)
    if not accepted:
        return MigrateResult((), rejected, release)
    if on_step is not None:
        on_step(f"Timing {len(accepted)} migrated schedules on {profile.name} against the default ones...")
    by_name = {t.name: t for t in tasks}
    mine, theirs = _task_times(model, profile, records_dir, on_step or (lambda line: None))
    measured = []
    for migration in accepted:
        schedule = migration.schedule
        assert schedule is not None
        mine_ms, theirs_ms = mine.get(migration.task), theirs.get(migration.task, math.inf)
        kept = mine_ms is not None and mine_ms <= theirs_ms * KEEP_FACTOR
        saved = None
        if kept and mine_ms is not None:
            args_info = ms.arg_info.ArgInfo.from_prim_func(schedule.workload["main"])
            tuning = ms.database.TuningRecord(
                schedule.trace, ms.database.Workload(schedule.workload), [mine_ms / 1e3], tvm_target, args_info
            )
            task = by_name[migration.task]
            record = record_from_tuning(
                tuning, task.key, target, profile.name, model.name, task.name, 0, profile.emulated, migration.source
            )
            saved = save_record(record, records_dir)
        mine_us, theirs_us = (mine_ms or math.inf) * 1e3, theirs_ms * 1e3
        if mine_ms is None:
            reason = "not timed: its kernel did not run in the build's profile"
        else:
            reason = "" if kept else f"slower than the default schedule ({mine_us:.1f} µs > {theirs_us:.1f} µs)"
        measured.append(MigratedTask(migration.task, migration.source, mine_us, theirs_us, kept, saved, reason))
        if on_task is not None:
            on_task(measured[-1])
    return MigrateResult(tuple(measured), rejected, release)


def _task_times(
    model: ModelSpec, profile: BoardProfile, records_dir: Path, show: Callable[[str], None]
) -> tuple[dict[str, float], dict[str, float]]:
    """Each task's ms per inference in the model built with the migrated schedules and in the model
    built without them (this release's records, defaults elsewhere), timed interleaved in one A/B session
    on the board: the fastest of PROFILE_ROUNDS profiled runs per build."""
    show(f"Building {model.name} with the migrated schedules and without them...")
    migrated = builder.build(model, profile, records_dir=records_dir, migrate=True)
    defaults = builder.build(model, profile, records_dir=records_dir, migrate=False)
    _, input_file = inputs.make_input(model.input_shape)
    sides = [
        AbSide("the build with migrated schedules", migrated, profile.threads),
        AbSide("the build with default schedules", defaults, profile.threads),
    ]
    with open_ab_session(profile, sides, input_file, show) as session:
        show(f"Timing each task of both builds on {profile.name} ({PROFILE_ROUNDS} profiled runs each, interleaved)...")
        mine, theirs = session.fastest_tasks(PROFILE_ROUNDS)
    return {k.name: k.ms for k in mine}, {k.name: k.ms for k in theirs}
