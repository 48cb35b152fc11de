"""Older board OS images: every file pushed to a board loads on glibc 2.27 (Ubuntu 18.04, TVM's own
floor), read from the ELF symbol versions the files reference, as the loader on the board would.

The files are the real ones a deploy pushes: the runner and TVM's two runtime libraries from the
runtime bundle, and a model library compiled for the board's target. The pushed board Python (for
tuning only) is Debian 12's and cannot meet the floor: it carries its own C library instead."""

import shlex
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pipeline.board.abi import archive_versions, needed_versions, parse_version, version_text
from pipeline.board.bundle import GLIBC_FLOOR, RUNNER, RUNTIME_LIB, RuntimeBundle, runtime_bundle
from pipeline.board.profile import Arch, load_board
from pipeline.board.tuning_python import environment_archive
from pipeline.compiler import builder
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.paths import CACHE_DIR

FLOOR = parse_version(GLIBC_FLOOR)
# Ubuntu 18.04's libstdc++ (gcc 8) defines GLIBCXX up to 3.4.25: TVM's libraries must not need more.
OLDEST_LIBSTDCXX = (3, 4, 25)
BOARDS: dict[Arch, str] = {"aarch64": "rk3399-emu", "x86_64": "local"}


@pytest.fixture(scope="module", params=["aarch64", "x86_64"])
def pushed(request: pytest.FixtureRequest) -> dict[str, Path]:
    """What a deploy pushes for one architecture: the bundle's files and a compiled model library."""
    arch: Arch = request.param
    bundle = runtime_bundle(arch)
    artifact = builder.build(resolve_model("tiny"), load_board(BOARDS[arch]))
    return {**bundle.files, "model library": artifact.library}


def test_every_pushed_file_needs_at_most_glibc_2_27(pushed: dict[str, Path]) -> None:
    needs = {name: needed_versions(path) for name, path in pushed.items()}
    too_new = {name: version_text(need.glibc) for name, need in needs.items() if need.glibc and need.glibc > FLOOR}
    assert not too_new, f"files needing glibc newer than {GLIBC_FLOOR}: {too_new}"
    assert needs[RUNTIME_LIB].glibc == FLOOR, "TVM's runtime sets the floor: it needs exactly glibc 2.27"


def test_pushed_files_need_no_newer_libstdcxx_than_ubuntu_18_04_has(pushed: dict[str, Path]) -> None:
    needs = {name: needed_versions(path).glibcxx for name, path in pushed.items()}
    too_new = {name: version_text(need) for name, need in needs.items() if need and need > OLDEST_LIBSTDCXX}
    assert not too_new


def test_runner_needs_no_libstdcxx_at_all(pushed: dict[str, Path]) -> None:
    """The runner links libc++ statically: only TVM's own libraries need the board's libstdc++."""
    needs = needed_versions(pushed[RUNNER])
    assert (needs.glibcxx, needs.cxxabi) == (None, None)


def test_runner_exports_no_symbol_tvm_could_bind_to(pushed: dict[str, Path]) -> None:
    """A libc++ copy of tvm-ffi's classes exported by the runner would replace TVM's own at load time."""
    with open(pushed[RUNNER], "rb") as stream:
        dynsym = ELFFile(stream).get_section_by_name(".dynsym")
        exported = [symbol.name for symbol in dynsym.iter_symbols() if symbol["st_shndx"] != "SHN_UNDEF"]
    assert [name for name in exported if name] == []


def _run_on_board(bundle: RuntimeBundle, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the runner as the board profile does: under rk3399-emu's qemu, on its Debian 11 userland."""
    prefix = shlex.split(load_board(BOARDS[bundle.arch]).command_prefix)
    return subprocess.run([*prefix, str(bundle.files[RUNNER]), *args], capture_output=True, text=True, timeout=120)


def test_the_emulated_rk3399_runs_a_debian_11_userland() -> None:
    """rk3399-emu's qemu -L names the bullseye sysroot from install.sh, under this checkout's cache."""
    prefix = shlex.split(load_board("rk3399-emu").command_prefix)
    sysroot = Path(prefix[prefix.index("-L") + 1])
    assert sysroot == CACHE_DIR.resolve() / "sysroot" / "bullseye-arm64"
    banner = subprocess.run([*prefix, str(sysroot / "lib/aarch64-linux-gnu/libc.so.6")], capture_output=True, text=True)
    assert "release version 2.31" in banner.stdout
    info = _run_on_board(runtime_bundle("aarch64"), ["--info"])
    assert info.returncode == 0 and '"arch": "aarch64"' in info.stdout


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_an_error_raised_inside_tvm_reaches_the_runner_as_a_message(arch: Arch, tmp_path: Path) -> None:
    """TVM (libstdc++) fails to load a library that is not ELF; the error must cross into the runner
    (libc++) through tvm-ffi's C ABI as an error code, not as an exception that kills the process."""
    not_elf = tmp_path / "model.so"
    not_elf.write_text("not a library")
    for name in ("params.bin", "input.bin"):
        (tmp_path / name).write_bytes(b"\0" * 4)
    args = ["--lib", str(not_elf), "--params", str(tmp_path / "params.bin"), "--input", str(tmp_path / "input.bin")]
    result = _run_on_board(runtime_bundle(arch), [*args, "--input-shape", "1", "--output", str(tmp_path / "o.bin")])
    assert result.returncode == 2, result.stderr
    assert "Failed to load dynamic shared library" in result.stderr


def test_pushed_board_python_brings_the_c_library_it_needs() -> None:
    """Excluded from the floor: the pushed Python is Debian 12's CPython (python3.11 itself needs
    GLIBC_2.35, libexpat 2.36) and only serves tuning. It carries Debian 12's libc and loader and starts
    through them, so an older board needs only a libstdc++ for TVM (test_tune_on_board runs it on the
    emulated Debian 11 board)."""
    versions = archive_versions(environment_archive())
    assert versions.needs.glibc is not None and versions.needs.glibc > FLOOR
    assert versions.own_libc is not None and versions.own_libc.glibc is not None
    assert versions.own_libc.glibc >= versions.needs.glibc
    assert versions.needs.glibcxx is not None and versions.needs.glibcxx <= OLDEST_LIBSTDCXX
