# banger — see README.md. All targets work from a clean clone.
SHELL := /bin/bash
GO ?= go
PKG := github.com/bangerdev/banger
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILD_TIME ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
# Release builds pin the update channel: UPDATE_URL (manifest.json) and
# UPDATE_PUBKEY (base64 DER public key; see docs/update.md).
UPDATE_URL ?=
UPDATE_PUBKEY ?=
LDFLAGS := -X $(PKG)/internal/buildinfo.Version=$(VERSION) -X $(PKG)/internal/buildinfo.Commit=$(COMMIT) -X $(PKG)/internal/buildinfo.BuildTime=$(BUILD_TIME) \
	-X $(PKG)/internal/buildinfo.UpdateManifestURL=$(UPDATE_URL) -X $(PKG)/internal/buildinfo.UpdatePublicKey=$(UPDATE_PUBKEY)
BIN := $(CURDIR)/bin
# Test builds honour test-only knobs (crash hook, fakefc options); the
# end-to-end tests run them, releases never contain them.
TEST_BIN := $(CURDIR)/bin/test
PREFIX ?= /usr/local
# CI=true makes every missing test requirement a failure instead of a skip.
ifeq ($(CI),true)
export BANGER_TEST_STRICT := 1
endif
export BANGER_TEST_CACHE ?= $(HOME)/.cache/banger-test
# Firecracker's API specs, beside the clone (tests take them from here only).
export FAKEFC_SPEC_DIR ?= $(abspath $(CURDIR)/../shared/firecracker-api)
GOTEST_FLAGS ?= -race -timeout 30m

.PHONY: all build build-test deps lint test unit integration e2e test-all soak bench fuzz demo install clean

all: build

# bin/banger-agent is the guest agent: static (no libc in guests is
# assumed), stripped (the daemon writes it into every VM's root disk).
build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ $$($(GO) list ./cmd/... | grep -v '/cmd/banger-agent$$')
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o $(BIN)/banger-agent ./cmd/banger-agent

build-test:
	@mkdir -p $(TEST_BIN)
	$(GO) build -tags bangertest -trimpath -ldflags "$(LDFLAGS)" -o $(TEST_BIN)/ $$($(GO) list ./cmd/... | grep -v '/cmd/banger-agent$$')
	CGO_ENABLED=0 $(GO) build -tags bangertest -trimpath -ldflags "$(LDFLAGS) -s -w" -o $(TEST_BIN)/banger-agent ./cmd/banger-agent

# Host packages banger and its tests need (Debian 12). Needs root.
deps:
	./scripts/deps

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-formatted:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Unit tests only: no root, no VMs.
unit:
	BANGER_TEST_STRICT= $(GO) test -short $(GOTEST_FLAGS) ./...

# Unit + integration tests (integration tests need root and host tools).
test: build
	$(GO) test $(GOTEST_FLAGS) ./...

# End-to-end tests: boot real guests under QEMU (TCG without KVM).
e2e: build-test
	BANGER_E2E=1 BANGER_BIN=$(TEST_BIN) $(GO) test $(GOTEST_FLAGS) -run 'E2E|Conformance' ./...

# Everything CI runs: lint, unit, integration and end-to-end tests.
test-all: deps lint build build-test
	BANGER_E2E=1 BANGER_TEST_EXPECT_COW=copy,reflink BANGER_BIN=$(TEST_BIN) $(GO) test $(GOTEST_FLAGS) -p 2 ./...

# The long forms of the reliability harness (docs/testing.md): the crash
# loop (SOAK_CRASH_PASSES passes, each killing the daemon at every create,
# start, stop and delete step), the create/delete stress (SOAK_STRESS_SEQ
# sequential, SOAK_STRESS_PAR parallel cycles) and the concurrency test.
# CI runs the short forms (one pass, 5 + 4 cycles). Hours under TCG.
SOAK_CRASH_PASSES ?= 50
SOAK_STRESS_SEQ ?= 50
SOAK_STRESS_PAR ?= 8
soak: build-test
	BANGER_E2E=1 BANGER_BIN=$(TEST_BIN) BANGER_CRASH_PASSES=$(SOAK_CRASH_PASSES) \
	BANGER_STRESS_SEQ=$(SOAK_STRESS_SEQ) BANGER_STRESS_PAR=$(SOAK_STRESS_PAR) \
	$(GO) test -race -count=1 -timeout 12h -v -run 'TestE2E(CrashLoop|CreateDeleteStress|ConcurrentCreatesPullsAndDeletes)$$' ./test/e2e/

bench: build
	BANGER_BIN=$(BIN) ./scripts/bench

# Every fuzz target for FUZZTIME each (CI runs only the seed corpora, via go test).
FUZZTIME ?= 10s
fuzz:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz

# The main job: check the host, then a VM round trip through the daemon.
demo: deps build
	./scripts/demo

install: build
	install -m 0755 $(BIN)/banger $(BIN)/bangerd $(DESTDIR)$(PREFIX)/bin/
	install -d $(DESTDIR)$(PREFIX)/lib/banger
	install -m 0755 $(BIN)/banger-agent $(DESTDIR)$(PREFIX)/lib/banger/

clean:
	rm -rf $(BIN)
