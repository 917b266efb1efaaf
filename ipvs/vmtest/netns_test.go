package vmtest

import (
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// sh runs a command line (in namespace ns unless "") and fails t on error.
func sh(t *testing.T, ns string, line string) {
	t.Helper()
	args := strings.Fields(line)
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// addNetNS creates a namespace deleted in t.Cleanup, with lo up.
func addNetNS(t *testing.T, name string) string {
	t.Helper()
	sh(t, "", "ip netns add "+name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	sh(t, name, "ip link set lo up")
	return "/run/netns/" + name
}

// addPod makes namespace pod with address ip, reached from node over a
// veth with a host route and proxy ARP (as Calico does).
func addPod(t *testing.T, node, pod, ip string) {
	t.Helper()
	addNetNS(t, pod)
	host := "v" + pod
	sh(t, node, fmt.Sprintf("ip link add %s type veth peer name eth0 netns %s", host, pod))
	sh(t, node, "ip link set "+host+" up")
	sh(t, node, "sysctl -qw net.ipv4.conf."+host+".proxy_arp=1")
	sh(t, node, fmt.Sprintf("ip route add %s/32 dev %s", ip, host))
	sh(t, pod, fmt.Sprintf("ip addr add %s/32 dev eth0", ip))
	sh(t, pod, "ip link set eth0 up")
	sh(t, pod, "ip route add 169.254.1.1 dev eth0")
	sh(t, pod, "ip route add default via 169.254.1.1")
}

// inNS runs f on a thread switched into namespace name. Sockets created in
// f stay in that namespace and may be used from anywhere afterwards.
func inNS(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with the goroutine.
		runtime.LockOSThread()
		h, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// serveEcho answers every TCP line and UDP datagram with "name\n", in pod.
func serveEcho(t *testing.T, pod, addr, name string) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	if err := inNS(pod, func() (err error) {
		if ln, err = net.Listen("tcp", addr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", pod, err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					c.SetReadDeadline(time.Now().Add(2 * time.Minute))
					if _, err := c.Read(buf); err != nil {
						return
					}
					if _, err := c.Write([]byte(name + "\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name+"\n"), from)
		}
	}()
}

// dial connects from namespace ns.
func dial(ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(ns, func() (err error) {
		c, err = net.DialTimeout(network, addr, 2*time.Second)
		return err
	})
	return c, err
}

// ask sends one line on c and returns the answer.
func ask(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("hi\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// hits sends n requests, each on a new connection, from ns to addr and
// counts the answers by pod name; failures count under "error".
func hits(ns, network, addr string, n int) map[string]int {
	out := map[string]int{}
	for range n {
		c, err := dial(ns, network, addr)
		if err != nil {
			out["error"]++
			continue
		}
		who, err := ask(c)
		c.Close()
		if err != nil {
			out["error"]++
			continue
		}
		out[who]++
	}
	return out
}
