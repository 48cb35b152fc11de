"""The tasks of a fused module (what MetaSchedule tunes, what a record is keyed by) and applying a record
database to the module: the boundary between the compiler's passes and its schedules."""

from dataclasses import dataclass
from typing import Any

from pipeline.compiler.schedules.winograd_schedules import transform_flops
from pipeline.records.store import structural_hash
from pipeline.records.workloads import WorkloadKey, workload_key


@dataclass(frozen=True)
class Task:
    """One distinct PrimFunc of the fused module: what MetaSchedule tunes and a record is keyed by."""

    name: str
    key: WorkloadKey
    calls: int
    flops: float  # per model run: per-call FLOPs times calls
    structural_hash: str
    extracted: Any  # MetaSchedule's ExtractedTask, for tuning


def extract_tasks(fused: Any, target: Any) -> list[Task]:
    """The fused module's PrimFuncs as tasks, each with its semantic key, FLOPs and TVM's hash."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    normalize = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(fused, target):
        mod = extracted.dispatched[0]
        tasks.append(
            Task(
                name=extracted.task_name,
                key=workload_key(extracted.task_name, mod),
                calls=int(extracted.weight),
                flops=(transform_flops(mod) or float(estimate_tir_flops(mod))) * int(extracted.weight),
                structural_hash=structural_hash(normalize(mod)),
                extracted=extracted,
            )
        )
    return tasks


def apply_database(fused: Any, database: Any, target: Any) -> Any:
    """Replace each PrimFunc that has a record with its tuned schedule; the rest stay as they are."""
    from tvm import relax

    with target, database:
        return relax.transform.MetaScheduleApplyDatabase()(fused)
