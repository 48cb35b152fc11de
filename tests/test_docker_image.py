"""The Docker image builds from the Dockerfile and deploys inside its container (slow tier).

scripts/docker_image.sh installs docker.io and debootstrap if missing, starts a Docker engine without a
bridge if none runs, makes the debian:bookworm-slim base from this machine's Debian archive, builds the
image with --network=host (pip's settings and CA bundle as build secrets) and runs
`deploy --board rk3399-emu --model tiny` in the container as its non-root user. So an install change that
breaks the image fails here, not only in a hand check. From scratch (as in CI's fresh clone) it takes
about 3-4 minutes on this 2-core machine, with the layer cache of an earlier run seconds (docs/docker.md)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "docker_image.sh"
NO_ENGINE = 3  # docker_image.sh: no engine runs and none could be started


@pytest.mark.board
@pytest.mark.timeout(2400)
def test_image_builds_and_deploys_in_its_container() -> None:
    env = {**os.environ, "PIPELINE_IMAGE": "tvm-edge-pipeline:test"}
    env.pop("PIPELINE_SSHD_PORT", None)  # the script picks a free loopback port for the container's sshd
    run = subprocess.run([str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2300)
    if run.returncode == NO_ENGINE:
        pytest.skip(run.stderr.strip().splitlines()[-1])
    # The script's own steps and the deploy summary (from its Board line on), for CI's log.
    lines = run.stdout.splitlines()
    summary = next((i for i, line in enumerate(lines) if line.startswith("Board ")), len(lines))
    print("\n".join([line for line in lines[:summary] if line.startswith("docker_image:")] + lines[summary:]))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "docker_image: smoke test passed" in run.stdout
    assert any(line.startswith("Check") and "output matches" in line for line in run.stdout.splitlines())
