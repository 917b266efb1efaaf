// Package vmtest checks the IPVS data plane against a real kernel: its
// tests run inside the e2e/vm test VM (a Debian kernel with IPVS), where
// they program a node namespace with the real kernel layer and send TCP
// and UDP traffic from a pod namespace through virtual servers to echo
// servers in other pod namespaces. On the host, TestVM boots the VM and
// runs them; it skips when not root or when qemu is missing.
package vmtest
