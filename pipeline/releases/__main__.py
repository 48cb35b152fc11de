"""`python -m pipeline.releases 0.26 ...`: create (or confirm) these releases' environments and bundles;
scripts/install.sh runs it so that CI and the first `--tvm` step do not pay for it."""

import sys

from pipeline.errors import PipelineError
from pipeline.releases.catalog import get_release
from pipeline.releases.environment import release_python


def main(names: list[str]) -> int:
    for name in names:
        try:
            python = release_python(get_release(name), on_progress=lambda line: print(f"install: {line}", flush=True))
        except PipelineError as error:
            print(error.line(), file=sys.stderr)
            return 1
        print(f"install: TVM {name} runs under {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
