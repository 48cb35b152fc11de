"""Board profiles: one validated YAML file per board under boards/."""

import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from pipeline.errors import PipelineError
from pipeline.paths import BOARDS_DIR, CACHE_DIR
from pipeline.validation import StrictModel, first_error

PLACEHOLDER = "CHANGE-ME"
# In command_prefix: this checkout's cache folder, where scripts/install.sh unpacks the emulated board's userland.
CACHE_VARIABLE = "{cache}"

Arch = Literal["aarch64", "x86_64"]
CoveragePolicy = Literal["warn", "refuse"]


class SshSettings(StrictModel):
    """How to reach the board. `embedded` boards are served by the pipeline's own sshd on loopback,
    which supplies user, key and known_hosts itself."""

    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    embedded: bool = False
    connect_timeout_s: float = Field(10.0, gt=0)

    @field_validator("host", "user")
    @classmethod
    def _not_placeholder(cls, value: str | None) -> str | None:
        if value == PLACEHOLDER:
            raise ValueError("is still the placeholder CHANGE-ME: fill in your board's value")
        return value

    @field_validator("key_file", "known_hosts")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class TargetSpec(StrictModel):
    """A TVM target: as a profile states it (`mcpu: host` allowed), and as a build resolved it
    (`pipeline/compiler/builder.py`'s resolved_target), which records and results keep. Files hold it as
    the dict TVM 0.27 takes (`as_tvm_dict`; target strings are rejected there)."""

    kind: Literal["llvm"] = "llvm"
    mtriple: str
    mcpu: str
    mattr: list[str] = []
    num_cores: int = Field(alias="num-cores", ge=1)

    @property
    def arch(self) -> Arch:
        machine = self.mtriple.split("-", 1)[0]
        if machine not in ("aarch64", "x86_64"):
            raise PipelineError(
                f"unsupported target triple {self.mtriple}", "use aarch64-linux-gnu or x86_64-linux-gnu"
            )
        return machine  # type: ignore[return-value]

    def as_tvm_dict(self) -> dict[str, Any]:
        """What tvm.target.Target takes, and the form record, result and build files store."""
        return self.model_dump(by_alias=True)

    def with_cpu(self, mcpu: str) -> "TargetSpec":
        return self.model_copy(update={"mcpu": mcpu})

    def text(self) -> str:
        """`aarch64-linux-gnu/cortex-a72/2 cores/+neon`: the target in one line of a report."""
        return f"{self.mtriple}/{self.mcpu}/{self.num_cores} cores" + (f"/{','.join(self.mattr)}" if self.mattr else "")

    def differences(self, other: "TargetSpec") -> list[str]:
        """Each field that differs, as `mcpu cortex-a72 -> generic`, in TVM's key order."""
        mine, theirs = self.as_tvm_dict(), other.as_tvm_dict()
        return [f"{key} {mine[key]} -> {theirs[key]}" for key in sorted(mine) if mine[key] != theirs[key]]


class TimingDefaults(StrictModel):
    warmup: int = Field(1, ge=0)
    runs: int = Field(10, ge=1)
    timeout_s: float = Field(600.0, gt=0)


class TuningSettings(StrictModel):
    """How `invoke tune` measures on the board. `python`: the board's Python with TVM installed; unset, the
    pipeline pushes its own aarch64 one (this host's for `local`). A measurement session that runs longer
    than `session_timeout_s` is killed and counted as failed; the RPC server must register within
    `start_timeout_s`. A small budget goes to the largest tasks, `min_trials_per_task` each: below 16
    MetaSchedule's picks are close to random, but where one measurement takes a minute (emulation)
    covering every task with a few measured candidates beats searching a few tasks well."""

    python: str | None = None
    min_trials_per_task: int = Field(16, ge=1)
    session_timeout_s: float = Field(60.0, gt=0)
    start_timeout_s: float = Field(120.0, gt=0)


class CoverageSettings(StrictModel):
    """What a build does when too little of the conv/dense work runs tuned schedules."""

    policy: CoveragePolicy = "warn"
    min_tuned_flops: float = Field(0.9, ge=0.0, le=1.0)


class BoardProfile(StrictModel):
    name: str
    description: str = ""
    emulated: bool = False
    ssh: SshSettings
    target: TargetSpec
    cross_compiler: str
    threads: int = Field(ge=1)
    cpu_affinity: list[int] | None = None
    remote_dir: str
    command_prefix: str = ""
    timing: TimingDefaults = TimingDefaults()
    coverage: CoverageSettings | None = None
    tuning: TuningSettings = TuningSettings()
    # Rewrite eligible 3x3 convs into Winograd F(4x4, 3x3) (pipeline/compiler/rewrites/winograd.py, docs/winograd.md).
    winograd: bool = True
    # Compute strided convs (7x7 stems, 3x3 stride 2) channels-last (pipeline/compiler/rewrites/channels_last.py).
    channels_last: bool = True

    @property
    def arch(self) -> Arch:
        return self.target.arch

    @field_validator("command_prefix")
    @classmethod
    def _cache_folder_in_prefix(cls, value: str) -> str:
        """`{cache}` becomes the absolute cache folder, so a profile that names a sysroot under the cache
        (qemu's -L) works in any clone, wherever it is checked out."""
        return value.replace(CACHE_VARIABLE, shlex.quote(str(CACHE_DIR.resolve())))

    @field_validator("remote_dir")
    @classmethod
    def _cache_folder_in_remote_dir(cls, value: str) -> str:
        """An embedded board's folder under the cache: checkouts on one machine never share it."""
        return value.replace(CACHE_VARIABLE, str(CACHE_DIR.resolve()))


def available_boards(boards_dir: Path = BOARDS_DIR) -> list[str]:
    return sorted(p.stem for p in boards_dir.glob("*.yaml"))


def load_board(name_or_path: str, boards_dir: Path = BOARDS_DIR) -> BoardProfile:
    """Read and validate a profile by board name (boards/<name>.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = boards_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(available_boards(boards_dir)) or "none"
        raise PipelineError(f"unknown board '{name_or_path}'", f"known boards: {known}; or add {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{path}: invalid YAML{where}", "fix the syntax of the profile") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping of profile fields", "see boards/local.yaml for the format")
    try:
        return BoardProfile.model_validate(data)
    except ValidationError as exc:
        raise PipelineError(f"{path}: {first_error(exc)}", "fix the board profile") from None
