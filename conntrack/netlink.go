package conntrack

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// ErrUnavailable means the kernel offers no conntrack netlink interface:
// the nf_conntrack_netlink (or nfnetlink) module is not loaded or built.
var ErrUnavailable = errors.New("conntrack netlink interface unavailable (is the nf_conntrack_netlink module loaded?)")

const (
	// ctnlSubsys is NFNL_SUBSYS_CTNETLINK, the high byte of the message type.
	ctnlSubsys = 1
	// attempts bounds retries of a table dump interrupted by concurrent
	// changes (EINTR / NLM_F_DUMP_INTR), which a busy node sees routinely.
	attempts = 3
	// socketTimeout keeps a wedged netlink socket from stalling the sync loop.
	socketTimeout = 30 * time.Second
)

// NetlinkHandle is the real Handle: ctnetlink over a NETLINK_NETFILTER socket
// of one network namespace. It lists the table once and deletes each stale
// flow by its original tuple (and zone), so nothing else is touched and the
// table is not dumped again. Safe for concurrent use.
type NetlinkHandle struct {
	mu   sync.Mutex
	sock *nl.SocketHandle
}

// NewNetlinkHandle opens a conntrack handle in the caller's network namespace.
func NewNetlinkHandle() (*NetlinkHandle, error) {
	return NewNetlinkHandleAt(netns.None())
}

// NewNetlinkHandleAt opens a conntrack handle in network namespace ns (the
// caller's when ns is netns.None()); the calling thread is moved back.
func NewNetlinkHandleAt(ns netns.NsHandle) (*NetlinkHandle, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open conntrack netlink socket: %w", classify(err))
	}
	tv := unix.NsecToTimeval(socketTimeout.Nanoseconds())
	if err := errors.Join(s.SetSendTimeout(&tv), s.SetReceiveTimeout(&tv)); err != nil {
		s.Close()
		return nil, fmt.Errorf("set conntrack netlink socket timeouts: %w", err)
	}
	return &NetlinkHandle{sock: &nl.SocketHandle{Socket: s}}, nil
}

// Close releases the socket.
func (n *NetlinkHandle) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sock.Close()
}

func (n *NetlinkHandle) request(family uint8, msgType, flags int, data ...nl.NetlinkRequestData) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(ctnlSubsys<<8|msgType, flags)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: n.sock}
	req.AddData(&nl.Nfgenmsg{NfgenFamily: family, Version: nl.NFNETLINK_V0})
	for _, d := range data {
		req.AddData(d)
	}
	return req
}

// List dumps the family's table, retrying interrupted dumps. When every
// attempt is interrupted it returns what the last dump saw: deleting the
// stale flows we did see beats deleting none on a busy node.
func (n *NetlinkHandle) List(family v1.IPFamily) ([]Flow, error) {
	inet, err := inetFamily(family)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var flows []Flow
	for i := range attempts {
		flows, err = n.dump(inet)
		if err == nil || !errors.Is(err, unix.EINTR) {
			break
		}
		klog.V(2).InfoS("Conntrack table dump interrupted, retrying", "ipFamily", family, "attempt", i+1)
	}
	switch {
	case errors.Is(err, netlink.ErrDumpInterrupted) && len(flows) > 0:
		klog.InfoS("Conntrack table dump kept being interrupted; using a partial list", "ipFamily", family, "flows", len(flows))
	case err != nil:
		return nil, fmt.Errorf("list %s conntrack table: %w", family, classify(err))
	}
	return flows, nil
}

func (n *NetlinkHandle) dump(inet uint8) ([]Flow, error) {
	var flows []Flow
	var bad int
	var badErr error
	req := n.request(inet, nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP)
	err := req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		if len(msg) < nl.SizeofNfgenmsg {
			return true
		}
		f, perr := parseFlow(msg[nl.SizeofNfgenmsg:])
		if perr != nil {
			bad, badErr = bad+1, perr
			return true
		}
		flows = append(flows, f)
		return true
	})
	if bad > 0 {
		klog.ErrorS(badErr, "Skipped conntrack flows that could not be parsed", "count", bad)
	}
	return flows, err
}

// Delete removes each flow by its original tuple. A flow already gone
// (ENOENT: expired, or deleted by someone else) is not counted nor an error.
// One failing flow does not stop the others.
func (n *NetlinkHandle) Delete(family v1.IPFamily, flows []Flow) (int, error) {
	inet, err := inetFamily(family)
	if err != nil {
		return 0, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	deleted, failed := 0, 0
	var firstErr error
	for _, f := range flows {
		if f.Family() != family {
			continue
		}
		_, err := n.request(inet, nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK, deleteAttrs(f)...).
			Execute(unix.NETLINK_NETFILTER, 0)
		switch {
		case err == nil:
			deleted++
		case errors.Is(err, unix.ENOENT):
		default:
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("delete conntrack flow %s: %w", f, classify(err))
			}
		}
	}
	if failed > 0 {
		return deleted, fmt.Errorf("%d of %d %s conntrack deletes failed, first: %w", failed, len(flows), family, firstErr)
	}
	return deleted, nil
}

func inetFamily(family v1.IPFamily) (uint8, error) {
	switch family {
	case v1.IPv4Protocol:
		return unix.AF_INET, nil
	case v1.IPv6Protocol:
		return unix.AF_INET6, nil
	}
	return 0, fmt.Errorf("unknown IP family %q", family)
}

// classify marks the errors a kernel without conntrack netlink gives: no
// nfnetlink at all (EPROTONOSUPPORT on socket()), or nfnetlink without the
// conntrack subsystem (EINVAL/EOPNOTSUPP on the request).
func classify(err error) error {
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}
