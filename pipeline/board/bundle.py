"""The runtime bundle a board needs to run a compiled model without Python: the C++ runner plus
TVM's two runtime libraries, built once per TVM release and architecture and cached under
CACHE_DIR/bundle/<release>/<arch>: a library runs on the runtime of the release that built it.

The runner is compiled against the release's own tvm-ffi headers and linked with that release's
libraries (from its environment for x86_64, from its aarch64 wheels for boards).
The cache is keyed by the runner source, the TVM and tvm-ffi versions and the compile command, so
editing runner/tvm_runner.cc or upgrading TVM rebuilds it on next use. A bundle is assembled in a
temporary folder and renamed into place, so an interrupted build never leaves half a bundle."""

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from pipeline.board.profile import Arch
from pipeline.errors import PipelineError
from pipeline.paths import CACHE_DIR, ROOT
from pipeline.stamps import is_current, write_stamp
from pipeline.tvm_release.catalog import Release, get_release, running_release
from pipeline.tvm_release.environment import release_python, site_packages

RUNNER_SOURCE = ROOT / "runner" / "tvm_runner.cc"
RUNNER = "tvm_runner"
RUNTIME_LIB = "lib/libtvm_runtime.so"
FFI_LIB = "lib/libtvm_ffi.so"
STAMP = "bundle.json"
INSTALL_FIX = "run scripts/install.sh"

# The runner must run wherever TVM's runtime does: libtvm_runtime.so needs glibc 2.27 (Ubuntu 18.04),
# so the runner is built by zig's C++ driver (the ziglang package) against glibc 2.27's symbols, with
# LLVM's libc++ linked statically. TVM's libraries use libstdc++, which is safe because the runner
# reaches TVM only through tvm-ffi's C ABI (runner/tvm_runner.cc says how).
GLIBC_FLOOR = "2.27"
COMPILER = ["-m", "ziglang", "c++"]
# --no-as-needed keeps libtvm_runtime.so linked although the runner calls none of its symbols
# directly: loading it is what registers the Relax VM and runtime.LoadParamsFromFile.
# The runner must not export tvm-ffi's C++ classes (ffi::Error's vtable and type_info): TVM's libraries
# would bind to those libc++ versions instead of their own. Without TVM_FFI_DLL's default visibility,
# -fvisibility=hidden keeps them inside the runner; the C functions it imports are unaffected.
COMPILE_FLAGS = ["-O2", "-std=c++17", "-s", "-fvisibility=hidden", "-DTVM_FFI_DLL=", "-DTVM_FFI_DLL_EXPORT="]
LINK_FLAGS = ["-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN/lib"]
# Where the two libraries sit inside the aarch64 wheels (and inside the installed packages).
WHEEL_MEMBERS = {
    RUNTIME_LIB: ("apache_tvm", "tvm/lib/libtvm_runtime.so"),
    FFI_LIB: ("apache_tvm_ffi", "tvm_ffi/lib/libtvm_ffi.so"),
}


@dataclass(frozen=True)
class RuntimeBundle:
    """What to push to a board: `files` maps the name relative to the remote folder to the local file."""

    arch: Arch
    root: Path
    files: dict[str, Path]
    release: str  # the TVM release (major.minor) whose libraries these are

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files.values())


def runtime_bundle(arch: Arch, release: Release | None = None) -> RuntimeBundle:
    """Return the bundle of `release` (default: the running one) for `arch`, building it first if it is
    missing or stale."""
    if arch not in get_args(Arch):
        raise PipelineError(f"no runtime bundle for architecture '{arch}'", "use aarch64 or x86_64")
    release = release or running_release()
    base = CACHE_DIR / "bundle" / release.name
    base.mkdir(parents=True, exist_ok=True)
    root = base / arch
    files = {name: root / name for name in (RUNNER, RUNTIME_LIB, FFI_LIB)}
    bundle = RuntimeBundle(arch, root, files, release.name)
    with open(base / f".{arch}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        versions = _versions(release)
        key = _cache_key(arch, versions)
        if not is_current(bundle.root / STAMP, key, bundle.files.values()):
            _build(bundle, versions, key, release)
    return bundle


def _versions(release: Release) -> dict[str, str]:
    """Versions of the release's TVM packages (installed here, or its pins); the aarch64 wheels must match."""
    if release != running_release():
        return {"apache-tvm": release.tvm, "apache-tvm-ffi": release.ffi}
    try:
        return {dist: importlib.metadata.version(dist) for dist in ("apache-tvm", "apache-tvm-ffi", "ziglang")}
    except importlib.metadata.PackageNotFoundError as exc:
        raise PipelineError(f"Python package {exc.name} is not installed", INSTALL_FIX) from None


def _package_dir(name: str, release: Release) -> Path:
    """Folder of an installed package of the release, found without importing it (importing tvm takes
    seconds, and another release's cannot be imported here)."""
    site = site_packages(release)
    if site is not None:
        if not (site / name).is_dir():
            raise PipelineError(f"the TVM {release.name} environment lacks {name}", INSTALL_FIX)
        return site / name
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"Python package {name} is not installed", INSTALL_FIX)
    return Path(next(iter(spec.submodule_search_locations)))


def _cache_key(arch: Arch, versions: dict[str, str]) -> dict[str, object]:
    if not RUNNER_SOURCE.is_file():
        raise PipelineError(f"runner source {RUNNER_SOURCE} is missing", "restore runner/tvm_runner.cc from git")
    return {
        "arch": arch,
        "source_sha256": hashlib.sha256(RUNNER_SOURCE.read_bytes()).hexdigest(),
        "versions": versions,
        "command": [*COMPILER, *_target_flags(arch), *COMPILE_FLAGS, *LINK_FLAGS],
    }


def _aarch64_wheel(dist: str, version: str) -> Path:
    wheel_dir = CACHE_DIR / "wheels" / "aarch64"
    wheels = sorted(wheel_dir.glob(f"{dist}-{version}-*aarch64*.whl"))
    if not wheels:
        raise PipelineError(
            f"no aarch64 wheel of {dist.replace('_', '-')}=={version} in {wheel_dir} for the board's runtime",
            f"{INSTALL_FIX} (it downloads the wheels of every installed TVM release)",
        )
    return wheels[0]


def _copy_libraries(arch: Arch, versions: dict[str, str], dest: Path, release: Release) -> None:
    """aarch64 libraries come out of the board wheels; x86_64 ones are this venv's own."""
    for name, (dist, member) in WHEEL_MEMBERS.items():
        target = dest / name
        if arch == "aarch64":
            wheel = _aarch64_wheel(dist, versions[dist.replace("_", "-")])
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (KeyError, zipfile.BadZipFile):
                raise PipelineError(f"{wheel.name} is damaged or lacks {member}", INSTALL_FIX) from None
        else:
            package, _, inner = member.partition("/")
            source = _package_dir(package, release) / inner
            if not source.is_file():
                raise PipelineError(f"installed {package} package lacks {inner}", INSTALL_FIX)
            shutil.copyfile(source, target)
        target.chmod(0o755)


def _target_flags(arch: Arch) -> list[str]:
    return ["-target", f"{arch}-linux-gnu.{GLIBC_FLOOR}"]


def _compile_runner(arch: Arch, dest: Path, release: Release) -> None:
    include = _package_dir("tvm_ffi", release) / "include"
    command = [
        sys.executable,
        *COMPILER,
        *_target_flags(arch),
        *COMPILE_FLAGS,
        "-I",
        str(include),
        str(RUNNER_SOURCE),
        "-o",
        str(dest / RUNNER),
        "-L",
        str(dest / "lib"),
        *LINK_FLAGS,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
        first = errors[0] if errors else f"exit code {result.returncode}"
        raise PipelineError(f"compiling the {arch} runner failed: {first}", "fix runner/tvm_runner.cc")


def _build(bundle: RuntimeBundle, versions: dict[str, str], key: dict[str, object], release: Release) -> None:
    base = bundle.root.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.arch}-build-", dir=base))
    try:
        staging.chmod(0o755)
        (staging / "lib").mkdir()
        _copy_libraries(bundle.arch, versions, staging, release)
        _compile_runner(bundle.arch, staging, release)
        write_stamp(staging / STAMP, key)
        if bundle.root.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{bundle.arch}-stale-", dir=base))
            bundle.root.rename(stale / "old")
            staging.rename(bundle.root)
            shutil.rmtree(stale)
        else:
            staging.rename(bundle.root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(names: list[str]) -> int:
    """Build (or confirm) both bundles of the running release, or of each named release (its environment
    created first); the install script runs this, so that CI and the first `--tvm` step do not pay for it."""
    releases = [get_release(name) for name in names] or [running_release()]
    for release in releases:
        try:
            if release != running_release():
                python = release_python(release, on_progress=lambda line: print(f"install: {line}", flush=True))
                print(f"install: TVM {release.name} runs under {python}")
            for arch in get_args(Arch):
                bundle = runtime_bundle(arch, release)
                sizes = ", ".join(f"{name} {path.stat().st_size / 1e6:.2f} MB" for name, path in bundle.files.items())
                print(
                    f"bundle: TVM {bundle.release} {arch} in {bundle.root} ({bundle.size_bytes / 1e6:.1f} MB: {sizes})"
                )
        except PipelineError as exc:
            print(exc.line(), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
