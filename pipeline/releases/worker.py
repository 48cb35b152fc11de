"""`<release python> -m pipeline.releases.worker BOARD MODEL [--no-migrate]`: build under that release and
print the build's folder as JSON on the last line; the calling process (another release) reads build.json."""

import json
import sys

from pipeline.board.profile import load_board
from pipeline.build.builder import build
from pipeline.build.model_file import resolve_model
from pipeline.errors import PipelineError


def main(argv: list[str]) -> int:
    board, model, *flags = argv
    try:
        artifact = build(resolve_model(model), load_board(board), migrate="--no-migrate" not in flags)
    except PipelineError as error:
        print(error.line(), file=sys.stderr)
        return 1
    print(json.dumps({"directory": str(artifact.directory)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
