package bed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Namespace is a named network namespace created by the bed (visible to `ip netns`).
type Namespace struct {
	Name   string
	handle netns.NsHandle
}

// newNamespace creates the named namespace without leaving the calling thread in it.
func newNamespace(name string) (*Namespace, error) {
	var h netns.NsHandle
	err := onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		h, err = netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		if err := netns.Set(orig); err != nil {
			return errThreadTainted{fmt.Errorf("return from netns %s: %w", name, err)}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	registerNamespace(name)
	n := &Namespace{Name: name, handle: h}
	if err := n.linkUp("lo"); err != nil {
		n.delete()
		return nil, err
	}
	return n, nil
}

// delete closes the handle and removes the name; the kernel frees the namespace once no
// process, socket or handle refers to it any more.
func (n *Namespace) delete() error {
	n.handle.Close()
	unregisterNamespace(n.Name)
	if err := netns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	return nil
}

// errThreadTainted marks a failure to switch back to the original namespace: the OS
// thread must then die with its goroutine instead of serving other goroutines.
type errThreadTainted struct{ error }

// onLockedThread runs fn on a fresh goroutine locked to its OS thread. If fn reports a
// tainted thread, the thread stays locked and is destroyed when the goroutine exits.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		var tainted errThreadTainted
		if !errors.As(err, &tainted) {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Do runs fn on an OS thread switched into the namespace. Sockets created by fn belong to
// the namespace for their whole life; so do processes forked by fn. fn must not rely on
// goroutines it starts being in the namespace.
func (n *Namespace) Do(fn func() error) error {
	return onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.Name, err)
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return errThreadTainted{fmt.Errorf("return from netns %s: %w", n.Name, err)}
		}
		return ferr
	})
}

// Listen opens a stream listener inside the namespace.
func (n *Namespace) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket inside the namespace.
func (n *Namespace) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// Dial connects from inside the namespace, giving up after timeout.
func (n *Namespace) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return n.DialContext(ctx, network, addr)
}

// DialContext connects from inside the namespace. The socket is created on the calling
// (namespaced) thread; only the wait for the handshake happens elsewhere.
func (n *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command prepares a command that runs inside the namespace once started with Start.
func (n *Namespace) Command(name string, args ...string) *exec.Cmd {
	return exec.Command(name, args...)
}

// Start starts cmd inside the namespace: the child is forked from a thread switched into
// it, which needs no `ip netns exec` (and so works in a VM without iproute2).
func (n *Namespace) Start(cmd *exec.Cmd) error {
	return n.Do(cmd.Start)
}

// Exec runs a command inside the namespace (bounded by 60 s) and returns its combined
// output.
func (n *Namespace) Exec(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := n.Start(cmd); err != nil {
		return "", fmt.Errorf("start %s in %s: %w", name, n.Name, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, out.String())
	}
	return out.String(), nil
}

// Sysctl writes a /proc/sys value (key like "net.ipv4.ip_forward") inside the namespace.
func (n *Namespace) Sysctl(key, value string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error {
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
		}
		return nil
	})
}

// ReadSysctl reads a /proc/sys value inside the namespace.
func (n *Namespace) ReadSysctl(key string) (string, error) {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	var v string
	err := n.Do(func() error {
		b, err := os.ReadFile(p)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// Netlink returns a route-netlink handle bound to the namespace. Only NETLINK_ROUTE: the
// default family list also opens XFRM, which fails where xfrm_user is not loaded.
func (n *Namespace) Netlink() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(n.handle, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.Name, err)
	}
	return h, nil
}

func (n *Namespace) linkUp(name string) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", name, n.Name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", name, n.Name, err)
	}
	return nil
}
