# The witan member image. The operator's image is built from the same
# workspace once it exists.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p witan-node --bin witan

FROM debian:bookworm-slim
COPY --from=build /src/target/release/witan /usr/local/bin/witan
# Run as a non-root user with a writable data dir: the default data dir
# (<name>.witan) is relative to the working directory.
RUN mkdir -p /var/lib/witan && chown 65532:65532 /var/lib/witan
WORKDIR /var/lib/witan
USER 65532:65532
ENV WITAN_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    WITAN_LISTEN_PEER_URLS=http://0.0.0.0:2380
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/witan"]
