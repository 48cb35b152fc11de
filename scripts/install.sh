#!/usr/bin/env bash
# The one install path, shared by the README, .ci/run and the Dockerfile:
#   system packages (Debian), a pinned virtual environment in .venv, the aarch64 TVM runtime wheels
#   for boards and the arm64 Python that serves TVM RPC on a board while tuning (Debian's packages,
#   fetched with a private apt configuration: the system's dpkg is untouched), and the bundles built
#   from them (the C++ runner plus TVM's runtime libraries per architecture; the board Python archive),
#   and the environments of the other TVM releases the pipeline supports (`--tvm`), created once here
#   so that no step or test pays for it (.cache/tvm/<release>/venv and its runtime bundles).
# Usage: scripts/install.sh [--system] [--python] [--bundle] [--releases]   (no flag: all four, in order)
#        scripts/install.sh --archive   prints this machine's Debian archive and release ("SITE CODENAME")
set -euo pipefail
cd "$(dirname "$0")/.."

TVM_VERSION=0.27.0.post1
TVM_FFI_VERSION=0.1.14.post1
# Other TVM releases, side by side with the default above (their pins: pipeline/tvm_release/catalog.py).
OTHER_RELEASES=(0.26)
# What TVM's RPC server imports on a board besides TVM (the host's versions, see requirements.txt).
BOARD_WHEELS=(numpy==2.4.6 ml_dtypes==0.6.0 typing_extensions==4.16.0 cloudpickle==3.1.3 psutil==7.2.2)
BOARD_DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libexpat1 zlib1g libffi8
            libbz2-1.0 liblzma5 libc6)
PYTHON=${PYTHON:-python3}
DEBIAN_PACKAGES=(python3 python3-venv g++ gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
                 openssh-server openssh-client)

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(--system --python --bundle --releases)

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
    "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$TVM_FFI_VERSION" "${BOARD_WHEELS[@]}"
  download_board_debs
  download_bullseye_userland
  echo "install: Python environment ready in .venv"
}

# The Debian archive this machine's apt already uses for its own release (a mirror or a proxy included),
# as apt itself parses the sources: nothing here names an archive. --no-release-info lists every target
# of the sources, downloaded or not: a Docker layer (or a fresh machine) may have no lists in
# /var/lib/apt/lists, and without the option indextargets then prints nothing.
debian_archive() {
  local codename site
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  site=$(apt-get indextargets --no-release-info --format '$(SITE) $(RELEASE) $(IDENTIFIER)' 2>/dev/null |
    awk -v suite="$codename" '$2 == suite && $3 == "Packages" { print $1; exit }')
  if [ -z "$codename" ] || [ -z "$site" ]; then
    echo "install: error: no Debian archive for '${codename:-unknown}' in this machine's apt sources" \
      "— fix: add the Debian archive (or your mirror) to /etc/apt/sources.list.d, then run apt-get update" >&2
    exit 1
  fi
  echo "$site $codename"
}

# A private apt configuration for the arm64 packages of one suite of this machine's Debian archive
# (debian_archive), in folder $1: the system's own dpkg state and sources stay untouched.
private_arm64_apt() {
  local apt=$1 suite=$2 archive site
  archive=$(debian_archive)
  read -r site _ <<< "$archive"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/etc/apt.conf.d" "$apt/etc/preferences.d" \
    "$apt/etc/sources.list.d" "$apt/debs"
  touch "$apt/status"
  echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $site $suite main" \
    > "$apt/etc/sources.list"
  printf '%s\n' 'APT::Architecture "arm64";' 'APT::Architectures { "arm64"; };' \
    "APT::Sandbox::User \"$(id -un)\";" "Dir::Etc \"$apt/etc\";" 'Dir::Etc::TrustedParts "/etc/apt/trusted.gpg.d";' 'Dir::Etc::Parts "/etc/apt/apt.conf.d";' \
    "Dir::State::Lists \"$apt/lists\";" "Dir::State::status \"$apt/status\";" "Dir::Cache \"$apt/cache\";" \
    "Dir::Cache::archives \"$apt/archives\";" > "$apt/apt.conf"
  APT_CONFIG="$apt/apt.conf" apt-get update -qq
}

download_board_debs() {
  local apt=$PWD/.cache/apt-arm64 debs=.cache/debs/arm64 archive codename
  archive=$(debian_archive)
  read -r _ codename <<< "$archive"
  private_arm64_apt "$apt" "$codename"
  mkdir -p "$debs"
  (cd "$debs" && rm -f ./*.deb && APT_CONFIG="$apt/apt.conf" apt-get download -qq "${BOARD_DEBS[@]}")
  echo "install: arm64 Python packages for the board in $debs"
}

# The emulated rk3399's userland (boards/rk3399-emu.yaml runs qemu-aarch64 -L on it): Debian 11's arm64
# C and C++ libraries (glibc 2.31, gcc 10's libstdc++), an older board OS than this host's cross libraries,
# from the same Debian archive as this machine's apt (suite bullseye), unpacked under .cache.
BULLSEYE_DEBS=(libc6 libstdc++6 libgcc-s1)
BULLSEYE_ROOT=.cache/sysroot/bullseye-arm64

download_bullseye_userland() {
  local apt=$PWD/.cache/apt-arm64-bullseye staging deb
  private_arm64_apt "$apt" bullseye
  (cd "$apt/debs" && rm -f ./*.deb && APT_CONFIG="$apt/apt.conf" apt-get download -qq "${BULLSEYE_DEBS[@]}")
  # Unpacked into a fresh folder and renamed into place: an interrupted install leaves no half a userland.
  mkdir -p "$(dirname "$BULLSEYE_ROOT")"
  staging=$(mktemp -d "$BULLSEYE_ROOT.XXXXXX")
  for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$staging"; done
  chmod 755 "$staging"
  rm -rf "$BULLSEYE_ROOT" && mv "$staging" "$BULLSEYE_ROOT"
  echo "install: Debian 11 arm64 userland for rk3399-emu in $BULLSEYE_ROOT"
}

install_bundle() {
  .venv/bin/python -m pipeline.board.bundle
  .venv/bin/python -m pipeline.board.tuning_python
}

install_releases() {
  .venv/bin/python -m pipeline.board.bundle "${OTHER_RELEASES[@]}"
}

for step in "${steps[@]}"; do
  case "$step" in
    --system) install_system ;;
    --python) install_python ;;
    --bundle) install_bundle ;;
    --releases) install_releases ;;
    --archive) debian_archive ;;
    *) echo "install: unknown step $step (use --system, --python, --bundle, --releases, --archive)" >&2; exit 2 ;;
  esac
done
