package client

import (
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/clusterkit/clusterkit/ring"
)

// clusterJSON is GET /cluster as the management API answers it.
type clusterJSON struct {
	Cluster struct {
		ID           string     `json:"id"`
		Name         string     `json:"name"`
		Version      uint64     `json:"version"`
		Nodes        []nodeJSON `json:"nodes"`
		PartitionMap struct {
			Partitions map[string]partitionJSON `json:"partitions"`
		} `json:"partition_map"`
		Config struct {
			PartitionCount    int `json:"partition_count"`
			ReplicationFactor int `json:"replication_factor"`
			MinInSync         int `json:"min_insync"`
		} `json:"config"`
	} `json:"cluster"`
	HashConfig struct {
		Algorithm string `json:"algorithm"`
		Modulo    int    `json:"modulo"`
		HashTags  bool   `json:"hash_tags"`
	} `json:"hash_config"`
}

type nodeJSON struct {
	ID         string            `json:"id"`
	IP         string            `json:"ip"`
	Name       string            `json:"name"`
	Status     string            `json:"status"`
	KVAddr     string            `json:"kv_addr"`
	RaftAddr   string            `json:"raft_addr"`
	GossipAddr string            `json:"gossip_addr"`
	Since      string            `json:"since"`
	Services   map[string]string `json:"services"`
}

type partitionJSON struct {
	ID         string   `json:"id"`
	Primary    string   `json:"primary_node"`
	Replicas   []string `json:"replica_nodes"`
	InSync     []string `json:"in_sync_replicas"`
	CatchingUp []string `json:"catching_up"`
	Epoch      uint64   `json:"epoch"`
	State      string   `json:"state"`
}

func (p partitionJSON) public() Partition {
	return Partition(p)
}

func (raw *clusterJSON) info() *ClusterInfo {
	cl := raw.Cluster
	out := &ClusterInfo{ID: cl.ID, Name: cl.Name, Version: cl.Version, PartitionCount: cl.Config.PartitionCount,
		ReplicationFactor: cl.Config.ReplicationFactor, MinInSync: cl.Config.MinInSync, HashTags: raw.HashConfig.HashTags}
	for _, n := range cl.Nodes {
		since, _ := time.Parse(time.RFC3339, n.Since)
		out.Members = append(out.Members, Member{ID: n.ID, Name: n.Name, MgmtAddr: n.IP, KVAddr: n.KVAddr, RaftAddr: n.RaftAddr,
			GossipAddr: n.GossipAddr, Status: n.Status, Since: since, Services: n.Services})
	}
	for _, p := range cl.PartitionMap.Partitions {
		out.Partitions = append(out.Partitions, p.public())
	}
	sort.Slice(out.Partitions, func(i, j int) bool {
		a, _ := ring.ParsePartitionName(out.Partitions[i].ID)
		b, _ := ring.ParsePartitionName(out.Partitions[j].ID)
		return a < b
	})
	return out
}

// member is a node as the client routes to it.
type member struct {
	id, mgmt, kv string
	local        bool // on this host: a stale read from it crosses no network
	live         bool
}

// route is one partition's owners.
type route struct {
	primary *member
	inSync  []*member // the in-sync replicas (primary not included)
	epoch   uint64
}

// table is the client's copy of the partition table; it is replaced
// whole, never changed.
type table struct {
	version    uint64
	partitions int
	hashTags   bool
	members    map[string]*member
	live       []*member // live members with a KV address, by id
	routes     []route
}

func (c *Client) newTable(raw *clusterJSON) (*table, error) {
	cl := raw.Cluster
	if raw.HashConfig.Algorithm != "" && raw.HashConfig.Algorithm != ring.HashAlgorithm {
		return nil, fmt.Errorf("the cluster hashes keys with %q; this client knows only %q", raw.HashConfig.Algorithm, ring.HashAlgorithm)
	}
	parts := raw.HashConfig.Modulo
	if parts == 0 {
		parts = cl.Config.PartitionCount
	}
	t := &table{version: cl.Version, partitions: parts, hashTags: raw.HashConfig.HashTags, members: map[string]*member{},
		routes: make([]route, parts)}
	for _, n := range cl.Nodes {
		m := &member{id: n.ID, mgmt: n.IP, kv: n.KVAddr, live: n.Status == "active" || n.Status == "suspect"}
		if host, _, err := net.SplitHostPort(n.KVAddr); err == nil {
			ip := net.ParseIP(host)
			m.local = c.local[host] || (ip != nil && (ip.IsLoopback() || c.local[ip.String()]))
		}
		t.members[n.ID] = m
	}
	for _, n := range cl.Nodes {
		if m := t.members[n.ID]; m.live && m.kv != "" {
			t.live = append(t.live, m)
		}
	}
	if len(t.live) == 0 {
		// Nothing looks alive: try them all rather than nothing.
		for _, n := range cl.Nodes {
			if m := t.members[n.ID]; m.kv != "" {
				t.live = append(t.live, m)
			}
		}
	}
	if len(t.live) == 0 {
		return nil, fmt.Errorf("the cluster lists no member with a KV address")
	}
	for name, p := range cl.PartitionMap.Partitions {
		id, err := ring.ParsePartitionName(name)
		if err != nil || id < 0 || id >= parts {
			continue
		}
		r := route{primary: t.members[p.Primary], epoch: p.Epoch}
		for _, n := range p.InSync {
			if m := t.members[n]; m != nil && n != p.Primary {
				r.inSync = append(r.inSync, m)
			}
		}
		t.routes[id] = r
	}
	return t, nil
}

// partitionOf places key by the cluster's rule (the server's own hash).
func (t *table) partitionOf(key string) int {
	if t.hashTags {
		return ring.PartitionOfTagged(key, t.partitions)
	}
	return ring.PartitionOf(key, t.partitions)
}

// pick chooses the address of r's next attempt; avoid is an address whose
// connection just failed.
func (c *Client) pick(r *request, avoid string) string {
	t := c.table.Load()
	if r.mgmt {
		return c.next(t, avoid, func(m *member) string { return m.mgmt })
	}
	if c.cfg.Routing == RoundRobin || !r.hasKey || t.partitions == 0 {
		return c.next(t, avoid, func(m *member) string { return m.kv })
	}
	rt := t.routes[t.partitionOf(r.key)]
	if r.stale {
		if m := c.nearCopy(rt, avoid); m != nil {
			return m.kv
		}
	}
	if rt.primary != nil && rt.primary.kv != "" && rt.primary.kv != avoid {
		return rt.primary.kv
	}
	// No primary known, or it just failed: any other node forwards the
	// request to whoever owns the partition now.
	return c.next(t, avoid, func(m *member) string { return m.kv })
}

// nearCopy is the copy a stale read takes: an in-sync copy on this host,
// else any in-sync copy, else nil (the primary).
func (c *Client) nearCopy(rt route, avoid string) *member {
	ok := func(m *member) bool { return m != nil && m.live && m.kv != "" && m.kv != avoid }
	if ok(rt.primary) && rt.primary.local {
		return rt.primary
	}
	var any []*member
	for _, m := range rt.inSync {
		if !ok(m) {
			continue
		}
		if m.local {
			return m
		}
		any = append(any, m)
	}
	if len(any) > 0 {
		return any[int(c.rr.Add(1))%len(any)]
	}
	return nil
}

// next is the next live member in turn, skipping avoid when another exists.
func (c *Client) next(t *table, avoid string, addr func(*member) string) string {
	n := len(t.live)
	start := int(c.rr.Add(1) % uint64(n))
	for i := range n {
		if a := addr(t.live[(start+i)%n]); a != "" && a != avoid {
			return a
		}
	}
	if len(c.cfg.Addrs) > 0 && addr(t.live[start]) == "" {
		return c.cfg.Addrs[0]
	}
	return addr(t.live[start])
}
