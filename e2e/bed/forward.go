package bed

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// forwarder listens on 127.0.0.1:port inside a node namespace and relays each connection
// to target from the root namespace (127.0.0.1:port there, or an external apiserver's
// address), so a kubeconfig for the root's apiserver works unchanged (URL and
// certificate) for a proxy running in the node namespace. Cut and Resume make an
// apiserver outage as the node sees it, whoever started the apiserver.
type forwarder struct {
	ns     *Namespace
	addr   string
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	l      net.Listener // nil while cut
	conns  map[net.Conn]bool
	closed bool
}

func startForwarder(ns *Namespace, port int, target string) (*forwarder, error) {
	f := &forwarder{ns: ns, addr: fmt.Sprintf("127.0.0.1:%d", port), target: target, conns: map[net.Conn]bool{}}
	if err := f.Resume(); err != nil {
		return nil, err
	}
	return f, nil
}

// Resume listens again after Cut (and at start).
func (f *forwarder) Resume() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.l != nil {
		return nil
	}
	l, err := f.ns.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("forwarder listen %s in %s: %w", f.addr, f.ns.Name, err)
	}
	f.l = l
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() { defer f.wg.Done(); f.relay(in, f.target) }()
		}
	}()
	return nil
}

// Cut stops listening and breaks every open relay, as a stopped apiserver does: open
// watches end, new connections are refused.
func (f *forwarder) Cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.l != nil {
		f.l.Close()
		f.l = nil
	}
	for c := range f.conns {
		c.Close()
		delete(f.conns, c)
	}
}

// relay dials from an ordinary goroutine, which runs in the root namespace.
func (f *forwarder) relay(in net.Conn, target string) {
	out, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		in.Close()
		return
	}
	if !f.track(in, out) {
		return
	}
	defer f.untrack(in, out)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	<-done
	<-done
}

func (f *forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.l == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		f.conns[c] = true
	}
	return true
}

func (f *forwarder) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(f.conns, c)
	}
}

// Close stops accepting, cuts open relays and waits for them.
func (f *forwarder) Close() error {
	f.Cut()
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.wg.Wait()
	return nil
}
