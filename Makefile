# The two commands of the README: `make run` (everything in one process on embedded
# defaults) and `make test` (real PostgreSQL, Kafka and Redis, gofmt, vet, staticcheck, race tests, stack checks).
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X recsys/cmd.version=$(VERSION) -X recsys/cmd.commit=$(COMMIT)
BIN := bin/recsys
ARTIFACTS ?= ci-artifacts

.PHONY: run test build deps-run docs unit vet bench-targets

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

# PostgreSQL binaries are all `recsys dev` needs from the machine (Kafka and Redis run in-process).
deps-run:
	@bash scripts/install-deps.sh postgres

run: deps-run build
	$(BIN) dev

# Starts the real services (installing them when missing), then gofmt, vet, staticcheck, race tests with
# integration tests enabled, and the operator tools against a running stack.
test:
	@bash scripts/test.sh

# Unit tests only (integration tests skip without the services).
unit:
	$(GO) test -race ./...

# Every issue's benchmark target, RUNS rounds (not part of `make test`: ~4 minutes a round).
RUNS ?= 5
bench-targets:
	@bash scripts/bench-targets.sh $(RUNS)

vet:
	$(GO) vet ./...

docs: build
	$(BIN) config-doc > docs/configuration.md
