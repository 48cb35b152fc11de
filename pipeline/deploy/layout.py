"""Push step: put the runtime bundle, the built model and the input on the board."""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.board.bundle import RuntimeBundle
from pipeline.board.session import Board
from pipeline.board.sync import Progress, PushReport
from pipeline.build.builder import LIBRARY_NAME, PARAMS_NAME, BuildArtifact

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


def push_model(
    board: Board,
    bundle: RuntimeBundle,
    artifact: BuildArtifact,
    input_file: Path,
    on_progress: Progress | None = None,
) -> Deployment:
    """One push of everything the run needs; unchanged files are skipped by hash, so a re-deploy is cheap."""
    model_dir = PurePosixPath("models") / artifact.key
    files = {str(PurePosixPath(RUNTIME_DIR) / name): path for name, path in bundle.files.items()}
    files[str(model_dir / LIBRARY_NAME)] = artifact.library
    files[str(model_dir / PARAMS_NAME)] = artifact.params
    input_name = f"inputs/{input_file.name}"
    files[input_name] = input_file
    report = board.push(files, on_progress=on_progress)
    return Deployment(
        remote_dir=board.remote_dir,
        runner=f"{RUNTIME_DIR}/tvm_runner",
        library=str(model_dir / LIBRARY_NAME),
        params=str(model_dir / PARAMS_NAME),
        input=input_name,
        report=report,
    )
