"""What changed in MetaSchedule traces between two releases: instruction kinds and attribute strings
(annotation keys) renamed from the older release to the newer. One entry per release pair; a trace from
a pair without an entry is never replayed, because nobody has checked what changed between them.

How an entry is verified: a record made under the older release (`invoke tune --tvm OLD`) is replayed
under the newer one by `invoke build` (docs/releases.md); each rename here is one that replay needed."""

from dataclasses import dataclass, field
from typing import Any

from pipeline.tvm_release.catalog import release_name


@dataclass(frozen=True)
class Renames:
    instructions: dict[str, str] = field(default_factory=dict)  # old instruction kind -> new
    attributes: dict[str, str] = field(default_factory=dict)  # old attribute string (annotation key) -> new


# 0.26 -> 0.27: a record tuned under 0.26 (tiny and resnet18 on local, vgg16 on rk3399-emu) replays under
# 0.27 with no rename: both name their instructions GetSBlock, SamplePerfectTile, Split, Reorder, Fuse,
# Parallel, Vectorize, Annotate (meta_schedule.* keys), ComputeAt, DecomposeReduction, ...
TABLE: dict[tuple[str, str], Renames] = {
    ("0.26", "0.27"): Renames(),
}


class NoTableEntry(LookupError):
    """No entry for this release pair: the trace must not be replayed."""


def translate_trace(trace: Any, old: str, new: str) -> Any:
    """The trace JSON (`[instructions, decisions]`, each instruction `[kind, inputs, attrs, outputs]`)
    with the names that changed between `old` and `new` replaced; unchanged when the releases are equal."""
    old, new = release_name(old), release_name(new)
    if old == new:
        return trace
    renames = TABLE.get((old, new))
    if renames is None:
        known = ", ".join(f"{a} -> {b}" for a, b in TABLE) or "none"
        raise NoTableEntry(f"no migration table entry for TVM {old} -> {new} (known: {known})")
    instructions, decisions = trace[0], trace[1] if len(trace) > 1 else []
    return [[_instruction(inst, renames) for inst in instructions], decisions]


def _instruction(inst: list[Any], renames: Renames) -> list[Any]:
    kind, inputs, attrs, outputs = inst
    attrs = [renames.attributes.get(a, a) if isinstance(a, str) else a for a in attrs]
    return [renames.instructions.get(kind, kind), inputs, attrs, outputs]
