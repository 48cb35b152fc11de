"""Record migration: a record made under an older TVM release, replayed on the same task under this one.

Why: TVM keys a record by a structural hash of the task's IR and stores the IR in its own serialization;
both change between releases (0.26's IR does not even parse under 0.27), so TVM's own lookup drops every
record on an upgrade. The schedule itself survives: the semantic workload key (pipeline/records/workloads.py)
still names the task, and the record's trace replays on the new release's task once the instruction and
attribute names that changed are translated (pipeline/tvm_release/trace_renames.py). A replayed schedule is
applied only when its output matches the default schedule's on random inputs; any other outcome is
reported with its reason and the task gets its usual fallback. Migrated is not tuned: `invoke migrate`
measures it on the board and only then keeps it as a record of this release.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm.ir import IRModule
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import Trace
from tvm.target import Target

from pipeline.board.profile import TargetSpec
from pipeline.compiler.schedules.default_schedules import TaskSchedule, default_schedule, normalize
from pipeline.compiler.schedules.tasks import Task
from pipeline.records.store import RecordStore, StoredRecord, release_key, shown
from pipeline.tvm_release.catalog import release_name
from pipeline.tvm_release.compat import TVM_ERRORS
from pipeline.tvm_release.errors import reason as tvm_reason
from pipeline.tvm_release.trace_renames import NoTableEntry, translate_trace

_CHECK_ATOL = 1e-4  # relative to the largest output magnitude, as for a transferred schedule


@dataclass(frozen=True)
class Migration:
    """One older record tried on one task: `schedule` when it replayed and computes the same, else `reason`."""

    task: str
    stored: StoredRecord
    schedule: TaskSchedule | None
    reason: str = ""

    @property
    def from_release(self) -> str:
        return release_name(self.stored.record.provenance.tvm_version)

    @property
    def source(self) -> str:
        """How the coverage table names where the schedule came from: `0.26 (records/…json)`."""
        return f"{self.from_release} ({shown(self.stored.path)})"

    def problem(self) -> str:
        return f"{shown(self.stored.path)}: not migrated from TVM {self.from_release} to {self.task}: {self.reason}"


def migration_candidates(
    tasks: Iterable[Task], covered: set[str], older: Iterable[StoredRecord]
) -> dict[str, StoredRecord]:
    """For each conv/dense task without a record of this release (`covered`: structural hashes that have
    one), the record among `older` (older releases, same target: RecordStore.older_releases) with the same
    semantic workload key: the newest release first, then the fastest."""
    older = list(older)
    chosen = {}
    for task in tasks:
        if not task.key.heavy or task.structural_hash in covered:
            continue
        same = [s for s in older if s.record.workload == task.key]
        if same:
            chosen[task.name] = max(
                same, key=lambda s: (release_key(s.record.provenance.tvm_version), -s.record.provenance.latency_us)
            )
    return chosen


def migrate(func: IRModule, target: Target, task: str, stored: StoredRecord, tvm_version: str) -> Migration:
    """Replay the stored record's trace on `func` (a PrimFunc of the fused module) and check its output."""
    workload = normalize(func)
    try:
        trace = translate_trace(stored.record.tvm_record[0], stored.record.provenance.tvm_version, tvm_version)
    except NoTableEntry as exc:
        return Migration(task, stored, None, str(exc))
    sch = Schedule(workload)
    try:
        Trace.apply_json_to_schedule(trace, sch)
    except TVM_ERRORS as exc:
        return Migration(task, stored, None, f"its trace does not replay on this task: {tvm_reason(exc)}")
    try:
        reference = default_schedule(func, target, task)
    except RuntimeError:
        reference = None
    expected_mod = reference.mod if reference is not None else workload
    try:
        differs = output_difference(sch.mod, expected_mod, target)
    except TVM_ERRORS as exc:
        return Migration(task, stored, None, f"its schedule does not compile: {tvm_reason(exc)}")
    if differs:
        return Migration(task, stored, None, f"it replays but computes other numbers ({differs})")
    migration = Migration(task, stored, None)
    return replace(migration, schedule=TaskSchedule("migrated", task, workload, sch.mod, sch.trace, migration.source))


def output_difference(candidate: IRModule, reference: IRModule, target: Target) -> str:
    """ "" when both give the same output on the same random inputs, else how far apart they are. Both are
    compiled for this host when the target's code cannot run here: what a schedule computes does not
    depend on the CPU it is compiled for."""
    from pipeline.compiler.schedules.schedule_transfer import _random_inputs, runs_here

    host = target if runs_here(target) else Target({"kind": "llvm", "num-cores": 1})
    inputs = _random_inputs(reference)
    expected, got = _output(reference, host, inputs), _output(candidate, host, inputs)
    scale = max(float(np.abs(expected).max()), 1e-6)
    worst = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if np.isfinite(worst) and worst <= _CHECK_ATOL * scale:
        return ""
    return f"largest difference {worst:.3g} against outputs up to {scale:.3g}"


def _output(mod: IRModule, target: Target, inputs: Sequence[np.ndarray]) -> np.ndarray:
    function = tvm.compile(mod, target=target)["main"]
    tensors = [tvm.runtime.tensor(array) for array in inputs]
    function(*tensors)
    return tensors[-1].numpy()


def migrations(
    fused: IRModule,
    tasks: Sequence[Task],
    target: Target,
    store: RecordStore,
    target_spec: TargetSpec,
    covered: set[str],
) -> tuple[dict[str, TaskSchedule], list[str]]:
    """The migrated schedule of every task that has an older release's record and none of this one
    (`covered`: structural hashes with a record), and one line per record that was not migrated."""
    candidates = migration_candidates(tasks, covered, store.older_releases(target_spec, tvm.__version__))
    functions = {gv.name_hint: func for gv, func in fused.functions.items()}
    done = [migrate(functions[name], target, name, stored, tvm.__version__) for name, stored in candidates.items()]
    return {m.task: m.schedule for m in done if m.schedule is not None}, [
        m.problem() for m in done if m.schedule is None
    ]
