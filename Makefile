# svcproxy developer targets. The e2e tests need root (network namespaces) and the real
# kube-apiserver + etcd built by e2e/apiserver/build.sh (cached in e2e/.cache/bin).

GO        ?= go
TOOLS_BIN := $(CURDIR)/bin/tools
STATICCHECK := $(TOOLS_BIN)/staticcheck
GO_TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: all build test test-host test-vm deps apiserver lint staticcheck clean

all: build

## build: bin/svcproxy
build:
	$(GO) build -o bin/svcproxy ./cmd/svcproxy

## deps: OS packages for the test bed (idempotent)
deps:
	hack/install-deps.sh

## apiserver: kube-apiserver and etcd for the e2e bed (skipped when up to date)
apiserver:
	e2e/apiserver/build.sh

## test: every test on the host, then the IPVS suite in the VM
test: test-host test-vm

## test-host: unit tests and the host e2e tests (network namespaces on this kernel)
test-host: deps apiserver
	$(GO) test $(GO_TEST_FLAGS) ./...

## test-vm: the e2e suite inside the qemu VM (IPVS); filled in by e2e/vm
test-vm:
	@echo "test-vm: no VM suite yet (e2e/vm)"

## lint: gofmt, go vet, staticcheck
lint: staticcheck
	@out="$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go' -not -path './e2e/.cache/*'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

staticcheck: $(STATICCHECK)

$(STATICCHECK):
	GOBIN=$(TOOLS_BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@latest

clean:
	rm -rf bin
