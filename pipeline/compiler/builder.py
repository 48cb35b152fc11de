"""Build step: ONNX model + board target -> shared library and parameter file, cached by content."""

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.board.profile import Arch, BoardProfile
from pipeline.compiler import lowering, passes
from pipeline.compiler.coverage import Coverage, measure_coverage
from pipeline.compiler.elf import elf_arch
from pipeline.compiler.importer.model_file import ModelSpec
from pipeline.compiler.rewrites.channels_last import ChannelsLastReport
from pipeline.compiler.rewrites.winograd import WinogradReport
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.errors import PipelineError
from pipeline.paths import CACHE_DIR, RECORDS_DIR
from pipeline.records.store import RecordStore, StoredRecord, load_store, shown, to_database
from pipeline.tvm_release.catalog import release_name
from pipeline.tvm_release.errors import tvm_errors

# The build's output depends on its recipe as well as on its inputs: every source of the build and
# records packages is hashed, so editing any of them rebuilds (no hand-kept list to forget).
PACKAGE = Path(__file__).resolve().parent.parent
RECIPE_PACKAGES = tuple(PACKAGE / name for name in ("compiler", "records"))
# Of the ground floors, what changes a build: the release shims, the trace renames and the tiling arithmetic.
RECIPE_MODULES = (
    PACKAGE / "tvm_release" / "compat.py",
    PACKAGE / "tvm_release" / "trace_renames.py",
    PACKAGE / "tiling.py",
)

LIBRARY_NAME = "model.so"
PARAMS_NAME = "params.bin"
BUILD_INFO_NAME = "build.json"


@dataclass(frozen=True)
class BuildArtifact:
    """What the push step needs, and what the result records about the build."""

    key: str
    directory: Path
    library: Path
    params: Path
    model: str
    input_name: str
    input_shape: tuple[int, ...]
    arch: Arch
    target: dict[str, Any]
    tvm_version: str
    cached: bool
    compile_seconds: float
    coverage: Coverage
    # Which convs run Winograd, multiply-adds before/after, per-layer error (off: a build read back without one).
    winograd: WinogradReport = field(default_factory=lambda: WinogradReport.off(0))
    # How many strided convs run channels-last, or why none could (pipeline/compiler/rewrites/channels_last.py).
    channels_last: ChannelsLastReport = field(default_factory=lambda: ChannelsLastReport(False))

    def layout_lines(self) -> list[str]:
        """The build's report of its layout rewrites, for the console."""
        return self.winograd.lines() + self.channels_last.lines()

    @property
    def release(self) -> str:
        """The TVM release (major.minor) that built the library: its runtime must run it."""
        return release_name(self.tvm_version)


def resolved_target(board: BoardProfile) -> dict[str, Any]:
    """The profile's target with `mcpu: host` replaced by this machine's CPU name, so the cache key
    and the result say exactly what the code was built for."""
    target = board.target.as_tvm_dict()
    if target["mcpu"] == "host":
        from tvm.target import codegen

        target["mcpu"] = str(codegen.llvm_get_system_cpu())
    return target


def build_key(model: ModelSpec, board: BoardProfile, records: Sequence[StoredRecord] = (), migrate: bool = True) -> str:
    """Content hash of everything that changes the built library: the model's bytes, the target,
    the cross compiler, the TVM version, the records that may apply (older releases' ones too when they
    may be migrated), the profile's Winograd and channels-last settings and this build recipe itself."""
    import tvm

    digest = hashlib.sha256()
    for path in model.files:  # the ONNX file and the external data files holding its weights
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    recipe = {
        "target": resolved_target(board),
        "cross_compiler": board.cross_compiler,
        "tvm": tvm.__version__,
        "input": [model.input_name, list(model.input_shape)],
        "records": sorted(r.digest for r in records),
        "migrate": migrate,
        "winograd": board.winograd,
        "channels_last": board.channels_last,
        "recipe": recipe_digest(),
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def recipe_digest() -> str:
    """One hash over the recipe packages' sources, by path relative to the package root."""
    digest = hashlib.sha256()
    sources = [path for package in RECIPE_PACKAGES for path in package.rglob("*.py")] + list(RECIPE_MODULES)
    for source in sorted(sources):
        digest.update(str(source.relative_to(PACKAGE)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def build(
    model: ModelSpec,
    board: BoardProfile,
    cache_dir: Path = CACHE_DIR,
    records_dir: Path = RECORDS_DIR,
    migrate: bool = True,
) -> BuildArtifact:
    """Return the cached build for this exact input, or compile it and store it atomically.
    The records for the board's target and TVM release are applied; with `migrate`, a task without one
    gets an older release's record of its workload, replayed and checked (pipeline/compiler/schedules/record_migration.py).
    The artifact says which tasks they covered."""
    import tvm

    store = load_store(records_dir)
    target = resolved_target(board)
    records = store.for_target(target, tvm.__version__)
    older = store.older_releases(target, tvm.__version__) if migrate else []
    key = build_key(model, board, records + older, migrate)
    directory = cache_dir / "builds" / f"{model.name}-{board.arch}-tvm{release_name(tvm.__version__)}-{key}"
    info_path = directory / BUILD_INFO_NAME
    if info_path.is_file():
        return _artifact_from_info(directory, json.loads(info_path.read_text()), store, cached=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    staging.chmod(0o755)
    try:
        info = _compile_into(staging, model, board, key, store, records, migrate)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _artifact_from_info(directory, info, store, cached=False)


def _compile_into(
    out_dir: Path,
    model: ModelSpec,
    board: BoardProfile,
    key: str,
    store: RecordStore,
    records: list[StoredRecord],
    migrate: bool,
) -> dict[str, Any]:
    import tvm

    from pipeline.compiler.schedules.record_migration import migrations
    from pipeline.compiler.schedules.schedule_transfer import fallback_database

    started = time.perf_counter()
    target = resolved_target(board)
    tvm_target = tvm.target.Target(target)
    mod, params, winograd, layout = lowering.import_model_reporting(
        model, board.winograd, tvm_target, board.channels_last
    )
    doing = f"TVM could not build {model.name} for {target['mtriple']}"
    fix = f"check that '{board.cross_compiler}' is installed (scripts/install.sh) and the profile's target"
    with tvm_errors(doing, fix):
        fused = passes.fuse(mod, tvm_target)
        tasks = schedule_tasks.extract_tasks(fused, tvm_target)
    tuned, applicable, rejected = to_database(records)
    # Tasks without a record of this release get an older release's record of the same workload when it
    # replays and computes the same; else a schedule transferred from a record of another shape or the
    # default rules' (pipeline/compiler/schedules/default_schedules.py), never TVM's naive loops; one apply step.
    migrated, not_migrated = (
        migrations(fused, tasks, tvm_target, store, target, set(applicable)) if migrate else ({}, [])
    )
    database, choices = fallback_database(
        fused, tvm_target, tuned, {h: shown(s.path) for h, s in applicable.items()}, migrated
    )
    with tvm_errors(doing, fix):
        applied = schedule_tasks.apply_database(fused, database, tvm_target)
    coverage = measure_coverage(
        tasks,
        passes.scheduled_functions(applied),
        applicable,
        store,
        target,
        tvm.__version__,
        rejected + not_migrated,
        choices,
    )
    library = out_dir / LIBRARY_NAME
    with tvm_errors(doing, fix):
        executable = passes.build_executable(applied, tvm_target)
        executable.export_library(str(library), fcompile=_compiler_for(board))
    tvm.runtime.save_param_dict_to_file(
        {f"p{i:05d}": tensor for i, tensor in enumerate(params.get("main", []))}, str(out_dir / PARAMS_NAME)
    )
    built_arch = elf_arch(library)
    if built_arch != board.arch:
        raise PipelineError(
            f"the library was built for {built_arch}, but board {board.name} is {board.arch}",
            f"set cross_compiler in boards/{board.name}.yaml to a compiler for {board.target.mtriple}",
        )
    info = {
        "key": key,
        "model": model.name,
        "input_name": model.input_name,
        "input_shape": list(model.input_shape),
        "arch": built_arch,
        "target": target,
        "tvm_version": tvm.__version__,
        "compile_seconds": round(time.perf_counter() - started, 3),
        "coverage": asdict(coverage),
        "winograd": asdict(winograd),
        "channels_last": asdict(layout),
    }
    (out_dir / BUILD_INFO_NAME).write_text(json.dumps(info, indent=2))
    return info


def load_build(directory: Path, records_dir: Path = RECORDS_DIR) -> BuildArtifact:
    """A finished build read back from its build.json, without TVM: a build made under another TVM
    release (in that release's environment) is pushed and run by this process."""
    info_path = directory / BUILD_INFO_NAME
    if not info_path.is_file():
        raise PipelineError(f"no finished build in {directory}", "build it again (invoke build)")
    return _artifact_from_info(directory, json.loads(info_path.read_text()), load_store(records_dir), cached=True)


def _compiler_for(board: BoardProfile) -> Any:
    """A fresh cross-compile function each time: TVM's helper mutates its option list between calls."""
    from tvm.support import cc

    return cc.cross_compiler(board.cross_compiler)


def _artifact_from_info(directory: Path, info: dict[str, Any], store: RecordStore, cached: bool) -> BuildArtifact:
    """Unreadable record files are reported as of now, even for a cached build (they never change its key)."""
    coverage = Coverage.from_json(info["coverage"])
    return BuildArtifact(
        key=info["key"],
        directory=directory,
        library=directory / LIBRARY_NAME,
        params=directory / PARAMS_NAME,
        model=info["model"],
        input_name=info["input_name"],
        input_shape=tuple(info["input_shape"]),
        arch=info["arch"],
        target=info["target"],
        tvm_version=info["tvm_version"],
        cached=cached,
        compile_seconds=info["compile_seconds"],
        coverage=replace(coverage, problems=store.problems + coverage.problems),
        winograd=WinogradReport.from_json(info.get("winograd")),
        channels_last=ChannelsLastReport.from_json(info.get("channels_last")),
    )
