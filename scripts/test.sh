#!/usr/bin/env bash
# The test command of the README and CI: install what is needed, lint (ruff, mypy), then run the whole suite.
# The tests start their own OpenSSH server on 127.0.0.1 and run the aarch64 runtime under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/invoke lint
exec .venv/bin/python -m pytest "$@"
