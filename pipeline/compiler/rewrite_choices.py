"""Which convs the layout rewrites (Winograd, channels-last) may take: a tuned schedule is never
replaced by an unmeasured one.

Why: a rewrite changes a conv's tasks, so the records tuned for its direct NCHW form stop applying
(docs/records.md). Rewriting by rule a conv that has a record trades a measured schedule for an
unmeasured one: the shipped rk3399 records of VGG-16 then covered 5% of its FLOPs. So before a rewrite
runs, the direct module is fused once and each conv's direct task is looked up by its structural hash
among this release's records for the target, and by its semantic workload key among older releases'
(which the build migrates). A conv with a record keeps its direct NCHW form unless a stored measured
choice (pipeline/records/choices.py) says the rewrite won; a conv without one takes the rule's (or,
where this host runs the target's code, the measured) choice as before.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.board.profile import TargetSpec
from pipeline.compiler import passes
from pipeline.compiler.rewrites.winograd import Timing, WinogradLayer, WinogradReport, calls_of, var_name
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.compiler.schedules.schedule_transfer import runs_here
from pipeline.paths import CACHE_DIR
from pipeline.records.choices import StoredChoice, load_choices
from pipeline.records.store import StoredRecord, load_store, shown
from pipeline.records.workloads import WINOGRAD_PREFIX, WorkloadKey


@dataclass(frozen=True)
class RecordedConv:
    """A conv whose direct task has a record: the weight parameter names the conv across rewrites."""

    weight: str
    task: str  # the direct task's name in the direct module
    key: WorkloadKey  # the direct task's semantic workload key (what a choice record is keyed by)
    record: str  # records/<target>/<file> of the record it has
    emulated: bool  # the record was measured under emulation


@dataclass(frozen=True)
class RewritePlan:
    """Per conv (by weight name), what the rewrites must respect: its record, and a measured choice."""

    recorded: Mapping[str, RecordedConv] = field(default_factory=dict)
    choices: Mapping[str, StoredChoice] = field(default_factory=dict)  # by weight name

    def keeps_direct(self, weight: str) -> bool:
        """Stays direct (and NCHW): it has a record and no measurement says a rewrite beats it."""
        choice = self.choices.get(weight)
        if choice is not None:
            return choice.chosen == "direct"
        return weight in self.recorded

    def direct_weights(self) -> frozenset[str]:
        return frozenset(w for w in set(self.recorded) | set(self.choices) if self.keeps_direct(w))

    def choice_summaries(self) -> dict[str, str]:
        """How each measured conv's form was chosen (by weight name), for the build's report."""
        return {weight: stored.choice.summary() for weight, stored in self.choices.items()}

    def winograd_timings(self) -> dict[str, Timing | None]:
        """For the Winograd rewrite: each conv with a record or a choice, with the choice's times
        (the tuned direct candidate's against each tile size) or None (kept by its record, unmeasured)."""
        timings: dict[str, Timing | None] = {w: None for w in self.recorded}
        for weight, choice in self.choices.items():
            direct = choice.choice.direct()
            tiles = {c.tile: c.ms for c in choice.choice.candidates if c.form == "winograd"}
            timings[weight] = Timing(direct.ms if direct else float("inf"), tiles) if tiles else None
        return timings


def plan_rewrites(
    mod: Any,
    target: Any,
    records: Sequence[StoredRecord],
    older: Sequence[StoredRecord],
    choices: Sequence[StoredChoice] = (),
    cache_dir: Path = CACHE_DIR,
    measure_here: bool = True,
) -> RewritePlan:
    """The plan for `mod` (imported, NCHW, before any rewrite): its direct form is fused as the build
    would fuse it and each conv's task matched against the records and the stored choices. On a target
    this host runs (and `measure_here`), a tuned conv without a stored choice is timed here against its
    Winograd forms (once per CPU, kept under `cache_dir`). Nothing to match (no record, no choice for
    the target): the empty plan, without fusing."""
    if not records and not older and not choices:
        return RewritePlan()
    lifted = _lifted_structure(mod)
    fused = passes.fuse(lifted, target)
    tasks = {task.name: task for task in schedule_tasks.extract_tasks(fused, target)}
    by_hash = {s.record.structural_hash: s for s in records}
    by_key = {s.record.workload: s for s in older}
    by_choice_key = {c.choice.workload: c for c in choices}
    recorded: dict[str, RecordedConv] = {}
    chosen: dict[str, StoredChoice] = {}
    for weight, task_name in _conv_tasks(mod, fused).items():
        task = tasks.get(task_name)
        if task is None:
            continue
        stored = by_hash.get(task.structural_hash) or by_key.get(task.key)
        if stored is not None:
            recorded[weight] = RecordedConv(
                weight, task.name, task.key, shown(stored.path), stored.record.provenance.emulated
            )
        if task.key in by_choice_key:
            chosen[weight] = by_choice_key[task.key]
    if measure_here and runs_here(target):
        chosen.update(_measured_here(mod, target, recorded, chosen, by_hash, records, cache_dir))
    return RewritePlan(recorded, chosen)


def _measured_here(
    mod: Any,
    target: Any,
    recorded: Mapping[str, RecordedConv],
    chosen: Mapping[str, StoredChoice],
    by_hash: Mapping[str, StoredRecord],
    records: Sequence[StoredRecord],
    cache_dir: Path,
) -> dict[str, StoredChoice]:
    """On a target this host runs: each eligible conv with a record of this release and no stored
    choice, timed here as its tuned direct task against the Winograd stages, once per CPU (kept with
    this host's Winograd timings, pipeline/compiler/winograd_choice.py)."""
    from pipeline.compiler.choice_candidates import choice_of, conv_candidates, eligible_shapes, time_here
    from pipeline.compiler.winograd_choice import cached_choice

    shapes = eligible_shapes(mod)
    wanted = [w for w in recorded if w in shapes and w not in chosen]
    stages = stage_schedules(records)
    found: dict[str, StoredChoice] = {}
    for weight in wanted:
        conv = recorded[weight]
        stored = next((s for s in by_hash.values() if shown(s.path) == conv.record), None)
        if stored is None:
            continue  # an older release's record: migrated at build, not timed here

        def measure(conv: RecordedConv = conv, stored: StoredRecord = stored) -> Any:
            candidates = conv_candidates(conv.weight, conv.key, shapes[conv.weight], stored, target, stages)
            times = [time_here(form.modules, target) for form in candidates.forms]
            return choice_of(candidates, times, stored.record.target, "this host", "build time", False)

        found[weight] = cached_choice(target, stored.record.structural_hash, conv.key, measure, cache_dir)
    return found


def stage_schedules(records: Sequence[StoredRecord]) -> dict[str, Any]:
    """The Winograd stages' records, as scheduled modules by structural hash: a stage candidate runs its record."""
    from pipeline.compiler.choice_candidates import scheduled_module

    return {
        s.record.structural_hash: scheduled_module(s)
        for s in records
        if s.record.workload.operator.startswith(WINOGRAD_PREFIX)
    }


def direct_keys(mod: Any, target: Any) -> dict[str, tuple[str, WorkloadKey]]:
    """Each conv's (by weight name) direct task name and semantic key, as the build would fuse the
    direct module: what a choice is measured for and keyed by."""
    fused = passes.fuse(_lifted_structure(mod), target)
    tasks = {task.name: task for task in schedule_tasks.extract_tasks(fused, target)}
    return {w: (name, tasks[name].key) for w, name in _conv_tasks(mod, fused).items() if name in tasks}


def _lifted_structure(mod: Any) -> Any:
    """The module's main as the weight lifting leaves it (passes.lift_weight_transforms), without
    computing the lifted weights: only the structure decides the tasks."""
    from tvm import relax

    lifted = relax.transform.LiftTransformParams()(mod)
    if "main_transform_params" not in {gv.name_hint for gv in lifted.functions}:
        return mod
    return type(lifted)({gv: f for gv, f in lifted.functions.items() if gv.name_hint != "main_transform_params"})


def _conv_tasks(mod: Any, fused: Any) -> dict[str, str]:
    """Weight parameter name -> the fused PrimFunc that computes its conv, for the convs a rewrite may
    take: the weight lifting keeps a conv weight's parameter, and fusion passes it to the conv's
    call_tir as it is."""
    from tvm import relax

    from pipeline.compiler.rewrites import channels_last, winograd

    weights = {
        var_name(call.args[1])
        for call in calls_of(mod, "relax.nn.conv2d")
        if isinstance(call.args[1], relax.Var) and (winograd.eligible(call) or channels_last.eligible(call))
    }
    found: dict[str, str] = {}
    for block in fused["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or getattr(call.op, "name", "") != "relax.call_tir":
                continue
            args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
            for arg in args:
                if isinstance(arg, relax.Var) and var_name(arg) in weights:
                    found.setdefault(var_name(arg), call.args[0].name_hint)
    return found


def planner_for(
    target: Any,
    records: Sequence[StoredRecord],
    older: Sequence[StoredRecord],
    choices: Sequence[StoredChoice],
) -> Callable[[Any], RewritePlan]:
    """The plan of the rewrites as the build makes it, for lowering.import_model: `invoke tune` and
    `invoke migrate` must lower the very module that the build lowers."""
    return lambda mod: plan_rewrites(mod, target, records, older, choices)


def store_planner(target_spec: TargetSpec, target: Any, records_dir: Path) -> Callable[[Any], RewritePlan]:
    """planner_for with the store's records and choices for the target and this TVM release."""
    import tvm

    store = load_store(records_dir)
    choices, _ = load_choices(target_spec, tvm.__version__, records_dir)
    return planner_for(
        target,
        store.for_target(target_spec, tvm.__version__),
        store.older_releases(target_spec, tvm.__version__),
        choices,
    )


class RecordingPlanner:
    """planner_for that keeps the plan it made, so the build can label its coverage table with it."""

    def __init__(self, planner: Callable[[Any], RewritePlan]) -> None:
        self._planner = planner
        self.plan = RewritePlan()

    def __call__(self, mod: Any) -> RewritePlan:
        self.plan = self._planner(mod)
        return self.plan


def task_labels(tasks: Sequence[Any], plan: RewritePlan, report: WinogradReport) -> dict[str, tuple[str, bool]]:
    """Task name -> (how its conv's form was chosen, whether that form was measured faster than the
    conv's tuned record) for the convs a choice concerns: those kept direct for their record (by their
    workload key) and the Winograd stages of rewritten convs (by the stage's shapes)."""
    summaries = plan.choice_summaries()
    by_key = {
        conv.key: summaries.get(weight, "rule (kept for its record; nothing measured)")
        for weight, conv in plan.recorded.items()
        if plan.keeps_direct(weight)
    }
    labels: dict[str, tuple[str, bool]] = {}
    for task in tasks:
        if task.key in by_key:
            labels[task.name] = (by_key[task.key], False)
            continue
        layer = next((x for x in report.layers if _is_stage_of(task.key, x)), None)
        if layer is not None:
            labels[task.name] = (
                layer.choice,
                layer.choice.startswith("winograd (measured") and "tuned direct" in layer.choice,
            )
    return labels


def _is_stage_of(key: WorkloadKey, layer: WinogradLayer) -> bool:
    """Whether a Winograd stage's key fits the rewritten conv: its input, its GEMM, or its output."""
    data, weight = (tuple(int(d) for d in part.split("x")) for part in layer.shape.split(" * "))
    positions = (layer.tile + 2) ** 2
    batch, channels, out_channels = data[0], data[1], weight[0]
    if key.operator.endswith("input"):
        return key.input_shape == data and key.output_shape[::2] == (positions, channels)
    if key.operator.endswith("gemm"):
        return key.input_shape[::2] == (positions, channels) and key.output_shape[::2] == (positions, out_channels)
    if key.operator.endswith("output"):
        return key.input_shape[::2] == (positions, out_channels) and key.output_shape[:2] == (batch, out_channels)
    return False
