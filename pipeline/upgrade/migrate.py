"""`invoke migrate`: measure each migrated schedule on the board and keep the ones that are not slower.

A build applies an older release's record once its trace replays and computes the same (migrated), but
that says nothing about speed under the new release: its code generator may compile the same schedule
differently. So each migrated schedule is timed on the board against the task's default schedule, in
the same RPC session, and kept only when it is not slower; it is saved as a record of this release
whose provenance names the record it came from (`migrated_from`). The next build then applies it as
tuned. Traces that do not replay, or compute other numbers, are reported and never measured."""

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.board.profile import BoardProfile
from pipeline.compiler import lowering, passes
from pipeline.compiler.builder import resolved_target
from pipeline.compiler.importer.model_file import ModelSpec
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.errors import PipelineError
from pipeline.paths import RECORDS_DIR
from pipeline.records.store import load_store, record_from_tuning, save_record, to_database

# A migrated schedule is kept when its median is at most this factor of the default's: equal within
# the run-to-run noise of one RPC measurement counts as not slower.
KEEP_FACTOR = 1.02
# Runs per measurement: several on a native board; few under emulation, where one run of a large conv
# takes seconds (qemu's costs, not the board's).
NATIVE_RUNS = {"number": 3, "repeat": 7, "min_repeat_ms": 20}
EMULATED_RUNS = {"number": 1, "repeat": 3, "min_repeat_ms": 0}


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
    board: BoardProfile,
    records_dir: Path = RECORDS_DIR,
    on_step: Callable[[str], None] | None = None,
    on_task: Callable[[MigratedTask], None] | None = None,
) -> MigrateResult:
    """Measure and keep the migrated schedules of `model`'s tasks for `board` (see the module docstring);
    `on_step` hears what starts, `on_task` of each task as soon as it is measured (a large model takes minutes)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from pipeline.compiler.rewrite_choices import store_planner
    from pipeline.compiler.schedules.default_schedules import default_schedule
    from pipeline.compiler.schedules.record_migration import migrate, migration_candidates
    from pipeline.tuning.tuner import _exporter, _interruptible, _on_board
    from pipeline.tvm_release.catalog import release_name

    target = resolved_target(board)
    tvm_target = tvm.target.Target(target)
    planner = store_planner(target, tvm_target, records_dir)
    imported = lowering.import_model(model, board.winograd, tvm_target, board.channels_last, planner)[0]
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
    by_name = {t.name: t for t in tasks}
    measured = []
    if on_step is not None:
        on_step(f"Measuring {len(accepted)} migrated schedules on {board.name}...")
    with _interruptible(), _on_board(board) as rpc_board:
        builder = ms.builder.LocalBuilder(timeout_sec=120, f_export=_exporter(board.cross_compiler))
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(
                tracker_host=rpc_board.tracker_host,
                tracker_port=rpc_board.tracker_port,
                tracker_key=rpc_board.key,
                session_timeout_sec=board.tuning.session_timeout_s,
            ),
            evaluator_config=ms.runner.EvaluatorConfig(**(EMULATED_RUNS if board.emulated else NATIVE_RUNS)),
            max_workers=1,
        )
        for migration in accepted:
            schedule = migration.schedule
            assert schedule is not None
            default = default_schedule(functions[migration.task], tvm_target, migration.task)
            args_info = ms.arg_info.ArgInfo.from_prim_func(schedule.workload["main"])
            mine = _measure(schedule.mod, tvm_target, args_info, builder, runner, board)
            theirs = _measure(default.mod, tvm_target, args_info, builder, runner, board) if default else []
            mine_s, theirs_s = statistics.median(mine), statistics.median(theirs) if theirs else float("inf")
            kept = mine_s <= theirs_s * KEEP_FACTOR
            saved = None
            if kept:
                tuning = ms.database.TuningRecord(
                    schedule.trace, ms.database.Workload(schedule.workload), mine, tvm_target, args_info
                )
                task = by_name[migration.task]
                record = record_from_tuning(
                    tuning, task.key, target, board.name, model.name, task.name, 0, board.emulated, migration.source
                )
                saved = save_record(record, records_dir)
            reason = (
                "" if kept else f"slower than the default schedule ({mine_s * 1e6:.1f} µs > {theirs_s * 1e6:.1f} µs)"
            )
            measured.append(
                MigratedTask(migration.task, migration.source, mine_s * 1e6, theirs_s * 1e6, kept, saved, reason)
            )
            if on_task is not None:
                on_task(measured[-1])
    return MigrateResult(tuple(measured), rejected, release)


def _measure(mod: Any, target: Any, args_info: Any, builder: Any, runner: Any, board: BoardProfile) -> list[float]:
    """Run seconds of one scheduled task on the board (compiled here with the board's compiler)."""
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(mod, target)])[0]
    if built.error_msg:
        raise PipelineError(
            f"a migrated schedule does not compile for {board.name}: {built.error_msg.strip().splitlines()[-1]}",
            "report it with the record; the build keeps the task's default schedule meanwhile",
        )
    try:
        result = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])[0].result()
    finally:
        ms.utils.remove_build_dir(built.artifact_path)
    if result.error_msg or not result.run_secs:
        detail = (result.error_msg or "no timing").strip().splitlines()[-1]
        raise PipelineError(f"measuring on {board.name} failed: {detail}", f"check that {board.name} is up and rerun")
    return [float(s) for s in result.run_secs]
