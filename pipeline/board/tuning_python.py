"""The Python a board needs to serve TVM RPC while tuning: `python -m tvm.exec.rpc_server` runs there.

A board without Python (the emulated rk3399, a bare board image) gets one pushed: Debian's arm64
CPython 3.11 unpacked from its .deb files plus the aarch64 wheels of TVM (runtime only: the 240 MB
compiler library is left out) and the few packages the RPC server imports. scripts/install.sh
downloads those files; this module only assembles them, once, into a cached archive under
CACHE_DIR/board-python, and installs that archive on the board in a folder named by its digest.

On the board a small launcher script starts that Python under the profile's command prefix. Under
qemu-user without binfmt the host kernel cannot exec the aarch64 binary that is `sys.executable`,
and TVM's RPC server spawns workers with it, so a `sitecustomize` in the archive points
`sys.executable` at the launcher.
"""

import fcntl
import hashlib
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.board.session import Board
from pipeline.errors import PipelineError
from pipeline.paths import CACHE_DIR

INSTALL_FIX = "run scripts/install.sh"
PYTHON = "usr/bin/python3.11"
SITE_PACKAGES = "usr/lib/python3/dist-packages"  # on Debian's sys.path for a Python under <root>/usr
# Replaces Debian's own (a link to /etc/python3.11/sitecustomize.py), which would shadow one in SITE_PACKAGES.
SITECUSTOMIZE_PATH = "usr/lib/python3.11/sitecustomize.py"
LIBRARY_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu")
# The environment's own Debian 12 dynamic loader and C library start the Python, so it runs on a board
# with an older glibc (Debian 11, Ubuntu 18.04); the board's own programs never see that C library.
LOADER = "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"
# Debian arm64 packages (install.sh downloads them) and wheels the RPC server needs besides TVM's own.
DEBIAN_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libexpat1",
    "zlib1g",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libc6",
)
WHEELS = ("apache_tvm", "apache_tvm_ffi", "numpy", "ml_dtypes", "typing_extensions", "cloudpickle", "psutil")
# Parts of the wheels a runtime-only TVM never opens: the compiler, CUDA, headers and sources.
LEFT_OUT = (
    "tvm/lib/libtvm_compiler.so",
    "tvm/lib/libtvm_runtime_cuda.so",
    "tvm/3rdparty/",
    "tvm/include/",
    "tvm_ffi/3rdparty/",
    "tvm_ffi/src/",
    "tvm_ffi/include/",
)
EXTRA_RUNTIME = f"{SITE_PACKAGES}/tvm/lib/libtvm_runtime_extra.so"  # random_fill_for_measure, for the runner
LAUNCHER_VARIABLE = "PIPELINE_BOARD_PYTHON"
SITECUSTOMIZE = f'''"""Written by tvm-edge-pipeline: processes Python spawns start through the launcher
({LAUNCHER_VARIABLE}), which runs this aarch64 Python under the board's command prefix (qemu when emulated)."""
import os
import sys

sys.executable = os.environ.get("{LAUNCHER_VARIABLE}", sys.executable)
'''
BOARD_FOLDER = "python"
LAUNCHER = f"{BOARD_FOLDER}/python"
INSTALL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BoardPython:
    """How to start Python on the board: `command` is the program (a shell word), run under the profile's
    command prefix when `under_prefix` (the pushed launcher applies the prefix itself); `load_library` is the TVM
    runtime library with the measurement helpers, for a runtime-only TVM (None when TVM has it)."""

    command: str
    load_library: str | None
    under_prefix: bool = True


def board_python(session: Board) -> BoardPython:
    """The board's Python with TVM: this host's own for the `local` board (it is this machine),
    the profile's `tuning.python` when it names one, else the pushed aarch64 environment."""
    board = session.profile
    if board.tuning.python is not None:
        return BoardPython(shlex.quote(board.tuning.python), None)
    if board.ssh.embedded and not board.emulated:
        return BoardPython(shlex.quote(sys.executable), None)
    if board.arch != "aarch64":
        raise PipelineError(
            f"board {board.name} has no Python with TVM for tuning",
            f"set tuning.python in the profile to the board's Python that imports TVM {_tvm_version()}",
        )
    archive = environment_archive()
    folder = install_environment(session, archive)
    return BoardPython(shlex.quote(f"{board.remote_dir}/{LAUNCHER}"), f"{folder}/{EXTRA_RUNTIME}", under_prefix=False)


def environment_archive(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached board environment archive, assembled from install.sh's downloads when missing."""
    debs = _downloads(cache_dir / "debs" / "arm64", DEBIAN_PACKAGES, "_arm64.deb")
    wheels = _downloads(cache_dir / "wheels" / "aarch64", WHEELS, ".whl")
    sources = sorted(debs + wheels)
    recipe = [SITECUSTOMIZE, SITECUSTOMIZE_PATH, *LEFT_OUT, *(f"{p.name} {p.stat().st_size}" for p in sources)]
    digest = hashlib.sha256("\n".join(recipe).encode()).hexdigest()[:16]
    base = cache_dir / "board-python"
    base.mkdir(parents=True, exist_ok=True)
    archive = base / f"env-{digest}.tar.gz"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not archive.is_file():
            _assemble(debs, wheels, archive)
            for stale in base.glob("env-*.tar.gz"):
                if stale != archive:
                    stale.unlink()
    return archive


def _downloads(folder: Path, names: tuple[str, ...], suffix: str) -> list[Path]:
    """One downloaded file per name (the newest version if several), or the install hint."""
    found = []
    for name in names:
        matches = sorted(folder.glob(f"{name}_*{suffix}" if suffix.endswith(".deb") else f"{name}-*{suffix}"))
        if not matches:
            raise PipelineError(
                f"the board Python for tuning lacks {name} (no {name}*{suffix} in {folder})", INSTALL_FIX
            )
        found.append(matches[-1])
    return found


def _assemble(debs: list[Path], wheels: list[Path], archive: Path) -> None:
    """Unpack the packages into a staging folder, add sitecustomize, write the archive under a
    temporary name and rename it into place."""
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=archive.parent) as staging:
        root = Path(staging) / "env"
        for deb in debs:
            result = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
            if result.returncode != 0:
                raise PipelineError(f"cannot unpack {deb.name}: {result.stderr.strip()}", INSTALL_FIX)
        site = root / SITE_PACKAGES
        site.mkdir(parents=True, exist_ok=True)
        for wheel in wheels:
            _unpack_wheel(wheel, site)
        (root / SITECUSTOMIZE_PATH).unlink(missing_ok=True)
        (root / SITECUSTOMIZE_PATH).write_text(SITECUSTOMIZE)
        temp = Path(staging) / archive.name
        with tarfile.open(temp, "w:gz", compresslevel=6) as tar:
            for path in sorted(root.iterdir()):
                tar.add(path, arcname=path.name)
        temp.rename(archive)


def _unpack_wheel(wheel: Path, site: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if member.filename.startswith(LEFT_OUT):
                    continue
                target = Path(archive.extract(member, site))
                if member.filename.endswith(".so") or ".so." in member.filename:
                    target.chmod(0o755)
    except zipfile.BadZipFile:
        raise PipelineError(f"{wheel.name} is damaged", INSTALL_FIX) from None


def install_environment(board: Board, archive: Path) -> str:
    """Make <remote_dir>/python/env-<digest> hold the archive's environment and write the launcher;
    an installed environment is kept, an interrupted install leaves nothing behind."""
    name = archive.name.removesuffix(".tar.gz")
    folder = f"{board.remote_dir}/{BOARD_FOLDER}/{name}"
    check = board.run(f"test -x {shlex.quote(folder)}/{PYTHON}", timeout_s=30)
    if check.exit_code != 0:
        board.push({f"{BOARD_FOLDER}/{archive.name}": archive})
        result = board.run(_unpack_script(board.remote_dir, name), timeout_s=INSTALL_TIMEOUT_S)
        if result.exit_code != 0:
            raise PipelineError(
                f"unpacking the board Python in {folder} failed: {result.stderr.strip()[-300:]}",
                "check free space on the board (about 150 MB are needed)",
            )
    with _launcher_file(board, name) as launcher:
        board.push({LAUNCHER: launcher})
    return folder


def _unpack_script(remote_dir: str, name: str) -> str:
    """Unpack to a temporary folder (removed if the script is stopped), rename it into place, and
    remove older environments and the archive."""
    folder = shlex.quote(f"{remote_dir}/{BOARD_FOLDER}")
    return (
        f"cd {folder} || exit 1; rm -rf .env-*.part; part=.{name}.part; trap 'rm -rf \"$part\"' EXIT; "
        f'trap \'exit 143\' TERM INT; mkdir "$part" && tar -xzf {name}.tar.gz -C "$part" || exit 1; '
        f'for old in env-*; do [ "$old" = {name} ] || [ ! -d "$old" ] || rm -rf "$old"; done; '
        f'mv "$part" {name} && rm -f {name}.tar.gz'
    )


@contextmanager
def _launcher_file(board: Board, name: str) -> Iterator[Path]:
    """The launcher script for this board, as a local file to push."""
    library_path = ":".join(f"$env/{folder}" for folder in LIBRARY_DIRS)
    python = f'"$env/{LOADER}" --library-path "{library_path}" "$env/{PYTHON}"'
    text = "\n".join(
        [
            "#!/bin/sh",
            "# Written by tvm-edge-pipeline: the board's Python for TVM RPC, under the profile's command prefix.",
            'self=$(readlink -f "$0")',
            f'env=$(dirname "$self")/{name}',
            f'export {LAUNCHER_VARIABLE}="$self"',
            f'exec {board.prefixed(python)} "$@"',
            "",
        ]
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "python"
        path.write_text(text)
        path.chmod(0o755)
        yield path


def _tvm_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("apache-tvm")


def main() -> int:
    """Assemble (or confirm) the archive; the install script runs this."""
    try:
        archive = environment_archive()
    except PipelineError as exc:
        print(f"board python: {exc}", file=sys.stderr)
        return 1
    print(f"board python: aarch64 environment for tuning in {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
