# syntax=docker/dockerfile:1
# svcproxy image: docker build -t svcproxy:dev --build-arg VERSION=dev .
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ...

# The build runs on the builder's own platform and cross-compiles (pure Go,
# no cgo), so a multi-arch build needs no emulation.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
# -trimpath keeps the builder's paths out of the binary (reproducible builds).
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/svcproxy ./cmd/svcproxy

FROM debian:bookworm-slim
# iptables: both backends (iptables-legacy-* and iptables-nft-*); svcproxy
#   runs the one the host's kubelet uses, like kube-proxy's iptables-wrapper.
# ipset: the IPVS mode's address sets.
# conntrack, ipvsadm: to inspect a node from `kubectl exec`.
# kmod: modprobe, which iptables-legacy runs to load ip_tables (the
#   DaemonSet mounts the host's /lib/modules read-only).
# Versions are not pinned: a rebuild should pick up bookworm's security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      conntrack \
      ipset \
      iptables \
      ipvsadm \
      kmod \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/svcproxy /usr/local/bin/svcproxy
ENTRYPOINT ["/usr/local/bin/svcproxy"]
