// Package bed is svcproxy's end-to-end test bed: a real kube-apiserver and etcd (built by
// e2e/apiserver/build.sh), network namespaces wired as a small cluster (nodes, pods and
// clients on a shared link), in-process echo servers in the pods, client helpers that send
// real packets, and a runner that starts the svcproxy binary inside a node namespace.
//
// Everything runs in namespaces the bed creates; the root network namespace is never
// changed. Tests need root and skip without it.
//
// A test binary starts with
//
//	func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
//
// so the apiserver started by the first API(t) call is stopped at the end, and a SIGINT
// tears down processes and namespaces before exiting.
package bed
