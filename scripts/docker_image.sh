#!/usr/bin/env bash
# Builds the Docker image (Dockerfile) and smoke-tests it, on a machine that reaches no image registry:
#   1. docker.io and debootstrap from apt, if missing;
#   2. a Docker engine: the one running, or one started here without a bridge or iptables rules
#      (data under $PIPELINE_DOCKER_STATE, default .cache/docker; stopped again at the end);
#   3. the base image debian:bookworm-slim, if absent: debootstrap --variant=minbase from this machine's
#      Debian archive (scripts/install.sh --archive reads it from the apt sources) and docker import;
#   4. docker build --network=host, with this machine's pip configuration and CA bundle passed as BuildKit
#      secrets: mounted only while the RUN step that uses them runs, in no layer of any image;
#   5. the smoke test: deploy --board rk3399-emu --model tiny in the container, as its non-root user, on a
#      free loopback port; passes when the deploy exits 0 and prints "Check  output matches".
# Usage: scripts/docker_image.sh [--no-smoke]   Image name: $PIPELINE_IMAGE (default tvm-edge-pipeline).
# Exit codes: 0 built (and smoke-tested), 1 failed, 3 no Docker engine runs and none could be started.
# Needs root where it installs packages or starts the engine (as CI and this machine's sessions are).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${PIPELINE_IMAGE:-tvm-edge-pipeline}
BASE=debian:bookworm-slim
STATE=${PIPELINE_DOCKER_STATE:-$PWD/.cache/docker}
SMOKE=1
for arg in "$@"; do
  case "$arg" in
    --no-smoke) SMOKE=0 ;;
    *) echo "docker_image: unknown option $arg (use --no-smoke)" >&2; exit 2 ;;
  esac
done

fail() { echo "docker_image: error: $1 — fix: $2" >&2; exit 1; }
# Exit code 3: no Docker engine runs and none can be started here (tests/test_docker_image.py skips then).
no_engine() { echo "docker_image: no Docker engine: $1 — fix: $2" >&2; exit 3; }
step() { echo "docker_image: $*"; }
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo

mkdir -p "$STATE"
exec 9> "$STATE/lock"
flock -n 9 || fail "another scripts/docker_image.sh uses $STATE" "wait for it, or set PIPELINE_DOCKER_STATE"

if [ -n "$sudo" ] && ! sudo -n true 2> /dev/null && ! docker info > /dev/null 2>&1; then
  no_engine "none answers, and installing or starting one needs root" "run as root, or start Docker"
fi

# 1. Packages.
missing=()
command -v dockerd > /dev/null || missing+=(docker.io)
command -v debootstrap > /dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" > "$STATE/apt.log"
fi

# A client that builds with BuildKit: with buildx, or one older than 23 (Debian's docker.io 20.10), which
# drives the engine's own BuildKit when DOCKER_BUILDKIT=1. A newer client without buildx cannot.
DOCKER=""
for cli in docker /usr/bin/docker; do
  command -v "$cli" > /dev/null || continue
  major=$("$cli" --version | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
  if "$cli" buildx version > /dev/null 2>&1 || { [ -n "$major" ] && [ "$major" -lt 23 ]; }; then
    DOCKER=$cli
    break
  fi
done
[ -n "$DOCKER" ] || fail "no Docker client here can build with BuildKit" "apt-get install docker.io (or install docker-buildx)"
export DOCKER_BUILDKIT=1

# 2. The engine.
started=""
exec_root=""
stop_engine() {
  [ -n "$started" ] || return 0
  step "stopping the Docker engine started here (pid $started)"
  kill "$started" 2> /dev/null || true
  for _ in $(seq 150); do kill -0 "$started" 2> /dev/null || break; sleep 0.2; done
  kill -0 "$started" 2> /dev/null && { echo "docker_image: dockerd (pid $started) still runs" >&2; return 0; }
  # dockerd leaves its default network namespace mounted in the exec root.
  for ns in "$exec_root"/exec/netns/*; do [ -e "$ns" ] && $sudo umount "$ns" 2> /dev/null; done
  $sudo rm -rf "$exec_root" || true
}
trap stop_engine EXIT
if ! "$DOCKER" info > /dev/null 2>&1; then
  # Its sockets live in a short folder of its own (a unix socket's path is limited to 108 bytes).
  exec_root=$(mktemp -d /tmp/tvm-edge-dockerd.XXXXXX)
  export DOCKER_HOST=unix://$exec_root/docker.sock
  step "starting a Docker engine (data in $STATE/data, log in $STATE/dockerd.log)"
  # No bridge and no iptables: the build and the container use the host's network (--network=host), and
  # the engine listens only on its unix socket.
  $sudo dockerd --bridge=none --iptables=false --data-root "$STATE/data" --exec-root "$exec_root/exec" \
    --pidfile "$exec_root/dockerd.pid" --host "$DOCKER_HOST" > "$STATE/dockerd.log" 2>&1 &
  started=$!
  for _ in $(seq 150); do
    "$DOCKER" info > /dev/null 2>&1 && break
    kill -0 "$started" 2> /dev/null || { tail -5 "$STATE/dockerd.log" >&2; no_engine "dockerd exited" "see $STATE/dockerd.log"; }
    sleep 0.2
  done
  "$DOCKER" info > /dev/null 2>&1 || no_engine "dockerd did not answer within 30 s" "see $STATE/dockerd.log"
fi

# 3. The base image, from this machine's Debian archive (never from an image registry).
# slim_rootfs ROOT: slim like the published image (debuerreotype's slim variant): dpkg leaves out
# documentation, manual pages and translations, apt deletes the packages it downloaded, no apt lists.
slim_rootfs() {
  local root=$1
  # Only ever a fresh debootstrap folder of this script, never the host's own /.
  [[ $root == "$STATE"/rootfs.* ]] && [ "$(realpath "$root")" != / ] && [ -f "$root/etc/debian_version" ] ||
    fail "no debootstrap rootfs at '$root'" "report this bug"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/linda/*' \
    'path-exclude /usr/share/lintian/overrides/*' 'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/man/*' |
    $sudo tee "$root/etc/dpkg/dpkg.cfg.d/docker" > /dev/null
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"'
  printf '%s\n' "DPkg::Post-Invoke { $clean; };" "APT::Update::Post-Invoke { $clean; };" \
    'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' | $sudo tee "$root/etc/apt/apt.conf.d/docker-clean" > /dev/null
  echo 'Acquire::Languages "none";' | $sudo tee "$root/etc/apt/apt.conf.d/docker-no-languages" > /dev/null
  $sudo find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  $sudo find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  local dir
  for dir in groff info linda lintian/overrides locale man; do
    [ -d "$root/usr/share/$dir" ] && $sudo find "$root/usr/share/$dir" -mindepth 1 -delete
  done
  $sudo rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
}
if ! "$DOCKER" image inspect "$BASE" > /dev/null 2>&1; then
  read -r site _ <<< "$(scripts/install.sh --archive)"
  rootfs=$(mktemp -d "$STATE/rootfs.XXXXXX")
  step "making $BASE with debootstrap --variant=minbase bookworm (log in $STATE/debootstrap.log)"
  start=$SECONDS
  $sudo debootstrap --variant=minbase bookworm "$rootfs" "$site" > "$STATE/debootstrap.log" 2>&1 ||
    { tail -5 "$STATE/debootstrap.log" >&2; fail "debootstrap failed" "see $STATE/debootstrap.log"; }
  slim_rootfs "$rootfs"
  $sudo tar -C "$rootfs" -c . | "$DOCKER" import - "$BASE" > /dev/null
  $sudo rm -rf "$rootfs"
  step "base image made in $((SECONDS - start)) s"
fi

# 4. The build. pip's settings as this machine has them (environment and config files), less what points
# into this host's file system (find-links, constraints, file:// indexes), which the build cannot see; its
# CA bundle is a second secret, which the pip.conf secret names. Both live outside the build context.
secrets=()
secret_dir=$(mktemp -d)
trap 'rm -rf "$secret_dir"; stop_engine' EXIT
for py in .venv/bin/python python3; do
  "$py" -m pip --version > /dev/null 2>&1 || continue
  "$py" -m pip config list 2> /dev/null | "$py" -c '
import configparser, re, sys
from pathlib import Path

keep = {"index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries", "proxy",
        "disable-pip-version-check"}
values, cert = {}, None
# pip config list: files first, then the environment (:env:), which wins, as it does in pip.
for line in sys.stdin:
    match = re.match(r"([^.]*)\.([^=]+)=(.*)$", line.strip())
    if not match or match[1] not in ("global", "install", "download", ":env:"):
        continue
    key, value = match[2], match[3].strip("\x27\"")
    if key == "cert":
        cert = value
    elif key in keep:
        if key.endswith("index-url"):
            value = " ".join(url for url in value.split() if not url.startswith("file:"))
        if value:
            values[key] = value
if cert and Path(cert).is_file():
    print(cert, file=sys.stderr)
    values["cert"] = "/run/secrets/pip_ca"
config = configparser.ConfigParser()
config["global"] = values
with open(sys.argv[1], "w") as out:
    config.write(out)
' "$secret_dir/pip.conf" 2> "$secret_dir/cert"
  secrets+=(--secret "id=pip_conf,src=$secret_dir/pip.conf")
  [ -s "$secret_dir/cert" ] && secrets+=(--secret "id=pip_ca,src=$(cat "$secret_dir/cert")")
  break
done
step "docker build -t $IMAGE (pip settings passed: $(grep -c = "$secret_dir/pip.conf" 2> /dev/null || echo 0), log in $STATE/build.log)"
start=$SECONDS
if ! "$DOCKER" build --network=host --progress=plain "${secrets[@]}" -t "$IMAGE" . > "$STATE/build.log" 2>&1; then
  tail -30 "$STATE/build.log" >&2
  fail "docker build failed" "see $STATE/build.log"
fi
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
step "built $IMAGE in $((SECONDS - start)) s: $((size / 1000000)) MB"

# 5. The smoke test.
[ "$SMOKE" -eq 1 ] || exit 0
user=$("$DOCKER" run --rm --entrypoint id "$IMAGE" -un)
[ "$user" = pipeline ] || fail "the image runs as $user, not pipeline" "keep USER in the Dockerfile's last stage"
if "$DOCKER" run --rm --entrypoint sh "$IMAGE" -c 'test -e /etc/pip.conf || test -e /run/secrets/pip_ca'; then
  fail "the image carries a pip configuration or CA bundle" "mount them as secrets only (Dockerfile)"
fi
port=${PIPELINE_SSHD_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
step "smoke test: deploy --board rk3399-emu --model tiny as $user (sshd on 127.0.0.1:$port)"
start=$SECONDS
status=0
"$DOCKER" run --rm --network=host -e PIPELINE_SSHD_PORT="$port" "$IMAGE" deploy --board rk3399-emu --model tiny \
  > "$STATE/smoke.log" 2>&1 || status=$?
cat "$STATE/smoke.log"
[ "$status" -eq 0 ] || fail "the deploy in the container exited $status" "see the output above"
grep -Eq '^Check +output matches' "$STATE/smoke.log" ||
  fail "the deploy in the container printed no matching Check line" "see the output above"
step "smoke test passed in $((SECONDS - start)) s"
