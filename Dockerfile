# syntax=docker/dockerfile:1.7
#
# One image holding every Switchyard binary: switchyard-placement, switchyard-gateway and, once
# they exist, switchyard-relay and syctl. Pods pick theirs with `command:` (deploy/k8s).
#
#   docker build -t switchyard:dev .
#   docker run --rm switchyard:dev switchyard-placement --help
#
# Services listen on 127.0.0.1 by default; in a container set the listen addresses, e.g.
# SWITCHYARD_LISTEN=0.0.0.0:4000 (gateway), SWITCHYARD_HTTP_ADDR=0.0.0.0:7000 and
# SWITCHYARD_GRPC_ADDR=0.0.0.0:7001 (placement). See docs/deploy.md.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Protos are compiled by protox inside build.rs: no protoc needed.
COPY . .
# Build every binary of the default members (crates/*) against the committed lockfile, then
# keep the service binaries that exist. The cache mounts keep the registry and target dir
# between builds (BuildKit); the binaries are copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && for bin in switchyard-placement switchyard-gateway switchyard-relay syctl; do \
      if [ -x "target/release/$bin" ]; then install -m 0755 "target/release/$bin" /out/; fi; \
    done \
 && test -x /out/switchyard-placement && test -x /out/switchyard-gateway \
 && ls -l /out

FROM ${RUNTIME_IMAGE}
# ca-certificates: TLS to a managed Redis or an OTLP collector. Nothing else is installed; the
# binaries need only glibc and libgcc. /bin/sleep serves the gateway's preStop pause.
# ca-certificates is left unpinned on purpose: it should follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/ /usr/local/bin/
# The "nonroot" uid/gid of distroless images; the Kubernetes manifests run as the same ids with
# a read-only root filesystem.
USER 65532:65532
WORKDIR /tmp
# gateway 4000; placement http 7000, grpc 7001; relay http 7100, grpc 7101.
EXPOSE 4000 7000 7001 7100 7101
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="switchyard" \
      org.opencontainers.image.description="Socket.IO at cluster scale: placement, gateway, relay, syctl" \
      org.opencontainers.image.licenses="Apache-2.0"
CMD ["switchyard-placement", "--help"]
