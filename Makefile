# svcproxy developer targets. The e2e tests need root (network namespaces) and the real
# kube-apiserver + etcd built by e2e/apiserver/build.sh (cached in e2e/.cache/bin).

GO        ?= go
TOOLS_BIN := $(CURDIR)/bin/tools
STATICCHECK := $(TOOLS_BIN)/staticcheck
GO_TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: all build test test-host test-vm bench-vm fuzz-short deps apiserver lint staticcheck clean demo

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

## demo: the example Services through svcproxy in network namespaces (MODE=ipvs: in the VM)
demo: deps apiserver build
	@echo "demo: compiling ./e2e/demo (first time: a minute or two)"
	$(GO) run ./e2e/demo -mode=$(or $(MODE),iptables) -svcproxy=bin/svcproxy

## test: lint, every test on the host, a short fuzz run, then the IPVS suite in the VM
test: lint test-host fuzz-short test-vm

## test-host: unit tests and the host e2e tests (network namespaces on this kernel)
test-host: deps apiserver
	$(GO) test $(GO_TEST_FLAGS) ./...

## test-vm: the data-plane scenarios inside the qemu VM, against the host's apiserver
## (e2e/vmdatapath): every TestDatapath/ipvs/* and the SCTP ones of TestDatapath/iptables/*,
## then, in a second boot, e2e/faults in IPVS mode.
## Only this target boots it: the package skips unless SVCPROXY_VM_TESTS=1, so
## test-host's `go test ./...` does not run it a second time.
test-vm: deps apiserver
	SVCPROXY_VM_TESTS=1 $(GO) test -count=1 -timeout 40m -v -run 'TestDatapathInVM|TestFaultsInVM' ./e2e/vmdatapath/

## bench-vm: the scale harness in IPVS mode inside the VM (BENCHMARKS.md); not part of test.
## SERVICES (1000), RUNS (1) and CHURN (60s) size it.
bench-vm: deps apiserver
	SVCPROXY_VM_SCALE=1 SVCPROXY_SCALE_SERVICES=$(or $(SERVICES),1000) SVCPROXY_SCALE_RUNS=$(or $(RUNS),1) \
	SVCPROXY_SCALE_CHURN=$(or $(CHURN),60s) $(GO) test -count=1 -timeout 90m -v -run TestScaleInVM ./e2e/vmscale/

## fuzz-short: a bounded fuzz run of the tracker and the iptables builder (seed corpora in testdata/fuzz)
fuzz-short:
	$(GO) test -run='^$$' -fuzz=FuzzTracker -fuzztime=15s ./proxier/
	$(GO) test -run='^$$' -fuzz=FuzzBuilder -fuzztime=15s ./iptables/
	$(GO) test -run='^$$' -fuzz=FuzzIPVS -fuzztime=15s ./ipvs/

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
