package datapath

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"golang.org/x/sys/unix"
)

// SCTP helpers over raw sockets (Go's net has no SCTP): an echo server that answers
// every message of an association, one-shot requests, and a kept association for the
// conntrack scenarios.

// sctpRequire skips the scenario when n's kernel cannot open SCTP sockets: the host
// kernel of the test machine has no SCTP, the VM kernel (make test-vm) has.
func sctpRequire(t *testing.T, n *bed.Node) {
	t.Helper()
	err := n.NS.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
		if err == nil {
			unix.Close(fd)
		}
		return err
	})
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT) {
		t.Skipf("this kernel has no SCTP sockets (%v); the SCTP scenarios run in the VM (make test-vm)", err)
	}
	if err != nil {
		t.Fatalf("probe SCTP in %s: %v", n.Short, err)
	}
}

// sctpServe runs an SCTP echo on port in pod's namespace: each message of each
// association gets one JSON bed.Answer naming the pod and the source seen.
func sctpServe(t *testing.T, p *bed.Pod, port int) {
	t.Helper()
	var fd int
	err := p.NS.Do(func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP); err != nil {
			return fmt.Errorf("sctp socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("sctp bind :%d: %w", port, err)
		}
		if err := unix.Listen(fd, 64); err != nil {
			unix.Close(fd)
			return fmt.Errorf("sctp listen: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", p.Name, err)
	}
	var stop atomic.Bool
	var conns sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			// Poll with a bound, so the loop sees stop without relying on close waking accept.
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(pfd, 200); err != nil || n == 0 {
				continue
			}
			cfd, from, err := unix.Accept(fd)
			if err != nil {
				continue
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				sctpAnswer(cfd, p.Name, port, from, &stop)
			}()
		}
	}()
	t.Cleanup(func() {
		stop.Store(true)
		<-done
		conns.Wait()
		unix.Close(fd)
	})
}

// sctpAnswer answers each message on fd until the peer closes, goes quiet for
// RequestTimeout, or the server stops.
func sctpAnswer(fd int, pod string, port int, from unix.Sockaddr, stop *atomic.Bool) {
	defer unix.Close(fd)
	setSCTPTimeouts(fd, bed.RequestTimeout)
	src := ""
	if sa, ok := from.(*unix.SockaddrInet4); ok {
		src = svcAddr(net.IP(sa.Addr[:]).String(), int32(sa.Port))
	}
	answer, _ := json.Marshal(bed.Answer{Pod: pod, Source: src, Port: port})
	buf := make([]byte, 512)
	for !stop.Load() {
		if n, err := unix.Read(fd, buf); err != nil || n == 0 {
			return
		}
		if err := unix.Sendto(fd, answer, unix.MSG_NOSIGNAL, nil); err != nil {
			return
		}
	}
}

func setSCTPTimeouts(fd int, d time.Duration) {
	tv := unix.NsecToTimeval(int64(d))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
}

// sctpRequest opens one SCTP association from ns to ip:port, sends a message and
// decodes the answer; every blocking step is bounded by timeout.
func sctpRequest(ns *bed.Namespace, ip string, port int, timeout time.Duration) (bed.Answer, error) {
	f, err := sctpDial(ns, ip, port, timeout)
	if err != nil {
		return bed.Answer{}, err
	}
	defer f.Close()
	return f.Exchange(timeout)
}

// sctpCount makes n one-shot requests (n associations) to ip:port from ns.
func sctpCount(ns *bed.Namespace, ip string, port, n int) bed.Counts {
	counts := bed.Counts{ByPod: map[string]int{}, Sources: map[string]int{}}
	for i := 0; i < n; i++ {
		ans, err := sctpRequest(ns, ip, port, bed.RequestTimeout)
		if err != nil {
			counts.Failures++
			if len(counts.Errors) < 5 {
				counts.Errors = append(counts.Errors, err.Error())
			}
			continue
		}
		counts.ByPod[ans.Pod]++
		counts.Sources[ans.SourceIP()]++
	}
	return counts
}

// sctpFlow is one SCTP association kept open for several exchanges.
type sctpFlow struct{ fd int }

// sctpDial connects an association from ns to ip:port within timeout.
func sctpDial(ns *bed.Namespace, ip string, port int, timeout time.Duration) (*sctpFlow, error) {
	dst := &unix.SockaddrInet4{Port: port}
	copy(dst.Addr[:], net.ParseIP(ip).To4())
	var fd int
	err := ns.Do(func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP); err != nil {
			return fmt.Errorf("sctp socket: %w", err)
		}
		setSCTPTimeouts(fd, timeout)
		if err := unix.Connect(fd, dst); err != nil {
			unix.Close(fd)
			return fmt.Errorf("sctp connect %s:%d: %w", ip, port, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &sctpFlow{fd: fd}, nil
}

// Exchange sends one message and reads one answer, each step bounded by timeout. A
// late answer to an earlier message may be read instead; only who answered matters.
func (f *sctpFlow) Exchange(timeout time.Duration) (bed.Answer, error) {
	var a bed.Answer
	setSCTPTimeouts(f.fd, timeout)
	if err := unix.Sendto(f.fd, []byte("ping"), unix.MSG_NOSIGNAL, nil); err != nil {
		return a, fmt.Errorf("sctp send: %w", err)
	}
	buf := make([]byte, 512)
	n, err := unix.Read(f.fd, buf)
	if err != nil {
		return a, fmt.Errorf("sctp receive: %w", err)
	}
	if n == 0 {
		return a, errors.New("sctp receive: association closed")
	}
	return a, json.Unmarshal(buf[:n], &a)
}

func (f *sctpFlow) Close() error { return unix.Close(f.fd) }
