"""Choice records: which form of a conv was measured fastest on a board, kept next to the tuning records.

Why: a rewrite (Winograd) replaces a conv's tasks, so whether it pays against the conv's tuned direct
schedule can only be measured, and only on the board that runs the code. The measurement is kept
like a record: one JSON file per conv workload and target under records/<target>/choices/, keyed by the
semantic workload key of the conv's direct task, with each candidate's time and where it was measured.
A build applies it; without one, a conv with a record keeps it (pipeline/compiler/rewrite_choices.py).
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from pipeline.atomic import write_atomically
from pipeline.board.profile import TargetSpec
from pipeline.paths import RECORDS_DIR
from pipeline.records.store import CHOICES_FOLDER, same_release, shown, target_slug
from pipeline.records.workloads import WorkloadKey

FORMAT = "tvm-pipeline-choice/1"

Form = Literal["direct", "winograd"]


@dataclass(frozen=True)
class Candidate:
    """One form of the conv, as it ran: the direct task with its record (or default schedule), or the
    Winograd stages F(m x m, 3x3) with their best schedules, summed."""

    form: Form
    tile: int  # m of F(m x m, 3x3); 0 for the direct form
    ms: float  # best measured run time
    schedule: str  # how it was scheduled: the direct record's file, "default", or the stages' kinds


@dataclass(frozen=True)
class Choice:
    """The measured candidates of one conv on one board: the fastest is applied."""

    rewrite: Literal["winograd"]
    workload: WorkloadKey  # the conv's direct task
    target: TargetSpec
    board: str
    tvm_version: str
    pipeline_revision: str  # the build recipe's digest (pipeline/compiler/builder.py) that measured it
    emulated: bool  # measured under emulation: qemu's times, not the board's
    created: str
    candidates: tuple[Candidate, ...]

    @property
    def best(self) -> Candidate:
        return min(self.candidates, key=lambda c: c.ms)

    @property
    def chosen(self) -> Form:
        return self.best.form

    def direct(self) -> Candidate | None:
        return next((c for c in self.candidates if c.form == "direct"), None)

    def summary(self) -> str:
        """For the coverage table: `tuned direct (measured 1.8x faster than winograd)` or
        `winograd (measured 2.3x faster than the tuned direct record)`, `, emulated` when so."""
        best = self.best
        others = [c for c in self.candidates if c.form != best.form]
        if not others:
            return f"{best.form} (measured alone)"
        rival = min(others, key=lambda c: c.ms)
        ratio = rival.ms / max(best.ms, 1e-9)
        tuned = rival.schedule not in ("", "default")
        where = ", emulated" if self.emulated else ""
        if best.form == "direct":
            mine = "tuned direct" if best.schedule not in ("", "default") else "direct"
            return f"{mine} (measured {ratio:.1f}x faster than winograd on {self.board}{where})"
        return (
            f"winograd (measured {ratio:.1f}x faster than the {'tuned direct record' if tuned else 'direct default'}"
            f" on {self.board}{where})"
        )


@dataclass(frozen=True)
class StoredChoice:
    path: Path
    choice: Choice
    digest: str  # hash of the file, for the build cache key

    @property
    def chosen(self) -> Form:
        return self.choice.chosen

    def tile(self) -> int:
        return self.choice.best.tile


_CHOICE = TypeAdapter(Choice)


def choice_json(choice: Choice) -> dict[str, Any]:
    """The choice as JSON data, its target in the form TVM takes (as record files keep it)."""
    return {**asdict(choice), "target": choice.target.as_tvm_dict()}


def choice_from_json(data: dict[str, Any]) -> Choice:
    return _CHOICE.validate_python(data, strict=False)


def load_choices(
    target: TargetSpec, tvm_version: str, root: Path = RECORDS_DIR
) -> tuple[list[StoredChoice], list[str]]:
    """The choices for this exact target and TVM release, and one line per file that was skipped."""
    folder = root / target_slug(target) / CHOICES_FOLDER
    found: list[StoredChoice] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            choice = choice_from_json({k: v for k, v in data.items() if k not in ("format", "key")})
        except (OSError, ValueError, ValidationError) as exc:
            problems.append(f"{shown(path)}: skipped: {str(exc).splitlines()[0]}")
            continue
        if choice.target == target and same_release(choice.tvm_version, tvm_version):
            found.append(StoredChoice(path, choice, hashlib.sha256(raw).hexdigest()))
    return found, problems


def choice_path(choice: Choice, root: Path = RECORDS_DIR) -> Path:
    """records/<target>/choices/<rewrite>-<hash of the workload key>.json: one file per conv workload."""
    digest = hashlib.sha256(choice.workload.text().encode()).hexdigest()[:16]
    return root / target_slug(choice.target) / CHOICES_FOLDER / f"{choice.rewrite}-{digest}.json"


def save_choice(choice: Choice, root: Path = RECORDS_DIR) -> Path:
    """Write the choice, replacing an earlier measurement of the same conv on the same target."""
    path = choice_path(choice, root)
    document = {"format": FORMAT, "key": choice.workload.text(), **choice_json(choice)}
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in document.items()) + "\n}\n"
    write_atomically(path, text.encode())
    return path
