#!/usr/bin/env bash
# The one install path, shared by the README, .ci/run and the Dockerfile:
#   system packages (Debian), a pinned virtual environment in .venv, the aarch64 TVM runtime wheels
#   for boards, and the runtime bundles (the C++ runner plus TVM's runtime libraries per architecture).
# Usage: scripts/install.sh [--system] [--python] [--bundle]   (no flag: all three, in that order)
set -euo pipefail
cd "$(dirname "$0")/.."

TVM_VERSION=0.27.0.post1
TVM_FFI_VERSION=0.1.14.post1
PYTHON=${PYTHON:-python3}
DEBIAN_PACKAGES=(python3 python3-venv g++ gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
                 openssh-server openssh-client)

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(--system --python --bundle)

install_system() {
  local missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && { echo "install: Debian packages present"; return; }
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "install: apt-get install ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_python() {
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  mkdir -p .cache/wheels/aarch64
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_aarch64 -d .cache/wheels/aarch64 \
    "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$TVM_FFI_VERSION"
  echo "install: Python environment ready in .venv"
}

install_bundle() {
  .venv/bin/python -m pipeline.bundle
}

for step in "${steps[@]}"; do
  case "$step" in
    --system) install_system ;;
    --python) install_python ;;
    --bundle) install_bundle ;;
    *) echo "install: unknown step $step (use --system, --python, --bundle)" >&2; exit 2 ;;
  esac
done
