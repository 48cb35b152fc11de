"""Push step: put the runtime bundle, the built model and the input on the board.

Each TVM release's runtime has its own folder on the board (runtime/<release>/), so a board keeps the
runtimes of several releases side by side and a model runs on the runtime of the release that built it.
Whether the board has room for them is checked before the push (pipeline/board/doctor.py)."""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.board.bundle import RuntimeBundle
from pipeline.board.session import Board
from pipeline.board.sync import Progress, PushReport
from pipeline.compiler.builder import LIBRARY_NAME, PARAMS_NAME, BuildArtifact
from pipeline.errors import PipelineError

RUNTIME_DIR = "runtime"


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
    board: Board,
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
    report = board.push(files, on_progress=on_progress)
    return Deployment(
        remote_dir=board.remote_dir,
        runner=f"{runtime}/tvm_runner",
        library=str(model_dir / LIBRARY_NAME),
        params=str(model_dir / PARAMS_NAME),
        input=input_name,
        report=report,
    )
