# syntax=docker/dockerfile:1
# Two images from one workspace, one target each:
#
#   docker build --target node     -t witan:0.1.0 .           # a member
#   docker build --target operator -t witan-operator:0.1.0 .  # the operator
#
# A KvCluster without spec.image runs witan:<operator version>; the Helm
# chart runs witan-operator:<appVersion>. Both runtime images are
# distroless (glibc, CA certificates, no shell, no package manager, no
# build tools) and run as the numeric non-root user 65532, the uid the
# operator's StatefulSet and Deployment ask for. operator/tests/dockerfile.rs
# checks this file's shape.

ARG RUST_VERSION=1.95

# ---- build -----------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build-base
# protoc: the etcd-client crate (the operator's member API) compiles etcd's
# protos at build time (witan-api vendors its own protoc).
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The data directory of the node image, created here because the runtime
# image has no shell to create it.
RUN mkdir -p /out/var/lib/witan

FROM build-base AS build-node
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p witan-node --bin witan \
    && install -D target/release/witan /out/witan

FROM build-base AS build-operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p witan-operator --bin witan-operator \
    && install -D target/release/witan-operator /out/witan-operator

# ---- node ------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS node
COPY --from=build-node /out/witan /usr/local/bin/witan
# A writable data dir: the default data dir (<name>.witan) is relative to
# the working directory. The operator mounts the member's volume below it.
COPY --from=build-base --chown=65532:65532 /out/var/lib/witan /var/lib/witan
WORKDIR /var/lib/witan
USER 65532:65532
ENV WITAN_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    WITAN_LISTEN_PEER_URLS=http://0.0.0.0:2380
# 2379: clients (etcd v3 gRPC, JSON gateway, /livez, /readyz, /metrics);
# 2380: peers (Raft).
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/witan"]

# ---- operator --------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build-operator /out/witan-operator /usr/local/bin/witan-operator
USER 65532:65532
# /metrics and /healthz.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/witan-operator"]
