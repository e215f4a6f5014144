package consensus

import (
	"slices"
	"time"
)

// NodeStatus is the health the leader last recorded for a node.
type NodeStatus string

// Node statuses, as shown by the management API.
const (
	StatusAlive   NodeStatus = "alive"
	StatusSuspect NodeStatus = "suspect"
	StatusDead    NodeStatus = "dead"
	StatusLeft    NodeStatus = "left"
)

// NodeInfo is what the cluster knows about one member.
type NodeInfo struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	MgmtAddr   string     `json:"mgmt_addr"`
	KVAddr     string     `json:"kv_addr"`
	RaftAddr   string     `json:"raft_addr"`
	GossipAddr string     `json:"gossip_addr"`
	Status     NodeStatus `json:"status"`
	// Draining marks a node that is leaving gracefully: it keeps serving
	// its partitions until each has moved to other nodes.
	Draining bool `json:"draining,omitempty"`
	// Removing marks a draining node an operator asked to leave for good
	// (POST /cluster/leave): once it has left, the leader takes its Raft
	// vote away too, so that the cluster can shrink below three voters.
	// A node that is only stopped (SIGTERM) keeps its vote.
	Removing bool `json:"removing,omitempty"`
	// Incarnation is the node's process incarnation (membership.Meta):
	// a drain belongs to the process that asked for it.
	Incarnation string `json:"incarnation,omitempty"`
	// Services is the node's service metadata, as gossiped in
	// membership.Meta ("name=host:port,..." sorted by name; empty when the
	// node has none or predates it). A string keeps NodeInfo comparable.
	Services string `json:"services,omitempty"`
	// Store is the identity of the node's data directory, as gossiped in
	// membership.Meta. When a node comes back with another one, the copies
	// it held are gone: applying that change takes the node out of every
	// in-sync set (see applyUpsertNode). Empty for nodes that predate it.
	Store string `json:"store,omitempty"`
	// Since is when Status last changed, as stamped by the leader that
	// proposed the change (so every replica of the FSM stores the same value).
	Since time.Time `json:"since"`
}

// Partition is one row of the partition table.
//
// Primary serves reads and orders writes. Replicas are the other owners in
// preference order. InSync is the subset of Replicas known to hold every
// write the primary acknowledged in this Epoch; only they are waited for on
// a write and only they may be promoted. Epoch grows by one every time the
// primary changes and fences off requests addressed to an older primary.
type Partition struct {
	ID       int      `json:"id"`
	Primary  string   `json:"primary"`
	Replicas []string `json:"replicas"`
	InSync   []string `json:"in_sync"`
	Epoch    uint64   `json:"epoch"`
}

// IsInSync reports whether node is a replica in the in-sync set.
func (p Partition) IsInSync(node string) bool { return slices.Contains(p.InSync, node) }

// Owns reports whether node is the primary or one of the replicas.
func (p Partition) Owns(node string) bool {
	return p.Primary == node || slices.Contains(p.Replicas, node)
}

// Role returns "primary", "replica" or "" for node.
func (p Partition) Role(node string) string {
	switch {
	case p.Primary == node:
		return "primary"
	case slices.Contains(p.Replicas, node):
		return "replica"
	}
	return ""
}

func (p Partition) clone() Partition {
	p.Replicas = slices.Clone(p.Replicas)
	p.InSync = slices.Clone(p.InSync)
	return p
}

// ClusterConfig is fixed when the cluster is bootstrapped.
type ClusterConfig struct {
	ID                string `json:"id"`
	Name              string `json:"name"`
	Partitions        int    `json:"partitions"`
	ReplicationFactor int    `json:"replication_factor"`
	// MinInSync is the copy floor; 0 (a cluster bootstrapped before it
	// existed) means DefaultMinInSync.
	MinInSync int `json:"min_insync,omitempty"`
	// HashTags: a key holding "{…}" is placed by the text inside its first
	// braces (ring.PartitionOfTagged). Clusters bootstrapped before hash
	// tags keep hashing whole keys.
	HashTags bool `json:"hash_tags,omitempty"`
}

// DefaultMinInSync is the copy floor of a cluster that did not set one.
const DefaultMinInSync = 2

// MinCopies is the effective copy floor: MinInSync, but never more than
// the replication factor or the number of members that have not left, so
// a one-node cluster writes with one copy while a three-node cluster that
// has lost two nodes refuses writes.
func (s *State) MinCopies() int {
	floor := s.Config.MinInSync
	if floor == 0 {
		floor = DefaultMinInSync
	}
	members := 0
	for _, n := range s.Nodes {
		if n.Status != StatusLeft {
			members++
		}
	}
	return max(1, min(floor, s.Config.ReplicationFactor, members))
}

// State is the replicated cluster metadata. A *State handed out by the Store
// is immutable: every change builds a new one (copy-on-write), so readers on
// the request path never lock and never see a half-applied command.
type State struct {
	Config     ClusterConfig       `json:"config"`
	Nodes      map[string]NodeInfo `json:"nodes"`
	Partitions []Partition         `json:"partitions"`
	// Version grows by one with every change to the state and never goes
	// backwards; the leader uses it for optimistic concurrency.
	Version uint64 `json:"version"`
	// Tokens are the client credentials, by the hash of their secret.
	Tokens map[string]Token `json:"tokens,omitempty"`
	// KVAuth makes the KV API deny a request without a token whose scope
	// covers its key.
	KVAuth bool `json:"kv_auth,omitempty"`
}

// Initialized reports whether the bootstrap command has been applied.
func (s *State) Initialized() bool { return s != nil && s.Config.Partitions > 0 }

// Partition returns row id, or false if there is no such partition.
func (s *State) Partition(id int) (Partition, bool) {
	if s == nil || id < 0 || id >= len(s.Partitions) {
		return Partition{}, false
	}
	return s.Partitions[id], true
}

// SortedNodes returns the nodes ordered by ID.
func (s *State) SortedNodes() []NodeInfo {
	out := make([]NodeInfo, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b NodeInfo) int {
		if c := compareNatural(a.ID, b.ID); c != 0 {
			return c
		}
		return 0
	})
	return out
}

func (s *State) clone() *State {
	c := &State{Config: s.Config, Version: s.Version, Nodes: make(map[string]NodeInfo, len(s.Nodes)), KVAuth: s.KVAuth}
	if s.Tokens != nil {
		c.Tokens = make(map[string]Token, len(s.Tokens))
		for h, t := range s.Tokens {
			c.Tokens[h] = t
		}
	}
	for k, v := range s.Nodes {
		c.Nodes[k] = v
	}
	c.Partitions = make([]Partition, len(s.Partitions))
	for i, p := range s.Partitions {
		c.Partitions[i] = p.clone()
	}
	return c
}

// compareNatural orders "node-2" before "node-10".
func compareNatural(a, b string) int {
	for a != "" && b != "" {
		da, ra := splitDigits(a)
		db, rb := splitDigits(b)
		if da != "" && db != "" {
			if len(da) != len(db) {
				return len(da) - len(db)
			}
			if da != db {
				if da < db {
					return -1
				}
				return 1
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func splitDigits(s string) (digits, rest string) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i], s[i:]
}
