"""TVM releases side by side: `--tvm` runs a step under another release's own environment (created by
scripts/install.sh), the build and result name the release, and a board keeps each release's runtime
in its own folder and runs the one that built the library."""

import json
import os
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from pipeline.board.bundle import runtime_bundle
from pipeline.board.profile import load_board
from pipeline.board.remote import run
from pipeline.errors import PipelineError
from pipeline.paths import ROOT
from pipeline.tvm_release.catalog import RELEASES, get_release, running_release
from pipeline.tvm_release.environment import pinned_requirements, release_python

INVOKE = [sys.executable, "-m", "invoke"]


def invoke(*args: str, results: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if results is not None:
        env["PIPELINE_RESULTS"] = str(results)
    return subprocess.run([*INVOKE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_default_release_is_027_and_026_is_installable() -> None:
    assert running_release().name == "0.27"
    assert get_release("0.26.0") == RELEASES["0.26"]
    assert get_release("0.26").ffi == "0.1.14.post1"


def test_a_release_environment_keeps_every_pin_but_tvms() -> None:
    pins = pinned_requirements(get_release("0.26"))
    assert pins[:2] == ["apache-tvm==0.26.0", "apache-tvm-ffi==0.1.14.post1"]
    assert not any(pin.startswith("apache-tvm==0.27") for pin in pins)
    assert "paramiko==5.1.0" in pins


def test_an_unknown_release_gives_one_error_line_naming_the_installable_ones() -> None:
    proc = invoke("build", "--board", "local", "--model", "tiny", "--tvm", "0.99")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: TVM release '0.99'") and "0.26" in lines[0] and "0.27" in lines[0]


def test_the_running_release_needs_no_second_environment() -> None:
    assert release_python(running_release()) == Path(sys.executable)


def test_build_under_026_names_the_release_in_its_cache_key_and_output() -> None:
    proc = invoke("build", "--board", "local", "--model", "tiny", "--tvm", "0.26")
    assert proc.returncode == 0, proc.stderr
    assert "with TVM 0.26.0" in proc.stdout
    library = Path(next(line for line in proc.stdout.splitlines() if line.startswith("library ")).split()[1])
    assert library.parent.name.startswith("tiny-x86_64-tvm0.26-")
    assert json.loads((library.parent / "build.json").read_text())["tvm_version"] == "0.26.0"


def test_deploys_under_both_releases_keep_both_runtimes_on_the_board(
    embedded_endpoint: object, ssh_client: paramiko.SSHClient, tmp_path: Path
) -> None:
    versions = {}
    for release in ("0.26", "0.27"):
        proc = invoke("deploy", "--board", "local", "--model", "tiny", "--tvm", release, results=tmp_path)
        assert proc.returncode == 0, proc.stderr
        [path] = [p for p in tmp_path.rglob("*.json") if p not in versions]
        versions[path] = json.loads(path.read_text())["tvm_version"]
    assert sorted(v[:4] for v in versions.values()) == ["0.26", "0.27"]
    remote_dir = load_board("local").remote_dir
    listing = run(
        ssh_client, f"ls {remote_dir}/runtime/0.26/tvm_runner {remote_dir}/runtime/0.27/tvm_runner", timeout_s=10
    )
    assert listing.exit_code == 0, listing.stderr


def test_each_release_has_its_own_runtime_bundle() -> None:
    old, new = runtime_bundle("x86_64", get_release("0.26")), runtime_bundle("x86_64")
    assert (old.release, new.release) == ("0.26", "0.27")
    assert old.root != new.root
    assert old.files["lib/libtvm_runtime.so"].read_bytes() != new.files["lib/libtvm_runtime.so"].read_bytes()


def test_a_missing_board_wheel_of_a_release_is_one_error_naming_it_and_the_fix() -> None:
    from pipeline.board import bundle

    with pytest.raises(PipelineError) as error:
        bundle._aarch64_wheel("apache_tvm", "0.26.99")
    line = error.value.line()
    assert "no aarch64 wheel of apache-tvm==0.26.99" in line and "fix: run scripts/install.sh" in line
