"""`invoke doctor`: before anything is pushed, connect to the board and say, one line per check, what a
deploy and a tune need and whether the board has it; exit 1 on any problem. A deploy runs the cheap
checks itself. The boards are the real embedded ones (the loopback sshd, qemu for rk3399-emu); only
the CPU rules for a real rk3399 are checked on a described board state, since no such board is here."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.board.abi import LibraryVersions
from pipeline.board.bundle import runtime_bundle
from pipeline.board.doctor import BoardState, Check, PushNeeds, all_checks, cheap_checks, check_cpu, push_needs
from pipeline.board.profile import BOARDS_DIR, BoardProfile, load_board
from pipeline.board.session import open_board
from pipeline.deploy.flow import deploy_once
from pipeline.errors import MAX_LINE, PipelineError

ROOT = Path(__file__).resolve().parent.parent
INVOKE = [sys.executable, "-m", "invoke"]


def doctor(board: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*INVOKE, "doctor", "--board", board], cwd=ROOT, capture_output=True, text=True, timeout=600)


def profile_copy(tmp_path: Path, base: str, **changes: object) -> Path:
    data = yaml.safe_load((BOARDS_DIR / f"{base}.yaml").read_text())
    data.update(changes, name=f"{base}-changed")
    path = tmp_path / f"{base}-changed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def checks_on(profile: BoardProfile, needs: PushNeeds | None = None) -> dict[str, Check]:
    with open_board(profile) as board:
        found = all_checks(board, needs or push_needs(runtime_bundle(profile.arch).files))
    return {check.name: check for check in found}


@pytest.mark.parametrize("board", ["local", "rk3399-emu"])
def test_doctor_passes_on_the_embedded_boards_with_one_line_per_check(board: str) -> None:
    result = doctor(board)
    lines = result.stdout.splitlines()[1:]
    names = [line.split(":", 1)[0].split(maxsplit=1)[1] for line in lines]
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(line.startswith("ok ") for line in lines)
    expected = ["architecture", "cpu", "glibc", "libstdc++", "write permission", "free disk", "cores", "clocks"]
    assert names == [*expected, "sftp", "tuning python", "rpc forwarding"]


def test_doctor_on_the_unfilled_rk3399_profile_is_one_error_line() -> None:
    result = doctor("rk3399")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "CHANGE-ME" in line and "— fix: " in line and len(line) <= MAX_LINE


def test_problems_are_named_with_their_fix(tmp_path: Path) -> None:
    """Absent cores, a folder the login cannot write, and a glibc older than the push needs."""
    profile = load_board(str(profile_copy(tmp_path, "local", cpu_affinity=[0, 64], remote_dir="/proc/tvm-board")))
    too_new = PushNeeds(LibraryVersions(glibc=(2, 99), glibcxx=(3, 4, 22)), 1000, "tvm_runner", 1000)
    checks = checks_on(profile, too_new)
    assert not checks["cores"].ok and "[64]" in checks["cores"].detail and "cpu_affinity" in checks["cores"].fix
    assert not checks["write permission"].ok and "remote_dir" in checks["write permission"].fix
    assert not checks["glibc"].ok and "2.99" in checks["glibc"].detail and "glibc >= 2.99" in checks["glibc"].fix
    assert checks["libstdc++"].ok and checks["architecture"].ok


def test_doctor_exits_1_on_a_problem(tmp_path: Path) -> None:
    result = doctor(str(profile_copy(tmp_path, "local", cpu_affinity=[64])))
    assert result.returncode == 1
    assert any(line.startswith("PROBLEM cores:") and "— fix: " in line for line in result.stdout.splitlines())


def test_emulator_cpu_model_must_match_the_target(tmp_path: Path) -> None:
    prefix = load_board("rk3399-emu").command_prefix.replace("cortex-a72", "cortex-a53")
    checks = checks_on(load_board(str(profile_copy(tmp_path, "rk3399-emu", command_prefix=prefix))))
    assert not checks["cpu"].ok and "-cpu cortex-a72" in checks["cpu"].fix


def test_a_missing_emulated_userland_asks_for_the_install_script(tmp_path: Path) -> None:
    prefix = f"qemu-aarch64 -cpu cortex-a72 -L {tmp_path / 'no-sysroot'}"
    checks = checks_on(load_board(str(profile_copy(tmp_path, "rk3399-emu", command_prefix=prefix))))
    assert not checks["glibc"].ok and "scripts/install.sh" in checks["glibc"].fix
    assert not checks["libstdc++"].ok


def test_a_deploy_runs_the_cheap_checks_before_pushing(tmp_path: Path) -> None:
    remote_dir = tmp_path / "board-folder"
    profile = profile_copy(tmp_path, "local", cpu_affinity=[64], remote_dir=str(remote_dir))
    with pytest.raises(PipelineError, match="cores") as error:
        deploy_once(str(profile), "tiny", results_dir=tmp_path / "results")
    assert "cpu_affinity" in error.value.fix
    assert not remote_dir.exists() and not (tmp_path / "results").exists()


def test_cheap_checks_leave_out_the_slow_ones() -> None:
    profile = load_board("local")
    with open_board(profile) as board:
        names = [check.name for check in cheap_checks(board, push_needs(runtime_bundle("x86_64").files))]
    assert names == ["architecture", "glibc", "libstdc++", "write permission", "free disk", "cores"]


def rk3399_state(**changes: object) -> BoardState:
    """An RK3399 as its /proc/cpuinfo describes it: cpu0-3 Cortex-A53 (0xd03), cpu4-5 Cortex-A72 (0xd08)."""
    values: dict[str, object] = {
        "machine": "aarch64",
        "cpu_flags": frozenset({"fp", "asimd", "aes", "crc32"}),
        "cpu_parts": {0: "0xd03", 1: "0xd03", 2: "0xd03", 3: "0xd03", 4: "0xd08", 5: "0xd08"},
        "online_cores": frozenset(range(6)),
        "folder": "tvm-pipeline",
        "writable": True,
        "free_bytes": 10**9,
        "libc": "/lib/aarch64-linux-gnu/libc.so.6",
        "libstdcxx": "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
        "emulator": None,
        "taskset": True,
    }
    return BoardState(**{**values, **changes})  # type: ignore[arg-type]


def rk3399_profile(**changes: object) -> BoardProfile:
    data = yaml.safe_load((BOARDS_DIR / "rk3399.yaml").read_text())
    data["ssh"].update(host="rk3399.example", user="me")
    return BoardProfile.model_validate({**data, **changes})


def test_cpu_check_on_a_real_rk3399_accepts_the_big_cores() -> None:
    check = check_cpu(rk3399_profile(), rk3399_state())
    assert check.ok and "[4, 5]" in check.detail and "+neon present" in check.detail


def test_cpu_check_names_little_cores_in_cpu_affinity() -> None:
    check = check_cpu(rk3399_profile(cpu_affinity=[0, 4]), rk3399_state())
    assert not check.ok and "[0]" in check.detail and "cortex-a72" in check.detail


def test_cpu_check_names_a_missing_feature() -> None:
    check = check_cpu(rk3399_profile(), rk3399_state(cpu_flags=frozenset({"fp"})))
    assert not check.ok and "+neon" in check.detail and "mattr" in check.fix
