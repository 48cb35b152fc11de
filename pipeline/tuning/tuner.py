"""Tuning: MetaSchedule searches schedules for a model's conv/dense tasks and the best go into the store.

Tasks come from the same fused module the build lowers, so every record written here hits there.
Candidates are cross-compiled on this host with the board's compiler and timed on the board itself
through TVM RPC: a tracker on this host, `python -m tvm.exec.rpc_server` started on the board over SSH
(pipeline/rpc.py, pipeline/board_python.py). Trials go to the largest tasks first; tasks the store already
covers for this target are skipped, and MetaSchedule's own work database under the cache keeps every
measurement, so an interrupted run loses nothing: the next run exports what was measured and continues
with the rest. Records measured on an emulated board say so: they prove the loop, not the board's speed.
"""

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.board.profile import BoardProfile, TargetSpec
from pipeline.board.session import open_board
from pipeline.board.tuning_python import board_python
from pipeline.compiler import lowering, passes
from pipeline.compiler.builder import resolved_target
from pipeline.compiler.importer.model_file import ModelSpec
from pipeline.compiler.rewrite_choices import store_planner
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.compiler.schedules.tensor_intrinsics import register_cpu_intrinsics
from pipeline.errors import PipelineError
from pipeline.paths import CACHE_DIR, RECORDS_DIR
from pipeline.records.store import Record, load_store, record_from_tuning, save_record, shown, target_slug, to_database
from pipeline.tuning.rpc import RpcBoard, board_rpc, keyed_measurements, measured_by
from pipeline.tvm_release.catalog import release_name

MeasuredCallback = Callable[[int, int], None]
"""Called as (candidates measured so far, candidates planned) about once a second while the search runs."""


@dataclass(frozen=True)
class TuneResult:
    tuned: tuple[str, ...]  # tasks searched in this run
    from_default: tuple[str, ...]  # tuned tasks whose search started from their measured default schedule
    already_covered: tuple[str, ...]  # conv/dense tasks the store had records for
    left_for_later: tuple[str, ...]  # conv/dense tasks the trial budget did not reach
    saved: tuple[Path, ...]  # record files written or improved
    trials: int
    seconds: float
    choices: tuple[Path, ...] = ()  # choice records written: each tuned conv against its Winograd forms


def tune(
    model: ModelSpec,
    profile: BoardProfile,
    trials: int,
    records_dir: Path = RECORDS_DIR,
    cache_dir: Path = CACHE_DIR,
    only: tuple[str, ...] = (),
    retune: bool = False,
    on_measured: MeasuredCallback | None = None,
    choices_only: bool = False,
) -> TuneResult:
    """Search `trials` schedules in all, timed on the board over RPC; `only` limits the tasks by name,
    `retune` searches tasks the store already covers too (the store keeps whichever record is faster).
    First the choices are measured (measure_choices), so the search tunes the form that won (the
    Winograd stages where they beat a tuned direct conv); `choices_only`: nothing else.
    Progress goes to `on_measured`."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise PipelineError(f"--trials {trials} is too few", "give at least 1 (64 per conv task is a fair start)")
    started = time.perf_counter()
    choices = measure_choices(model, profile, records_dir) if profile.winograd else ()
    if choices_only:
        return TuneResult((), (), (), (), (), 0, round(time.perf_counter() - started, 1), choices)
    target = resolved_target(profile)
    tvm_target = tvm.target.Target(target.as_tvm_dict())
    tasks = _heavy_tasks(model, profile, tvm_target, only, records_dir)
    work_dir = _work_dir(cache_dir, target, model)
    work_dir.mkdir(parents=True, exist_ok=True)
    database = _work_database(work_dir)
    saved = _export(tasks, database, model, profile, target, records_dir, work_dir)  # what an interrupted run measured

    store = load_store(records_dir)
    covered = set(to_database(store.for_target(target, tvm.__version__))[1])
    todo = [t for t in tasks if retune or t.structural_hash not in covered]
    chosen, per_task = plan_trials(todo, trials, profile.tuning.min_trials_per_task)
    from_default: tuple[str, ...] = ()
    if chosen:
        register_cpu_intrinsics()
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [t.extracted for t in chosen], work_dir=str(work_dir), seed=0
        )
        # The defaults are measured first: one more measurement per task.
        with (
            _interruptible(),
            _on_board(profile) as rpc_board,
            keyed_measurements(work_dir, rpc_board),
            _progress(on_measured, work_dir, trials + len(chosen)),
        ):
            builder = ms.builder.LocalBuilder(timeout_sec=120, f_export=_exporter(profile.cross_compiler))
            runner = _runner(rpc_board, profile)
            from_default = start_from_defaults(chosen, database, builder, runner, tvm_target)
            ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(work_dir),
                max_trials_global=trials,
                max_trials_per_task=max(per_task, trials // len(chosen)),
                num_trials_per_iter=per_task,
                builder=builder,
                runner=runner,
                database=database,
            )
        saved += _export(chosen, database, model, profile, target, records_dir, work_dir)
    return TuneResult(
        tuned=tuple(t.name for t in chosen),
        from_default=from_default,
        already_covered=tuple(t.name for t in tasks if t.structural_hash in covered and t not in todo),
        left_for_later=tuple(t.name for t in todo if t.name not in {c.name for c in chosen}),
        saved=tuple(dict.fromkeys(saved)),
        trials=trials,
        seconds=round(time.perf_counter() - started, 1),
        choices=choices,
    )


def measure_choices(model: ModelSpec, profile: BoardProfile, records_dir: Path = RECORDS_DIR) -> tuple[Path, ...]:
    """Time each Winograd-eligible conv that has a tuned direct record on the board itself, in each of
    its forms (its direct task with the record, the Winograd stages with their best schedules:
    pipeline/compiler/choice_candidates.py), and keep the outcome as a choice record that builds apply.
    An emulated board measures like any other; its choices say emulated. Nothing to measure: no session."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from pipeline.compiler.builder import recipe_digest
    from pipeline.compiler.choice_candidates import choice_of, conv_candidates, eligible_shapes
    from pipeline.compiler.rewrite_choices import plan_rewrites, stage_schedules
    from pipeline.records.choices import save_choice

    target = resolved_target(profile)
    tvm_target = tvm.target.Target(target.as_tvm_dict())
    records = load_store(records_dir).for_target(target, tvm.__version__)
    mod = lowering.import_model(model, False, tvm_target, False)[0]
    plan = plan_rewrites(mod, tvm_target, records, [], measure_here=False)
    shapes = eligible_shapes(mod)
    by_path = {shown(s.path): s for s in records}
    stages = stage_schedules(records)
    candidates = [
        conv_candidates(conv.weight, conv.key, shapes[conv.weight], by_path[conv.record], tvm_target, stages)
        for conv in plan.recorded.values()
        if conv.weight in shapes and conv.record in by_path
    ]
    unique = list({c.key: c for c in candidates}.values())  # convs of one workload share a task and a choice
    if not unique:
        return ()
    register_cpu_intrinsics()
    modules = [mod for conv in unique for form in conv.forms for mod in form.modules]
    with _interruptible(), _on_board(profile) as rpc_board:
        builder = ms.builder.LocalBuilder(timeout_sec=120, f_export=_exporter(profile.cross_compiler))
        runner = _runner(rpc_board, profile)
        seconds = _run_modules(modules, builder, runner, tvm_target)
    times = iter(seconds)
    saved = []
    for conv in unique:
        form_ms = [sum(next(times) for _ in form.modules) * 1e3 for form in conv.forms]
        if not all(math.isfinite(x) for x in form_ms):
            continue  # a candidate failed to build or run: nothing honest to keep
        choice = choice_of(conv, form_ms, target, profile.name, f"recipe {recipe_digest()[:12]}", profile.emulated)
        saved.append(save_choice(choice, records_dir))
    return tuple(saved)


def _run_modules(modules: list[Any], builder: Any, runner: Any, target: Any) -> list[float]:
    """Each scheduled PrimFunc module's median run time on the board in seconds (inf: it failed)."""
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(mod, target) for mod in modules])
    inputs = [
        ms.runner.RunnerInput(b.artifact_path, "cpu", ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
        for mod, b in zip(modules, built)
        if not b.error_msg
    ]
    results = iter(future.result() for future in runner.run(inputs))
    seconds = []
    for b in built:
        if b.error_msg:
            seconds.append(float("inf"))
            continue
        result = next(results)
        ms.utils.remove_build_dir(b.artifact_path)
        runs = sorted(float(x) for x in result.run_secs or [])
        seconds.append(runs[len(runs) // 2] if runs and not result.error_msg else float("inf"))
    return seconds


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C stays a KeyboardInterrupt: raised inside a MetaSchedule callback, TVM's FFI turns it into an
    ordinary error, which would end in a traceback instead of the clean interrupted exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(number: int, frame: Any) -> None:
        interrupted.set()
        if callable(previous):
            previous(number, frame)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    except Exception:
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _on_board(profile: BoardProfile) -> Iterator[RpcBoard]:
    """The board's RPC server, registered with a tracker on this host, for the length of the block."""
    with open_board(profile) as session:
        with board_rpc(session, board_python(session)) as rpc_board:
            yield rpc_board


def _runner(rpc_board: RpcBoard, profile: BoardProfile) -> Any:
    """One session at a time: with one board, a second request waits at the tracker until the first
    session ends, and a session that outlives tuning.session_timeout_s is killed and counted as failed."""
    from tvm.s_tir import meta_schedule as ms

    rpc_config = ms.runner.RPCConfig(
        tracker_host=rpc_board.tracker_host,
        tracker_port=rpc_board.tracker_port,
        tracker_key=rpc_board.key,
        session_timeout_sec=profile.tuning.session_timeout_s,
    )
    return ms.runner.RPCRunner(rpc_config=rpc_config, max_workers=1)


def _exporter(cross_compiler: str) -> Callable[[Any], str]:
    """MetaSchedule's export step with the board's compiler (its default leaves a .tar for the board to
    link, and a board may have no compiler). Cloudpickled into builder workers, so TVM is imported inside,
    and cross_compiler is made per call because it mutates its own option list."""

    def export(mod: Any) -> str:
        import os
        import tempfile

        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(), "candidate.so")
        mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
        return path

    return export


@contextmanager
def _progress(on_measured: MeasuredCallback | None, work_dir: Path, trials: int) -> Iterator[None]:
    """Count the measured candidates from the lines MetaSchedule appends to its work database
    (reading the file, not the database object, leaves MetaSchedule's threads alone)."""
    if on_measured is None:
        yield
        return
    records = work_dir / "records.json"
    before = _lines(records)
    stop = threading.Event()

    def report() -> None:
        on_measured(min(trials, _lines(records) - before), trials)

    def poll() -> None:
        while not stop.wait(1.0):
            report()

    report()
    watcher = threading.Thread(target=poll, name="tuning progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        report()


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def plan_trials(
    tasks: list[schedule_tasks.Task], trials: int, least: int = 16
) -> tuple[list[schedule_tasks.Task], int]:
    """The largest tasks that `trials` can give at least `least` trials each (up to 64 per round when
    the budget is ample), and the trials per round."""
    per_task = max(min(least, trials), min(64, trials // max(len(tasks), 1)))
    return sorted(tasks, key=lambda t: -t.flops)[: max(1, trials // per_task)], per_task


def start_from_defaults(
    tasks: list[schedule_tasks.Task], database: Any, builder: Any, runner: Any, target: Any
) -> tuple[str, ...]:
    """Measure each task's default schedule on the board and commit it to the work database.

    Why: a short search often ends slower than the rule-based default (38 trials per VGG-16 conv
    measured 51-73 GFLOP/s against the default's 124-277). MetaSchedule's evolutionary search seeds
    its population from the best measured records of the workload, so with the default among them
    the search starts from it, and the exported best is never slower than the default.
    Returns the tasks whose default was measured; the others start from random samples."""
    from tvm.s_tir import meta_schedule as ms

    from pipeline.compiler.schedules.default_schedules import default_schedule
    from pipeline.compiler.schedules.winograd_schedules import winograd_schedule

    seeded = []
    for task in tasks:
        func = task.extracted.dispatched[0]
        schedule = winograd_schedule(func, target, task.name) or default_schedule(func, target, task.name)
        if schedule is None:
            continue  # nothing to tile
        args_info = ms.arg_info.ArgInfo.from_prim_func(schedule.workload["main"])
        built = builder.build([ms.builder.BuilderInput(schedule.mod, target)])[0]
        if built.error_msg:
            continue
        measured = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])[0].result()
        ms.utils.remove_build_dir(built.artifact_path)
        if measured.error_msg or not measured.run_secs:
            continue
        database.commit_tuning_record(
            ms.database.TuningRecord(
                schedule.trace,
                database.commit_workload(schedule.workload),
                run_secs=[float(s) for s in measured.run_secs],
                target=target,
                args_info=args_info,
            )
        )
        seeded.append(task.name)
    return tuple(seeded)


def _work_database(work_dir: Path) -> Any:
    """MetaSchedule's JSON database of every measurement; one bad line makes TVM refuse the whole file,
    so an unreadable one is set aside (not deleted) and tuning starts afresh."""
    from tvm.s_tir import meta_schedule as ms

    paths = {"path_workload": str(work_dir / "workloads.json"), "path_tuning_record": str(work_dir / "records.json")}
    try:
        return ms.database.JSONDatabase(**paths)
    except Exception:  # TVM raises its own error types for unreadable files
        for name in paths.values():
            if Path(name).exists():
                Path(name).rename(f"{name}.unreadable-{int(time.time())}")
        return ms.database.JSONDatabase(**paths)


def _export(
    tasks: list[schedule_tasks.Task],
    database: Any,
    model: ModelSpec,
    profile: BoardProfile,
    target: TargetSpec,
    root: Path,
    work_dir: Path,
) -> list[Path]:
    """The best measured schedule of each task into the store (which keeps a faster record it already has)."""
    saved = []
    for task in tasks:
        measured = _measured(task, database)
        if measured:
            record = _record(
                measured[0], len(measured), task, model, profile, target, measured_by(work_dir, measured[0])
            )
            saved.append(save_record(record, root))
    return saved


def measured_schedules(
    model: ModelSpec, profile: BoardProfile, task_name: str, cache_dir: Path = CACHE_DIR
) -> list[Record]:
    """Every schedule `invoke tune` measured for one task, fastest first, as records: the first is the
    one tuning keeps; the others are what the search rejected (a benchmark's slower record)."""
    import tvm

    target = resolved_target(profile)
    [task] = _heavy_tasks(model, profile, tvm.target.Target(target.as_tvm_dict()), (task_name,))
    measured = _measured(task, _work_database(_work_dir(cache_dir, target, model)))
    return [_record(m, len(measured), task, model, profile, target) for m in measured]


def _heavy_tasks(
    model: ModelSpec, profile: BoardProfile, tvm_target: Any, only: tuple[str, ...], records_dir: Path = RECORDS_DIR
) -> list[schedule_tasks.Task]:
    """The model's conv/dense tasks as the build lowers them (the convs with records kept direct, as the
    build keeps them), those named in `only` when it names any."""
    planner = store_planner(resolved_target(profile), tvm_target, records_dir)
    imported = lowering.import_model(model, profile.winograd, tvm_target, profile.channels_last, planner)[0]
    fused = passes.fuse(imported, tvm_target)
    tasks = [t for t in schedule_tasks.extract_tasks(fused, tvm_target) if t.key.heavy and (not only or t.name in only)]
    unknown = sorted(set(only) - {t.name for t in tasks})  # a misspelt name must not be skipped silently
    if unknown:
        raise PipelineError(
            f"no conv/dense task of {model.name} is named {', '.join(unknown)}", "see invoke build's table"
        )
    return tasks


def _work_dir(cache_dir: Path, target: TargetSpec, model: ModelSpec) -> Path:
    """MetaSchedule's work database of a model on a target, per release: TVM cannot read one that
    another release wrote."""
    import tvm

    return cache_dir / "tuning" / release_name(tvm.__version__) / target_slug(target) / model.name


def _measured(task: schedule_tasks.Task, database: Any) -> list[Any]:
    """The task's measured TuningRecords in the work database, fastest first."""
    import tvm

    mod = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(task.extracted.dispatched[0])
    if not database.has_workload(mod):
        return []
    return list(database.get_top_k(database.commit_workload(mod), 1 << 20))


def _record(
    tuning: Any,
    trials: int,
    task: schedule_tasks.Task,
    model: ModelSpec,
    profile: BoardProfile,
    target: TargetSpec,
    rpc_key: str = "",
) -> Record:
    return record_from_tuning(
        tuning, task.key, target, profile.name, model.name, task.name, trials, profile.emulated, rpc_key=rpc_key
    )
