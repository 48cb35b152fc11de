"""The TVM releases the pipeline runs under, with exact pins, and which one this process runs.

Why pins: a release works only with a matching tvm-ffi (0.27 with 0.1.15 crashes MetaSchedule's database
writer; 0.25 needs 0.1.12), so each release names the exact tvm-ffi it was verified with."""

import importlib.metadata
from dataclasses import dataclass

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Release:
    """A supported TVM release: `name` is major.minor (what records and results say), the rest are pins."""

    name: str
    tvm: str  # apache-tvm version
    ffi: str  # apache-tvm-ffi version


# The pipeline's code was verified under each of these (docs/releases.md); 0.27 is the default.
RELEASES: dict[str, Release] = {
    "0.26": Release("0.26", tvm="0.26.0", ffi="0.1.14.post1"),
    "0.27": Release("0.27", tvm="0.27.0.post1", ffi="0.1.14.post1"),
}
DEFAULT_RELEASE = "0.27"


def release_name(version: str) -> str:
    """major.minor of a TVM version string ("0.27.0.post1" -> "0.27")."""
    return ".".join(version.split(".")[:2])


def get_release(name: str) -> Release:
    """The release for `--tvm NAME` (major.minor or a full version); one error line for any other."""
    release = RELEASES.get(release_name(name.strip()))
    if release is None:
        raise PipelineError(
            f"TVM release '{name}' cannot be installed by the pipeline",
            f"use --tvm {' or --tvm '.join(RELEASES)} (the installable releases)",
        )
    return release


def running_release() -> Release:
    """The release installed in this process's environment, read without importing TVM."""
    try:
        version = importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:
        raise PipelineError("TVM is not installed in this environment", "run scripts/install.sh") from None
    return get_release(version)
