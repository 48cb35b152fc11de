"""A release's own environment: a virtual environment with the release's pins and the checkout's other
pins, under CACHE_DIR/tvm/<release>/venv, plus that release's runtime bundle for each board architecture.

Created on first use (or by scripts/install.sh), reused afterwards. It is assembled in a temporary folder
and renamed into place only when complete, so an interrupted install leaves nothing that looks usable.
The environment runs this very checkout (`<venv>/bin/python -m ...` from the checkout's folder); it is
relocated by the rename, which is why the pipeline starts it only as `python -m`, never by its scripts."""

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pipeline.errors import PipelineError, write_log
from pipeline.paths import CACHE_DIR, ROOT
from pipeline.stamps import is_current, write_stamp
from pipeline.tvm_release.catalog import Release, running_release

REQUIREMENTS = ROOT / "requirements.txt"
STAMP = "release.json"
TVM_DISTS = ("apache-tvm", "apache-tvm-ffi")
AARCH64_PLATFORM = ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_aarch64"]

Progress = Callable[[str], None]
"""Called with one line per step while an environment is created (it takes a minute or two)."""


def release_root(release: Release) -> Path:
    return CACHE_DIR / "tvm" / release.name


def release_python(release: Release, on_progress: Progress | None = None) -> Path:
    """The Python that runs the pipeline under `release`: this process's own for the running release,
    else the release's environment, created first if it is missing or its pins changed."""
    if release == running_release():
        return Path(sys.executable)
    root = release_root(release)
    venv = root / "venv"
    root.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{release.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        key = _key(release)
        if not is_current(venv / STAMP, key, [venv / "bin" / "python"]):
            show = on_progress or (lambda line: None)
            _create(release, venv, key, show)
    return venv / "bin" / "python"


def site_packages(release: Release) -> Path | None:
    """Where the release's packages are installed, without running its Python: None for the running
    release (the caller finds its packages through this process's import system)."""
    if release == running_release():
        return None
    found = sorted((release_root(release) / "venv" / "lib").glob("python3*/site-packages"))
    if not found:
        raise PipelineError(
            f"TVM {release.name} has no environment yet",
            f"run scripts/install.sh or any step with --tvm {release.name}",
        )
    return found[0]


def pinned_requirements(release: Release) -> list[str]:
    """requirements.txt with TVM's two pins replaced by the release's: everything else stays identical."""
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    kept = [line for line in lines if line and not line.startswith("#") and _dist(line) not in TVM_DISTS]
    return [f"apache-tvm=={release.tvm}", f"apache-tvm-ffi=={release.ffi}", *kept]


def _dist(requirement: str) -> str:
    return requirement.split("==")[0].split(">")[0].split("<")[0].strip().lower()


def _key(release: Release) -> dict[str, object]:
    return {"release": asdict(release), "requirements": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()}


def _create(release: Release, venv: Path, key: dict[str, object], on_progress: Progress) -> None:
    base_python = getattr(sys, "_base_executable", sys.executable)
    staging = Path(tempfile.mkdtemp(prefix=".venv-", dir=venv.parent))
    try:
        fresh = staging / "venv"
        on_progress(f"TVM {release.name}: creating its virtual environment in {venv}")
        _run([base_python, "-m", "venv", str(fresh)], release, "creating the virtual environment")
        python = str(fresh / "bin" / "python")
        requirements = staging / "requirements.txt"
        pins = pinned_requirements(release)
        requirements.write_text("\n".join(pins) + "\n")
        on_progress(f"TVM {release.name}: installing apache-tvm=={release.tvm} and {len(pins) - 1} pinned packages")
        _run([python, "-m", "pip", "install", "-q", "-r", str(requirements)], release, "installing its packages")
        on_progress(f"TVM {release.name}: downloading the aarch64 runtime wheels for boards")
        download_board_wheels(release, python)
        write_stamp(fresh / STAMP, key)
        if venv.exists():
            stale = staging / "stale"
            venv.rename(stale)
        fresh.rename(venv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_board_wheels(release: Release, python: str = sys.executable) -> None:
    """The release's aarch64 wheels, from which the board runtime is taken (pip's own configuration)."""
    wheels = CACHE_DIR / "wheels" / "aarch64"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"apache-tvm=={release.tvm}", f"apache-tvm-ffi=={release.ffi}"]
    command = [python, "-m", "pip", "download", "-q", "--no-deps", *AARCH64_PLATFORM, "-d", str(wheels), *pins]
    _run(command, release, "downloading its aarch64 wheels")


def _run(command: list[str], release: Release, step: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        log = write_log(f"tvm-{release.name}", f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}")
        lines = [line for line in result.stderr.splitlines() if line.strip() and "WARNING" not in line]
        raise PipelineError(
            f"TVM {release.name} could not be installed ({step}): {lines[-1] if lines else result.returncode}",
            "check pip's configuration (pip config list) and the network, then run the step again",
            log,
        )
