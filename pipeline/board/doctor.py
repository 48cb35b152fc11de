"""A board preflight: what a deploy and a tune need from the board, and whether it has it, checked
before anything is pushed. `invoke doctor` runs every check and prints one line each; a deploy runs
the cheap ones itself (`require_ready`), so an old C library or a full disk is named in one line
instead of surfacing as a loader error halfway through.

The board's C and C++ libraries are read where the runtime will load them: on a real board from its
library folders, on an emulated one from the sysroot the command prefix names (`qemu-aarch64 -L ROOT`)."""

import importlib.metadata
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.board import facts, forwards
from pipeline.board.abi import (
    LibraryVersions,
    Version,
    archive_versions,
    files_needs,
    provided_versions,
    version_text,
)
from pipeline.board.profile import BoardProfile
from pipeline.board.session import Board
from pipeline.errors import PipelineError

# /proc/cpuinfo "CPU part" of the Arm cores a profile's mcpu names (Arm's MIDR part numbers).
CPU_PARTS = {"cortex-a53": "0xd03", "cortex-a55": "0xd05", "cortex-a72": "0xd08", "cortex-a73": "0xd09"}
# LLVM's aarch64 attribute names where the kernel's /proc/cpuinfo feature names differ.
AARCH64_FEATURES = {"neon": "asimd", "fp-armv8": "fp", "crc": "crc32", "dotprod": "asimddp", "fullfp16": "fphp"}
PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Check:
    """One line of the report: `ok`, or a problem with the fix that removes it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        status = "ok     " if self.ok else "PROBLEM"
        return f"{status} {self.name}: {self.detail}" + ("" if self.ok else f" — fix: {self.fix}")


@dataclass(frozen=True)
class PushNeeds:
    """What the files about to be pushed need from the board."""

    versions: LibraryVersions
    total_bytes: int
    largest_name: str
    largest_bytes: int


def push_needs(files: dict[str, Path]) -> PushNeeds:
    """Read the ELF version needs and sizes of the files a deploy pushes (name on the board -> file)."""
    elf_files = [path for path in files.values() if path.read_bytes()[:4] == b"\x7fELF"]
    largest = max(files, key=lambda name: files[name].stat().st_size)
    return PushNeeds(
        versions=files_needs(elf_files),
        total_bytes=sum(path.stat().st_size for path in files.values()),
        largest_name=largest,
        largest_bytes=files[largest].stat().st_size,
    )


@dataclass(frozen=True)
class BoardState:
    """What one probe round trip found on the board; None where the board did not say."""

    machine: str | None
    cpu_flags: frozenset[str]
    cpu_parts: dict[int, str]
    online_cores: frozenset[int]
    folder: str | None
    writable: bool
    free_bytes: int | None
    libc: str | None
    libstdcxx: str | None
    emulator: str | None
    taskset: bool


@dataclass(frozen=True)
class Emulator:
    """qemu-user as the command prefix names it: the program, its -cpu model and its -L sysroot."""

    program: str
    cpu: str | None
    sysroot: str | None


def emulator_of(profile: BoardProfile) -> Emulator | None:
    words = shlex.split(profile.command_prefix)
    if not words or not Path(words[0]).name.startswith("qemu-"):
        return None

    def option(flag: str) -> str | None:
        return words[words.index(flag) + 1] if flag in words[:-1] else None

    return Emulator(words[0], option("-cpu"), option("-L"))


def _library_dirs(profile: BoardProfile) -> list[str]:
    emulated = emulator_of(profile)
    root = (emulated.sysroot or "") if emulated else ""
    triple = f"{profile.arch}-linux-gnu"
    return [
        f"{root}/{folder}" for folder in (f"lib/{triple}", f"usr/lib/{triple}", "lib64", "usr/lib64", "lib", "usr/lib")
    ]


def probe(board: Board) -> BoardState:
    """One shell round trip; each probe prints `name=value`, failures print nothing."""
    profile = board.profile
    dirs = " ".join(shlex.quote(folder) for folder in _library_dirs(profile))
    emulated = emulator_of(profile)
    steps = [
        "echo machine=$(uname -m)",
        "echo flags=$(grep -m1 -E '^(Features|flags)' /proc/cpuinfo | cut -d: -f2-)",
        "echo parts=$(awk -F': *' '/^processor/{p=$2} /^CPU part/{printf \"%s:%s \", p, $2}' /proc/cpuinfo)",
        "echo online=$(cat /sys/devices/system/cpu/online)",
        f'd={shlex.quote(profile.remote_dir)}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; echo folder=$d',
        # A real write: `test -w` says yes to root on a read-only file system or in /proc.
        't=$(mktemp "$d/.doctor-XXXXXX" 2>/dev/null) && rm -f "$t" && echo writable=yes',
        "echo free_kb=$(df -Pk \"$d\" | awk 'NR==2{print $4}')",
        f'for f in {dirs}; do [ -e "$f/libc.so.6" ] && {{ echo libc=$f/libc.so.6; break; }}; done',
        f'for f in {dirs}; do [ -e "$f/libstdc++.so.6" ] && {{ echo libstdcxx=$f/libstdc++.so.6; break; }}; done',
        "command -v taskset >/dev/null && echo taskset=yes",
    ]
    if emulated:
        steps.append(f"echo emulator=$(command -v {shlex.quote(emulated.program)})")
    result = board.run(f"sh -c {shlex.quote('; '.join(steps))}", timeout_s=PROBE_TIMEOUT_S)
    pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    values = {name: value.strip() for name, value in pairs if value.strip()}
    free_kb = values.get("free_kb", "")
    return BoardState(
        machine=values.get("machine"),
        cpu_flags=frozenset(values.get("flags", "").split()),
        cpu_parts={int(core): part for core, part in re.findall(r"(\d+):(0x[0-9a-f]+)", values.get("parts", ""))},
        online_cores=frozenset(_core_list(values.get("online", ""))),
        folder=values.get("folder"),
        writable=values.get("writable") == "yes",
        free_bytes=int(free_kb) * 1024 if free_kb.isdigit() else None,
        libc=values.get("libc"),
        libstdcxx=values.get("libstdcxx"),
        emulator=values.get("emulator"),
        taskset=values.get("taskset") == "yes",
    )


def _core_list(text: str) -> Iterable[int]:
    """The kernel's CPU list format: "0-3,6" -> 0, 1, 2, 3, 6."""
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            yield from range(int(first), int(last or first) + 1)


def check_architecture(profile: BoardProfile, state: BoardState) -> Check:
    emulated = emulator_of(profile)
    if emulated:
        program = Path(emulated.program).name
        if state.emulator is None:
            return Check("architecture", False, f"{program} is not installed", "install qemu-user (scripts/install.sh)")
        if program != f"qemu-{profile.arch}":
            return Check(
                "architecture",
                False,
                f"{program} does not run {profile.arch} code",
                f"use qemu-{profile.arch} in command_prefix of boards/{profile.name}.yaml",
            )
        return Check("architecture", True, f"{profile.arch}, emulated by {state.emulator}")
    if state.machine != profile.arch:
        return Check(
            "architecture",
            False,
            f"the board is {state.machine or 'unknown'} (uname -m), the profile targets {profile.arch}",
            f"set target.mtriple and cross_compiler in boards/{profile.name}.yaml for {state.machine}",
        )
    return Check("architecture", True, f"{state.machine} (uname -m)")


def check_cpu(profile: BoardProfile, state: BoardState) -> Check:
    """mcpu and mattr against the cores that will run the model (cpu_affinity, else all of them)."""
    target = profile.target
    wanted = [attr.removeprefix("+") for attr in target.mattr if attr.startswith("+")]
    emulated = emulator_of(profile)
    if emulated:
        model = emulated.cpu
        if model != target.mcpu:
            return Check(
                "cpu",
                False,
                f"qemu runs -cpu {model or 'its default'}, the target is -mcpu={target.mcpu}",
                f"put -cpu {target.mcpu} into command_prefix of boards/{profile.name}.yaml",
            )
        return Check("cpu", True, f"qemu -cpu {model} = target -mcpu={target.mcpu} (+{', +'.join(wanted) or 'none'})")
    names = AARCH64_FEATURES if profile.arch == "aarch64" else {}
    missing = [attr for attr in wanted if names.get(attr, attr) not in state.cpu_flags]
    if missing:
        return Check(
            "cpu",
            False,
            f"the board's CPU lacks {', '.join('+' + attr for attr in missing)} (/proc/cpuinfo)",
            f"remove them from target.mattr in boards/{profile.name}.yaml",
        )
    part = CPU_PARTS.get(target.mcpu)
    cores = profile.cpu_affinity or sorted(state.cpu_parts)
    if part and state.cpu_parts:
        other = [core for core in cores if state.cpu_parts.get(core) != part]
        if other:
            return Check(
                "cpu",
                False,
                f"cores {other} are not {target.mcpu} (CPU part {part})",
                f"set cpu_affinity to the {target.mcpu} cores or target.mcpu in boards/{profile.name}.yaml",
            )
    detail = f"-mcpu={target.mcpu}" + (f" on cores {cores} (CPU part {part})" if part and state.cpu_parts else "")
    return Check("cpu", True, detail + (f", {' '.join('+' + attr for attr in wanted)} present" if wanted else ""))


def _library_check(
    name: str, board: Board, path: str | None, needed: Version | None, provided_of: str, fix_old: str
) -> Check:
    """Compare what the push needs with the version definitions of the board's library at `path`."""
    if needed is None:
        return Check(name, True, "nothing pushed needs it")
    if path is None:
        return Check(name, False, "not found in the board's library folders", fix_old)
    provided = getattr(provided_versions(board.read_file(path), path), provided_of)
    family = provided_of.upper() + "_"
    detail = f"{path} defines up to {family}{version_text(provided)}, the push needs {family}{version_text(needed)}"
    return Check(name, provided is not None and provided >= needed, detail, fix_old)


def check_libraries(board: Board, state: BoardState, needs: PushNeeds) -> list[Check]:
    profile = board.profile
    emulated = emulator_of(profile)
    sysroot = emulated.sysroot if emulated else None
    where = f"the sysroot {sysroot}: run scripts/install.sh" if sysroot else "a board image"
    return [
        _library_check(
            "glibc",
            board,
            state.libc,
            needs.versions.glibc,
            "glibc",
            f"use {where} with glibc >= {version_text(needs.versions.glibc)} (Ubuntu 18.04, Debian 10 or newer)",
        ),
        _library_check(
            "libstdc++",
            board,
            state.libstdcxx,
            needs.versions.glibcxx,
            "glibcxx",
            f"install libstdc++6 from gcc 7 or newer into {where}",
        ),
    ]


def check_disk(profile: BoardProfile, state: BoardState, needs: PushNeeds) -> list[Check]:
    folder = state.folder or profile.remote_dir
    fix = f"set remote_dir in boards/{profile.name}.yaml to a folder the login can write"
    writable = Check("write permission", state.writable, f"{folder} (for remote_dir {profile.remote_dir})", fix)
    if state.free_bytes is None:
        return [writable, Check("free disk", False, f"df could not read {folder}", fix)]
    detail = (
        f"{state.free_bytes / 1e6:.0f} MB free in {folder}, the push is {needs.total_bytes / 1e6:.1f} MB "
        f"(largest {needs.largest_name}, {needs.largest_bytes / 1e6:.1f} MB)"
    )
    space = Check("free disk", state.free_bytes >= needs.total_bytes, detail, f"free space on the board or {fix[4:]}")
    return [writable, space]


def check_cores(profile: BoardProfile, state: BoardState) -> Check:
    online = sorted(state.online_cores)
    fix = f"set cpu_affinity in boards/{profile.name}.yaml to cores of {online}"
    if profile.cpu_affinity:
        absent = [core for core in profile.cpu_affinity if core not in state.online_cores]
        if absent:
            return Check("cores", False, f"cpu_affinity cores {absent} are not online (online: {online})", fix)
        if not state.taskset:
            return Check("cores", False, "taskset is missing on the board", "install util-linux on the board")
        return Check("cores", True, f"cpu_affinity {profile.cpu_affinity} online (online: {online})")
    if online and profile.threads > len(online):
        return Check(
            "cores",
            False,
            f"{profile.threads} threads on {len(online)} online cores",
            f"lower threads in boards/{profile.name}.yaml",
        )
    return Check("cores", True, f"no cpu_affinity; {profile.threads} threads, {len(online)} cores online")


def check_clocks(board: Board) -> Check:
    """Reported, not judged: a powersave governor or a hot board explains slow timings."""
    found = facts.collect_facts(board)
    cores = [f"cpu{core}" for core in board.profile.cpu_affinity or []] or sorted(found.core_freq_khz or {})[:1]
    clocks = ", ".join(
        f"{core} {_mhz((found.core_freq_khz or {}).get(core))}/{_mhz((found.core_max_freq_khz or {}).get(core))} MHz"
        for core in cores
    )
    temperature = f"{found.temperature_c:.1f} °C" if found.temperature_c is not None else "no thermal zone"
    return Check(
        "clocks", True, f"governor {found.governor or 'none'}; {clocks or 'no cpufreq'} (current/max); {temperature}"
    )


def _mhz(khz: int | None) -> str:
    return "?" if khz is None else str(khz // 1000)


def check_tuning_python(board: Board, state: BoardState) -> Check:
    """The Python `invoke tune` runs TVM's RPC server with (see pipeline/board/tuning_python.py)."""
    from pipeline.board.tuning_python import environment_archive

    profile = board.profile
    tvm = importlib.metadata.version("apache-tvm")
    fix = f"set tuning.python in boards/{profile.name}.yaml to a Python on the board with apache-tvm=={tvm}"
    if profile.tuning.python is not None:
        command = board.runtime_command(
            shlex.quote(profile.tuning.python), ["-c", "import tvm, tvm.rpc.server; print(tvm.__version__)"]
        )
        result = board.run(command, timeout_s=profile.tuning.start_timeout_s)
        found = result.stdout.strip()
        ok = result.exit_code == 0 and found.split(".")[:2] == tvm.split(".")[:2]
        detail = f"tuning.python {profile.tuning.python} imports TVM {found or 'not at all'} (host: {tvm})"
        return Check("tuning python", ok, detail, fix)
    if profile.ssh.embedded and not profile.emulated:
        return Check("tuning python", True, "this host's own Python (the board is this machine)")
    if profile.arch != "aarch64":
        return Check("tuning python", False, "no tuning.python and no pushed Python for this architecture", fix)
    try:
        versions = archive_versions(environment_archive())
    except PipelineError as error:
        return Check("tuning python", False, f"the pushed Python is not assembled: {error.problem}", error.fix)
    needs, own = versions.needs, versions.own_libc
    if own is None or own.glibc is None or (needs.glibc is not None and own.glibc < needs.glibc):
        problem = "the pushed Python carries no C library that meets its needs"
        return Check("tuning python", False, problem, "run scripts/install.sh (the board Python includes libc6)")
    board_cxx = provided_versions(board.read_file(state.libstdcxx), state.libstdcxx) if state.libstdcxx else None
    provided = board_cxx.glibcxx if board_cxx else None
    ok = needs.glibcxx is None or (provided is not None and provided >= needs.glibcxx)
    detail = (
        f"the pushed Debian 12 Python runs on its own glibc {version_text(own.glibc)} (needs "
        f"{version_text(needs.glibc)}); TVM in it needs GLIBCXX {version_text(needs.glibcxx)}, the board's "
        f"libstdc++ defines up to {version_text(provided)}"
    )
    return Check("tuning python", ok, detail, f"install libstdc++6 from gcc 7 or newer on the board, or {fix}")


def check_sftp(board: Board) -> Check:
    """Reported, not a problem: without SFTP every transfer falls back to exec channels (pipeline/board/sync.py)."""
    if board.has_sftp():
        return Check("sftp", True, "the board's SSH server has SFTP; transfers use it")
    return Check(
        "sftp",
        True,
        "the board's SSH server has no SFTP subsystem (as dropbear, Buildroot and many vendor images): "
        "transfers fall back to `cat` over exec channels, with the same sha256 check and rename",
    )


def check_rpc_forwarding(board: Board) -> Check:
    """Tuning's TVM RPC travels only inside the SSH connection (pipeline/tuning/rpc.py): the board's sshd
    must carry a remote forward (the server registers with this host's tracker) and a local one (the
    runner reaches the server), both between loopbacks. No port is opened on any network."""
    try:
        forwards.round_trip(board.client)
    except PipelineError as error:
        return Check("rpc forwarding", False, error.problem, error.fix)
    return Check("rpc forwarding", True, "the SSH connection carries TVM RPC both ways between the two loopbacks")


def cheap_checks(board: Board, needs: PushNeeds, state: BoardState | None = None) -> list[Check]:
    """What every deploy checks before pushing: a few milliseconds and two library reads."""
    profile = board.profile
    state = state or probe(board)
    return [
        check_architecture(profile, state),
        *check_libraries(board, state, needs),
        *check_disk(profile, state, needs),
        check_cores(profile, state),
    ]


def all_checks(board: Board, needs: PushNeeds) -> list[Check]:
    """`invoke doctor`: the cheap checks, the CPU, the clocks and the Python for tuning."""
    state = probe(board)
    cheap = cheap_checks(board, needs, state)
    return [
        cheap[0],
        check_cpu(board.profile, state),
        *cheap[1:],
        check_clocks(board),
        check_sftp(board),
        check_tuning_python(board, state),
        check_rpc_forwarding(board),
    ]


def require_ready(board: Board, files: dict[str, Path]) -> None:
    """Refuse a deploy the board cannot run, before anything is pushed."""
    for check in cheap_checks(board, push_needs(files)):
        if not check.ok:
            raise PipelineError(f"board {board.name}: {check.name}: {check.detail}", check.fix)
