package render

import (
	"fmt"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
)

// IPTablesOptions are the data plane options svcproxy's defaults give for
// cfg (as cmd/svcproxy builds them from a default configuration). NodePorts
// are served on every address: a render knows no interfaces.
func IPTablesOptions(cfg Config) (iptables.Options, error) {
	opts := iptables.DefaultOptions()
	opts.MasqueradeAll = cfg.MasqueradeAll
	opts.MasqueradeRandomFully = true
	opts.LocalhostNodePorts = cfg.Family == v1.IPv4Protocol
	d, err := cfg.LocalDetector()
	if err != nil {
		return opts, err
	}
	opts.LocalDetector = d
	return opts, nil
}

// IPTables returns the tables (filter, nat, mangle) as the kernel would
// hold them after the data plane's first, full sync of snap: iptables-save
// text including the jumps from the built-in chains, which
// `iptables-restore` loads into an empty namespace and the tracer follows.
func IPTables(snap *proxier.Snapshot, cfg Config) ([]byte, error) {
	opts, err := IPTablesOptions(cfg)
	if err != nil {
		return nil, err
	}
	k := iptables.NewFake(snap.Family)
	if _, err := iptables.NewProxier(k, opts).Sync(snap); err != nil {
		return nil, fmt.Errorf("sync %s rules: %w", snap.Family, err)
	}
	return k.SaveAll(), nil
}

// IPTablesRestore returns exactly the iptables-restore input of a full
// sync (fed with --noflush; the jumps from built-in chains are not in it:
// the data plane ensures them separately).
func IPTablesRestore(snap *proxier.Snapshot, cfg Config) ([]byte, error) {
	opts, err := IPTablesOptions(cfg)
	if err != nil {
		return nil, err
	}
	rs := iptables.NewBuilder(snap.Family, opts).Build(snap, iptables.BuildInput{Full: true})
	return append([]byte(nil), rs.Bytes()...), nil
}
