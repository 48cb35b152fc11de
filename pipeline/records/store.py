"""The record store: MetaSchedule tuning records kept in the repository, one JSON file per workload and target.

TVM's own JSON database cannot be read by another TVM version, fails as a whole on one bad line, and
its lookup ignores the target. Our files carry provenance and a semantic workload key, are filtered
by target and TVM version here, and a bad file is reported and skipped while the rest still apply.
"""

import base64
import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from pipeline.atomic import write_atomically
from pipeline.board.profile import TargetSpec
from pipeline.paths import RECORDS_DIR
from pipeline.records.workloads import WorkloadKey
from pipeline.tvm_release.errors import reason
from pipeline.validation import first_error

FORMAT = "tvm-pipeline-record/1"
# Measured rewrite choices live under each target's folder (pipeline/records/choices.py): not records.
CHOICES_FOLDER = "choices"


@dataclass(frozen=True)
class Provenance:
    """Where a record came from, so a person can judge whether to trust it on their board."""

    tvm_version: str
    board: str
    model: str
    task: str
    created: str
    latency_us: float  # median measured run time of the schedule
    trials: int  # trials MetaSchedule spent on this workload
    emulated: bool = False  # measured under emulation (qemu): proves the tuning loop, not the board's speed
    migrated_from: str = ""  # `<release> (records/…json)`: replayed from that record, then measured on the board
    # The TVM RPC key of the server that measured it (`<board>-<token>`, one per tuning run); "" in older
    # records and where the measuring run is unknown. `board` names the board profile.
    rpc_key: str = ""


@dataclass(frozen=True)
class Record:
    """One tuned workload for one target: the file format, minus `format` and the readable `key`."""

    workload: WorkloadKey
    target: TargetSpec
    structural_hash: str  # TVM's key for the workload; a record applies only when it matches exactly
    provenance: Provenance
    ir: str  # TVM's serialized PrimFunc module, zlib-compressed (16x smaller) and base64-encoded
    tvm_record: list[Any]  # TVM's JSON for the schedule: [trace, run seconds, target, argument info]


@dataclass(frozen=True)
class StoredRecord:
    path: Path
    record: Record
    digest: str  # hash of the file, for the build cache key


@dataclass(frozen=True)
class RecordStore:
    """Every readable record under the store's folder, and one line per file that was skipped."""

    root: Path
    records: tuple[StoredRecord, ...]
    problems: tuple[str, ...]

    @property
    def version(self) -> str:
        """Short digest of every readable record: equal versions mean the same store contents."""
        return hashlib.sha256("".join(sorted(s.digest for s in self.records)).encode()).hexdigest()[:12]

    def for_target(self, target: TargetSpec, tvm_version: str) -> list[StoredRecord]:
        """The records a build for this exact target with this TVM release may apply."""
        return [
            s
            for s in self.records
            if s.record.target == target and same_release(s.record.provenance.tvm_version, tvm_version)
        ]

    def older_releases(self, target: TargetSpec, tvm_version: str) -> list[StoredRecord]:
        """The records for this exact target made under an older TVM release: a build may migrate them."""
        mine = release_key(tvm_version)
        return [
            s for s in self.records if s.record.target == target and release_key(s.record.provenance.tvm_version) < mine
        ]


def release_key(version: str) -> tuple[int, ...]:
    """major.minor as numbers, for ordering releases ("0.27.0.post1" -> (0, 27))."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split(".")[:2])


_RECORD = TypeAdapter(Record)


def load_store(root: Path = RECORDS_DIR) -> RecordStore:
    """Read all records; a file that cannot be read or does not fit the format is reported, not fatal."""
    records: list[StoredRecord] = []
    problems: list[str] = []
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        if CHOICES_FOLDER in path.relative_to(root).parts[:-1]:
            continue
        try:
            records.append(_read(path))
        except (OSError, ValueError) as exc:
            problems.append(f"{shown(path)}: skipped: {_reason(exc)}")
    return RecordStore(root, tuple(records), tuple(problems))


def _read(path: Path) -> StoredRecord:
    raw = path.read_bytes()
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    fields = {k: v for k, v in data.items() if k not in ("format", "key")}
    return StoredRecord(path, _RECORD.validate_python(fields, strict=False), hashlib.sha256(raw).hexdigest())


def save_record(record: Record, root: Path = RECORDS_DIR) -> Path:
    """Write the record unless the store already holds a faster one for this workload and target."""
    path = record_path(record, root)
    try:
        current = _read(path).record
        if (
            current.structural_hash == record.structural_hash
            and current.provenance.latency_us <= record.provenance.latency_us
        ):
            return path
    except (OSError, ValueError):
        pass  # missing or unreadable: the new record replaces it
    document = {
        "format": FORMAT,
        "key": record.workload.text(),
        **asdict(record),
        "target": record.target.as_tvm_dict(),
    }
    # One line per field: readable, and a diff shows which field of a record changed.
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in document.items()) + "\n}\n"
    write_atomically(path, text.encode())
    return path


def record_path(record: Record, root: Path = RECORDS_DIR) -> Path:
    """records/<target>/<operator>-<hash>.json: one file per workload, so a bad file costs one record."""
    return root / target_slug(record.target) / f"{record.workload.operator}-{record.structural_hash}.json"


def target_slug(target: TargetSpec) -> str:
    """Readable folder name that still separates targets differing only in attributes or core count."""
    canonical = json.dumps(target.as_tvm_dict(), sort_keys=True)
    return f"{target.mtriple.split('-', 1)[0]}-{target.mcpu}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def same_release(a: str, b: str) -> bool:
    """TVM's IR serialization changes between minor releases (0.25 cannot read 0.27's): compare major.minor."""
    return a.split(".")[:2] == b.split(".")[:2]


def to_database(stored: list[StoredRecord]) -> tuple[Any, dict[str, StoredRecord], list[str]]:
    """A MetaSchedule MemoryDatabase holding the records that TVM accepts, the records by structural hash,
    and one line per record skipped because its IR does not parse, its hash is wrong or its trace fails."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.MemoryDatabase()
    by_hash: dict[str, StoredRecord] = {}
    problems: list[str] = []
    for item in stored:
        try:
            workload = ms.database.Workload(workload_module(item.record))
            if structural_hash(workload.mod) != item.record.structural_hash:
                raise ValueError("the IR does not match structural_hash (edited or written by another TVM)")
            tuning = ms.database.TuningRecord.from_json(item.record.tvm_record, workload)
            tuning.trace.apply_to_schedule(Schedule(workload.mod), remove_postproc=False)
        except Exception as exc:  # TVM raises its own error types for bad IR and traces
            problems.append(f"{shown(item.path)}: skipped: {_reason(exc)}")
            continue
        database.commit_tuning_record(
            ms.database.TuningRecord(
                tuning.trace, database.commit_workload(workload.mod), tuning.run_secs, tuning.target, tuning.args_info
            )
        )
        by_hash[item.record.structural_hash] = item
    return database, by_hash, problems


def record_from_tuning(
    tuning: Any,
    workload: WorkloadKey,
    target: TargetSpec,
    board_name: str,
    model: str,
    task: str,
    trials: int,
    emulated: bool,
    migrated_from: str = "",
    rpc_key: str = "",
) -> Record:
    """Our record for MetaSchedule's best TuningRecord of one task (or a migrated schedule's measurement)."""
    import tvm

    run_secs = sorted(float(s) for s in tuning.run_secs)
    return Record(
        workload=workload,
        target=target,
        structural_hash=structural_hash(tuning.workload.mod),
        provenance=Provenance(
            tvm_version=tvm.__version__,
            board=board_name,
            model=model,
            task=task,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            latency_us=round(run_secs[len(run_secs) // 2] * 1e6, 3),
            trials=trials,
            emulated=emulated,
            migrated_from=migrated_from,
            rpc_key=rpc_key,
        ),
        ir=compressed_ir(tuning.workload.mod),
        tvm_record=tuning.as_json(),
    )


def compressed_ir(mod: Any) -> str:
    """A PrimFunc module as the record's `ir` field: TVM's serialization, zlib-compressed, base64."""
    from tvm.s_tir import meta_schedule as ms

    return base64.b64encode(zlib.compress(base64.b64decode(ms.database.Workload(mod).as_json()[1]), 9)).decode()


def workload_module(record: Record) -> Any:
    """The PrimFunc module a record was tuned for, read back from its `ir` field."""
    from tvm.s_tir import meta_schedule as ms

    ir = base64.b64encode(zlib.decompress(base64.b64decode(record.ir))).decode()
    return ms.database.Workload.from_json([record.structural_hash, ir]).mod


def structural_hash(mod: Any) -> str:
    """TVM's database key for a task's (normalized) PrimFunc module."""
    from tvm.s_tir import meta_schedule as ms

    return str(ms.database.Workload(mod).as_json()[0])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return first_error(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno}"
    return reason(exc)


def shown(path: Path) -> str:
    """A record's path as people see it in messages: records/<target>/<file>."""
    return "/".join(path.parts[-3:])
