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
// certificate) for a proxy running in the node namespace.
type forwarder struct {
	l     net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func startForwarder(ns *Namespace, port int, target string) (*forwarder, error) {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("forwarder listen %s in %s: %w", addr, ns.Name, err)
	}
	f := &forwarder{l: l, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() { defer f.wg.Done(); f.relay(in, target) }()
		}
	}()
	return f, nil
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
	if f.conns == nil {
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
	err := f.l.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
	return err
}
