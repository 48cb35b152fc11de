"""Build step: ONNX model + board target -> shared library and parameter file, cached by content.

A finished build folder holds build.json: the BuildArtifact without its location, with a
`schema_version`. It is read back typed, older versions migrated, so a cached build (or one made under
another TVM release) is read by this pipeline. What changed per version:

- 1: no `schema_version`; builds from before the Winograd and channels-last rewrites have no
  `winograd` or `channels_last` report (read as off).
- 2: `schema_version` added; every field present.
"""

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

from pydantic import TypeAdapter, ValidationError

from pipeline.board.profile import Arch, BoardProfile, TargetSpec
from pipeline.compiler import lowering, passes
from pipeline.compiler.coverage import Coverage, coverage_lines, measure_coverage, with_choices
from pipeline.compiler.elf import elf_arch
from pipeline.compiler.importer.model_file import ModelSpec
from pipeline.compiler.rewrite_choices import RecordingPlanner, planner_for, task_labels
from pipeline.compiler.rewrites.channels_last import ChannelsLastReport
from pipeline.compiler.rewrites.winograd import WinogradReport
from pipeline.compiler.schedules import tasks as schedule_tasks
from pipeline.compiler.winograd_choice import host_timings_digest
from pipeline.errors import PipelineError
from pipeline.paths import CACHE_DIR, RECORDS_DIR
from pipeline.records.choices import StoredChoice, load_choices
from pipeline.records.store import RecordStore, StoredRecord, load_store, shown, to_database
from pipeline.tvm_release.catalog import release_name
from pipeline.tvm_release.errors import tvm_errors
from pipeline.validation import NotReadable, first_error, versioned_document

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
BUILD_SCHEMA_VERSION = 2


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
    target: TargetSpec
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

    def report_lines(self, verbose: bool = False) -> list[str]:
        """What `invoke build` prints: the build, its library, the coverage table, the layout rewrites."""
        state = "cached" if self.cached else f"compiled in {self.compile_seconds:.1f} s"
        return [
            f"{self.model} for {self.target.mtriple} ({self.arch}) with TVM {self.tvm_version}: {state}",
            f"library {self.library}",
            *coverage_lines(self.coverage, verbose),
            *self.layout_lines(),
        ]

    @property
    def release(self) -> str:
        """The TVM release (major.minor) that built the library: its runtime must run it."""
        return release_name(self.tvm_version)


_ARTIFACT = TypeAdapter(BuildArtifact)
# Where a build lies and whether it came from the cache: the folder says that, build.json does not.
_LOCATION = ("directory", "library", "params", "cached")


def _build_info_text(artifact: BuildArtifact) -> str:
    """build.json: the artifact without its location, the target as TVM's dict, with the schema version."""
    fields = {name: value for name, value in asdict(artifact).items() if name not in _LOCATION}
    document = {"schema_version": BUILD_SCHEMA_VERSION, **fields, "target": artifact.target.as_tvm_dict()}
    return json.dumps(document, indent=2)


def _read_build(directory: Path, store: RecordStore) -> BuildArtifact:
    """The build in `directory` read back from its build.json of any version up to this one. Version 1
    migrates by its version alone: the fields added since (the layout reports) have defaults."""
    path = directory / BUILD_INFO_NAME
    try:
        data, _ = versioned_document(path.read_bytes(), str(path), "build", BUILD_SCHEMA_VERSION, unversioned=1)
        location = {"directory": directory, "library": directory / LIBRARY_NAME, "params": directory / PARAMS_NAME}
        fields = {name: value for name, value in data.items() if name != "schema_version"}
        artifact = _ARTIFACT.validate_python({**fields, **location, "cached": True})
    except ValidationError as exc:
        raise _broken_build(path, first_error(exc)) from None
    except NotReadable as exc:
        raise _broken_build(path, str(exc)) from None
    return _with_store_problems(artifact, store)


def _with_store_problems(artifact: BuildArtifact, store: RecordStore) -> BuildArtifact:
    """Unreadable record files are reported as of now, even for a cached build (they never change its key)."""
    coverage = artifact.coverage
    return replace(artifact, coverage=replace(coverage, problems=store.problems + coverage.problems))


def _broken_build(path: Path, detail: str) -> PipelineError:
    return PipelineError(f"{path} is not a readable build: {detail}", f"remove {path.parent} to rebuild it")


def resolved_target(profile: BoardProfile) -> TargetSpec:
    """The profile's target with `mcpu: host` replaced by this machine's CPU name, so the cache key
    and the result say exactly what the code was built for."""
    if profile.target.mcpu != "host":
        return profile.target
    from tvm.target import codegen

    return profile.target.with_cpu(str(codegen.llvm_get_system_cpu()))


def build_key(
    model: ModelSpec,
    profile: BoardProfile,
    records: Sequence[StoredRecord] = (),
    migrate: bool = True,
    choices: Sequence[StoredChoice] = (),
    host_timings: str = "",
) -> str:
    """Content hash of everything that changes the built library: the model's bytes, the target,
    the cross compiler, the TVM version, the records that may apply (older releases' ones too when they
    may be migrated), the stored rewrite choices and this host's Winograd timings (`host_timings`, their
    digest: they decide which convs are rewritten), the profile's Winograd and channels-last settings
    and this build recipe itself."""
    import tvm

    digest = hashlib.sha256()
    for path in model.files:  # the ONNX file and the external data files holding its weights
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    recipe = {
        "target": resolved_target(profile).as_tvm_dict(),
        "cross_compiler": profile.cross_compiler,
        "tvm": tvm.__version__,
        "input": [model.input_name, list(model.input_shape)],
        "records": sorted(r.digest for r in records),
        "migrate": migrate,
        "choices": sorted(c.digest for c in choices),
        "host_timings": host_timings,
        "winograd": profile.winograd,
        "channels_last": profile.channels_last,
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
    profile: BoardProfile,
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
    target = resolved_target(profile)
    records = store.for_target(target, tvm.__version__)
    older = store.older_releases(target, tvm.__version__) if migrate else []
    choices, _ = load_choices(target, tvm.__version__, records_dir)
    key = build_key(model, profile, records + older, migrate, choices, host_timings_digest(target))
    directory = cache_dir / "builds" / f"{model.name}-{profile.arch}-tvm{release_name(tvm.__version__)}-{key}"
    info_path = directory / BUILD_INFO_NAME
    if info_path.is_file():
        return _read_build(directory, store)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    staging.chmod(0o755)
    try:
        artifact = _compile_into(staging, directory, model, profile, key, store, records, migrate, older, choices)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _with_store_problems(artifact, store)


def _compile_into(
    out_dir: Path,
    directory: Path,
    model: ModelSpec,
    profile: BoardProfile,
    key: str,
    store: RecordStore,
    records: list[StoredRecord],
    migrate: bool,
    older: Sequence[StoredRecord] = (),
    stored_choices: Sequence[StoredChoice] = (),
) -> BuildArtifact:
    """Compile into `out_dir`, the staging folder that becomes `directory`, where the artifact points."""
    import tvm

    from pipeline.compiler.schedules.record_migration import migrations
    from pipeline.compiler.schedules.schedule_transfer import fallback_database

    started = time.perf_counter()
    target = resolved_target(profile)
    tvm_target = tvm.target.Target(target.as_tvm_dict())
    planner = RecordingPlanner(planner_for(tvm_target, records, older, stored_choices))
    mod, params, winograd, layout = lowering.import_model_reporting(
        model, profile.winograd, tvm_target, profile.channels_last, planner
    )
    doing = f"TVM could not build {model.name} for {target.mtriple}"
    fix = f"check that '{profile.cross_compiler}' is installed (scripts/install.sh) and the profile's target"
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
    coverage = with_choices(coverage, task_labels(tasks, planner.plan, winograd))
    library = out_dir / LIBRARY_NAME
    with tvm_errors(doing, fix):
        executable = passes.build_executable(applied, tvm_target)
        executable.export_library(str(library), fcompile=_compiler_for(profile))
    tvm.runtime.save_param_dict_to_file(
        {f"p{i:05d}": tensor for i, tensor in enumerate(params.get("main", []))}, str(out_dir / PARAMS_NAME)
    )
    built_arch = elf_arch(library)
    if built_arch != profile.arch:
        raise PipelineError(
            f"the library was built for {built_arch}, but board {profile.name} is {profile.arch}",
            f"set cross_compiler in boards/{profile.name}.yaml to a compiler for {profile.target.mtriple}",
        )
    artifact = BuildArtifact(
        key=key,
        directory=directory,
        library=directory / LIBRARY_NAME,
        params=directory / PARAMS_NAME,
        model=model.name,
        input_name=model.input_name,
        input_shape=tuple(model.input_shape),
        arch=built_arch,
        target=target,
        tvm_version=tvm.__version__,
        cached=False,
        compile_seconds=round(time.perf_counter() - started, 3),
        coverage=coverage,
        winograd=winograd,
        channels_last=layout,
    )
    (out_dir / BUILD_INFO_NAME).write_text(_build_info_text(artifact))
    return artifact


def load_build(directory: Path, records_dir: Path = RECORDS_DIR) -> BuildArtifact:
    """A finished build read back from its build.json, without TVM: a build made under another TVM
    release (in that release's environment) is pushed and run by this process."""
    info_path = directory / BUILD_INFO_NAME
    if not info_path.is_file():
        raise PipelineError(f"no finished build in {directory}", "build it again (invoke build)")
    return _read_build(directory, load_store(records_dir))


def _compiler_for(profile: BoardProfile) -> Any:
    """A fresh cross-compile function each time: TVM's helper mutates its option list between calls."""
    from tvm.support import cc

    return cc.cross_compiler(profile.cross_compiler)
