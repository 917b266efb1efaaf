// Package vmdatapath runs the data-plane scenarios of e2e/datapath, and the fault tests
// of e2e/faults in IPVS mode, inside the qemu VM of e2e/vm, whose kernel has IPVS and
// SCTP (the host's has neither). Each package gets its own boot.
//
// The host test starts the bed's kube-apiserver, boots the VM with the datapath test
// binary, svcproxy and a kubeconfig for that apiserver, and fails when any scenario in
// the guest fails. In the guest the bed runs in external-apiserver mode (bed/external.go):
// bed.API(t) connects to the host's apiserver instead of starting one, and the node
// namespaces' forwarders relay to it.
//
// Booting the VM takes minutes, so the test runs only when SVCPROXY_VM_TESTS=1
// (`make test-vm` sets it); a plain `go test ./...` skips it.
package vmdatapath
