"""Push step: put the runtime bundle, the built model and the input on the board.

Each TVM release's runtime has its own folder on the board (runtime/<release>/), so a board keeps the
runtimes of several releases side by side and a model runs on the runtime of the release that built it."""

import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import paramiko

from pipeline.board.bundle import RuntimeBundle
from pipeline.board.remote import run
from pipeline.board.sync import Progress, PushReport, push
from pipeline.build.builder import LIBRARY_NAME, PARAMS_NAME, BuildArtifact
from pipeline.errors import PipelineError

RUNTIME_DIR = "runtime"
SPACE_MARGIN = 1.2  # free space asked for beyond the bytes a new runtime and model take
_DF_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Deployment:
    """Where things live on the board, relative to the profile's remote_dir."""

    remote_dir: str
    runner: str
    library: str
    params: str
    input: str
    report: PushReport


def runtime_dir(release: str) -> str:
    return str(PurePosixPath(RUNTIME_DIR) / release)


def push_model(
    client: paramiko.SSHClient,
    remote_dir: str,
    bundle: RuntimeBundle,
    artifact: BuildArtifact,
    input_file: Path,
    on_progress: Progress | None = None,
) -> Deployment:
    """One push of everything the run needs; unchanged files are skipped by hash, so a re-deploy is cheap.
    The runtime pushed is the bundle's release, which must be the release that built the library."""
    if bundle.release != artifact.release:
        raise PipelineError(
            f"the library was built by TVM {artifact.release} but the runtime bundle is TVM {bundle.release}",
            f"push the TVM {artifact.release} runtime bundle (runtime_bundle(arch, release))",
        )
    model_dir = PurePosixPath("models") / artifact.key
    runtime = runtime_dir(bundle.release)
    files = {str(PurePosixPath(runtime) / name): path for name, path in bundle.files.items()}
    files[str(model_dir / LIBRARY_NAME)] = artifact.library
    files[str(model_dir / PARAMS_NAME)] = artifact.params
    input_name = f"inputs/{input_file.name}"
    files[input_name] = input_file
    check_space(client, remote_dir, runtime, bundle, artifact)
    report = push(client, files, remote_dir, on_progress=on_progress)
    return Deployment(
        remote_dir=remote_dir,
        runner=f"{runtime}/tvm_runner",
        library=str(model_dir / LIBRARY_NAME),
        params=str(model_dir / PARAMS_NAME),
        input=input_name,
        report=report,
    )


def check_space(
    client: paramiko.SSHClient, remote_dir: str, runtime: str, bundle: RuntimeBundle, artifact: BuildArtifact
) -> None:
    """Refuse before anything is uploaded when the board cannot hold another release's runtime (and the
    model): a half-pushed runtime would be of no use. Only a runtime the board lacks is checked."""
    folder = shlex.quote(remote_dir)
    probe = f"mkdir -p {folder} && test -f {folder}/{runtime}/tvm_runner; echo $?; df -Pk {folder} | tail -1"
    result = run(client, probe, timeout_s=_DF_TIMEOUT_S)
    lines = result.stdout.split("\n")
    if result.exit_code != 0 or len(lines) < 2 or lines[0].strip() == "0":
        return  # the runtime is there already (or df is missing: the push itself will report a full disk)
    fields = lines[1].split()
    if len(fields) < 4 or not fields[3].isdigit():
        return
    free = int(fields[3]) * 1024
    needed = int((bundle.size_bytes + artifact.library.stat().st_size + artifact.params.stat().st_size) * SPACE_MARGIN)
    if free < needed:
        raise PipelineError(
            f"the board has {free / 1e6:.0f} MB free in {remote_dir}, but the TVM {bundle.release} runtime and "
            f"the model need {needed / 1e6:.0f} MB",
            f"free space on the board, or remove another release's runtime ({remote_dir}/{RUNTIME_DIR}/<release>)",
        )
