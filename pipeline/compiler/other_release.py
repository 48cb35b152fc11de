"""A build under another TVM release: `build_under` runs `<release python> -m pipeline.compiler.other_release
BOARD MODEL [--no-migrate]` in that release's environment, which builds and prints the build's folder as JSON
on its last line; the calling process (another release) reads the build back from build.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.board.profile import BoardProfile, load_board
from pipeline.compiler import builder
from pipeline.compiler.builder import BuildArtifact
from pipeline.compiler.importer.model_file import ModelSpec, resolve_model
from pipeline.errors import PipelineError, write_log
from pipeline.paths import RECORDS_DIR, ROOT
from pipeline.tvm_release.catalog import Release, running_release
from pipeline.tvm_release.environment import Progress, release_python


def build_under(
    release: Release,
    board_name: str,
    profile: BoardProfile,
    spec: ModelSpec,
    migrate: bool,
    show: Progress,
    records_dir: Path = RECORDS_DIR,
) -> BuildArtifact:
    """In this process for the running release, else in the release's environment (read back from build.json)."""
    if release == running_release():
        return builder.build(spec, profile, records_dir=records_dir, migrate=migrate)
    python = release_python(release, show)
    command = [
        str(python),
        "-m",
        "pipeline.compiler.other_release",
        board_name,
        spec.name if spec.builtin else str(spec.path),
        *([] if migrate else ["--no-migrate"]),
    ]
    env = {**os.environ, "PIPELINE_RECORDS": str(records_dir.resolve())}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        if lines and lines[-1].startswith("error: "):
            raise PipelineError(f"under TVM {release.name}: {lines[-1].removeprefix('error: ')}")
        log = write_log(f"build-{release.name}", done.stdout + done.stderr)
        raise PipelineError(f"the build under TVM {release.name} failed", "see the log", log)
    return builder.load_build(Path(json.loads(done.stdout.strip().splitlines()[-1])["directory"]))


def main(argv: list[str]) -> int:
    board, model, *flags = argv
    try:
        artifact = builder.build(resolve_model(model), load_board(board), migrate="--no-migrate" not in flags)
    except PipelineError as error:
        print(error.line(), file=sys.stderr)
        return 1
    print(json.dumps({"directory": str(artifact.directory)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
