# syntax=docker/dockerfile:1
#
# recsys image: one static binary on distroless/static (no shell, no package manager, runs as
# uid 65532). Every role runs from this image; the command picks the role:
#   docker run IMAGE                      -> recsys all (every role in one process)
#   docker run IMAGE serve --roles api    -> one role per container (Kubernetes, compose --profile split)
#   docker run IMAGE migrate up           -> schema migrations (one-shot)
#
# Build (BuildKit): docker build --build-arg VERSION=$(git describe --tags --always --dirty) \
#                     --build-arg COMMIT=$(git rev-parse HEAD) -t recsys:dev .
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (the builder
# cross-compiles on the build platform, nothing runs under emulation).

ARG GO_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=gcr.io/distroless/static:nonroot

FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
WORKDIR /src
# Module download is its own layer: it is re-run only when go.mod/go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
# No defaults: BuildKit fills these per --platform, but only when the ARG has no default of
# its own (a default would build an amd64 binary into the arm64 image). The legacy builder
# leaves them empty; the RUN below falls back to the build machine's platform then.
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown
# CGO off: a static binary that needs no libc in the runtime image. -trimpath drops local paths
# from the binary; -s -w drop the symbol tables (stack traces keep function names and lines).
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    goos=${TARGETOS:-$(go env GOHOSTOS)} && goarch=${TARGETARCH:-$(go env GOHOSTARCH)} \
 && CGO_ENABLED=0 GOOS=$goos GOARCH=$goarch \
    go build -trimpath \
      -ldflags "-s -w -X recsys/cmd.version=${VERSION} -X recsys/cmd.commit=${COMMIT}" \
      -o /out/recsys . \
 && if [ "$goos/$goarch" = "$(go env GOHOSTOS)/$(go env GOHOSTARCH)" ]; then /out/recsys version; fi

FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="recsys" \
      org.opencontainers.image.description="Real-time recommendation engine: ingest, outbox relay, feature consumer, ranked lists" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
# distroless/static ships CA certificates (TLS to managed PostgreSQL/Kafka/Redis) and tzdata.
COPY --from=build /out/recsys /usr/local/bin/recsys
# 65532 is distroless' "nonroot" user; numeric so Kubernetes runAsNonRoot can verify it.
USER 65532:65532
# JSON logs unless told otherwise: containers are read by log collectors, not terminals.
ENV LOG_FORMAT=json
EXPOSE 8080
# No shell or curl in the image: the binary probes itself. `recsys healthcheck` GETs
# /readyz on the port of RECSYS_HTTP_ADDR (default :8080) and exits 0 only on a 2xx.
# Kubernetes ignores this and uses the probes in deploy/k8s.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["recsys", "healthcheck"]
ENTRYPOINT ["recsys"]
CMD ["all"]
