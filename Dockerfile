# Cross-toolchain image of the pipeline: Debian bookworm (python3 is 3.11), the pinned virtual
# environment, gcc/g++-aarch64-linux-gnu, qemu-user, the OpenSSH client and server, and `invoke`.
# Every install step is scripts/install.sh, the script the README and .ci/run use, so CI proves them.
# Build (scripts/docker_image.sh where no image registry is reached), run, size (2.15 GB) and nightly cron:
# docs/docker.md.

# System packages, shared by both stages below.
FROM debian:bookworm-slim AS system
WORKDIR /opt/tvm-edge-pipeline
COPY scripts/install.sh scripts/
RUN scripts/install.sh --system && rm -rf /var/lib/apt/lists/*

# The virtual environment and the runtime bundles; pip's download cache and the aarch64 wheels stay here.
FROM system AS build
COPY requirements.txt .
# The build machine's pip settings and CA bundle, if given (scripts/docker_image.sh passes them with
# --secret id=pip_conf and id=pip_ca): BuildKit mounts them for this step only, so no layer keeps them.
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf --mount=type=secret,id=pip_ca \
    scripts/install.sh --python
COPY . .
RUN scripts/install.sh --bundle

FROM system
ARG PIPELINE_UID=1000
RUN useradd --create-home --no-log-init --uid "${PIPELINE_UID}" pipeline
COPY . .
COPY --from=build /opt/tvm-edge-pipeline/.venv .venv
COPY --from=build --chown=pipeline:pipeline /opt/tvm-edge-pipeline/.cache/bundle .cache/bundle
# rk3399-emu's Debian 11 userland (qemu -L in boards/rk3399-emu.yaml).
COPY --from=build --chown=pipeline:pipeline /opt/tvm-edge-pipeline/.cache/sysroot .cache/sysroot
COPY --from=build --chown=pipeline:pipeline /opt/tvm-edge-pipeline/.cache/board-python .cache/board-python
# What the pipeline writes: its cache (builds may be a volume) and the folders docker run mounts over.
RUN mkdir -p .cache/builds records results && chown pipeline:pipeline .cache .cache/builds records results
USER ${PIPELINE_UID}
ENV PATH=/opt/tvm-edge-pipeline/.venv/bin:$PATH
ENTRYPOINT ["/opt/tvm-edge-pipeline/.venv/bin/invoke"]
CMD ["--list"]
