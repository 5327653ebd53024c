# syntax=docker/dockerfile:1
#
# The seed flow served over HTTP (`seed_http` of `mpserver-http`) in a small,
# non-root image: a build stage with the Rust toolchain, and a distroless
# runtime (glibc and libgcc, no shell, no package manager) running as the
# unprivileged user 65532.
#
#   docker build -t mpserver-seed-http .
#   docker run --rm -p 8080:8080 mpserver-seed-http
#   curl -s -X POST localhost:8080/call -d '"world"'      # "Hello, wdwdwdwdwd!"
#
# Configuration comes from the environment (MPSERVER_HTTP_ADDR,
# MPSERVER_HTTP_CAPACITY, MPSERVER_HTTP_TIMEOUT_MS, MPSERVER_HTTP_GRACE_MS,
# MPSERVER_HTTP_DRAIN_DELAY_MS, RUST_LOG, ...) or from flags after the image
# name. The seed flow pins worker processes to CPUs 0 and 1: the container
# must be allowed on both (see docs/guide.md, "Scaling out").
#
# Both base images are arguments, so a mirror or a pinned digest can be used.
# CI builds the `prebuilt` target instead (deploy/image-check.sh): the same
# runtime stage around a binary built outside, on a runtime base made from
# the build machine's own Debian 12 libraries.

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# No debug info in the image; symbols stay, so worker backtraces name their
# functions. The registry and target caches speed up rebuilds (BuildKit).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mpserver-http-seed --bin seed_http \
    && install -D -m 0755 target/release/seed_http /out/seed_http

FROM ${RUNTIME_IMAGE} AS runtime-base
# Listen on every interface of the container; the port is the Service's.
ENV MPSERVER_HTTP_ADDR=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/seed_http"]

# CI only: the runtime around a binary built outside the image (the build
# context is a folder that holds just `seed_http`).
FROM runtime-base AS prebuilt
COPY --chmod=0755 seed_http /usr/local/bin/seed_http

# The default target (last stage): the runtime around the binary built above.
FROM runtime-base AS runtime
COPY --from=build /out/seed_http /usr/local/bin/seed_http
