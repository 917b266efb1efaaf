// Package ipvssmoke holds the tests that e2e/vm's TestSmoke runs inside the
// VM: they check that the VM's kernel and tools can do what IPVS mode needs
// (IPVS in a namespace, dummy links, ipsets, both iptables backends, IPVS
// NAT to a real server). Outside the VM every test skips.
package ipvssmoke
