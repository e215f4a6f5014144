package node

import (
	"context"
	"errors"
	"slices"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/ring"
)

// ErrNotInitialized is returned before the cluster has a partition table.
var ErrNotInitialized = errors.New("cluster is not initialised yet")

// ErrNoPrimary is returned for a key whose partition has no primary right
// now (not yet assigned, or its primary failed and no in-sync copy was
// left to promote).
var ErrNoPrimary = errors.New("the key's partition has no primary right now")

// Node describes one cluster member to library users.
type Node struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// IP is the member's management address (host:port), as in /cluster.
	IP string `json:"ip"`
	// KVAddr is the member's KV API address (host:port).
	KVAddr string `json:"kv_addr"`
	// Status is "active", "suspect", "dead" or "left".
	Status string `json:"status"`
	// Services is the member's service metadata (its SERVICES), by name:
	// where the embedding program on that node serves, e.g.
	// {"http": "10.0.0.5:7000"}. Empty, never nil, when it has none.
	Services map[string]string `json:"services"`
}

func (ck *ClusterKit) nodeRef(st *consensus.State, id string) Node {
	n, ok := st.Nodes[id]
	if !ok {
		return Node{ID: id, Status: "unknown", Services: map[string]string{}}
	}
	return Node{ID: n.ID, Name: n.Name, IP: n.MgmtAddr, KVAddr: n.KVAddr, Status: apiStatus(n.Status),
		Services: decodeServices(n.Services)}
}

// Partition is one row of the partition table, for library users.
type Partition struct {
	// ID is the partition's name, "partition-N"; Number is N.
	ID     string
	Number int
	// Primary serves the partition's reads and orders its writes; its ID
	// is empty when the partition has no primary right now.
	Primary Node
	// Replicas are the other owners, in preference order.
	Replicas []Node
	// InSync are the IDs of the replicas holding every acknowledged write;
	// the others are still receiving their copy.
	InSync []string
	// Epoch grows by one every time the primary changes.
	Epoch uint64
}

// GetPartition returns the partition key belongs to, as the table stands on
// this node now.
func (ck *ClusterKit) GetPartition(key string) (Partition, error) {
	st := ck.raft.State()
	if !st.Initialized() {
		return Partition{}, ErrNotInitialized
	}
	p, _ := st.Partition(keyPartition(st, key))
	out := Partition{ID: ring.PartitionName(p.ID), Number: p.ID, InSync: slices.Clone(p.InSync), Epoch: p.Epoch,
		Replicas: make([]Node, 0, len(p.Replicas))}
	if p.Primary != "" {
		out.Primary = ck.nodeRef(st, p.Primary)
	}
	for _, r := range p.Replicas {
		out.Replicas = append(out.Replicas, ck.nodeRef(st, r))
	}
	return out, nil
}

// GetPrimary returns the node that serves key: ErrNotInitialized before the
// table exists, ErrNoPrimary while its partition has none.
func (ck *ClusterKit) GetPrimary(key string) (Node, error) {
	p, err := ck.GetPartition(key)
	if err != nil {
		return Node{}, err
	}
	if p.Primary.ID == "" {
		return Node{}, ErrNoPrimary
	}
	return p.Primary, nil
}

// GetReplicas returns key's replicas (its owners other than the primary),
// in preference order; empty with a replication factor of 1.
func (ck *ClusterKit) GetReplicas(key string) ([]Node, error) {
	p, err := ck.GetPartition(key)
	if err != nil {
		return nil, err
	}
	return p.Replicas, nil
}

// IsPrimary reports whether this node is key's primary now (false before
// the table exists).
func (ck *ClusterKit) IsPrimary(key string) bool {
	_, role, _, err := ck.AmIResponsibleFor(key)
	return err == nil && role == "primary"
}

// IsReplica reports whether this node holds a replica of key now.
func (ck *ClusterKit) IsReplica(key string) bool {
	_, role, _, err := ck.AmIResponsibleFor(key)
	return err == nil && role == "replica"
}

// Members returns every member the cluster has recorded (whatever its
// status), ordered by ID.
func (ck *ClusterKit) Members() []Node {
	st := ck.raft.State()
	out := make([]Node, 0, len(st.Nodes))
	for _, n := range st.SortedNodes() {
		out = append(out, ck.nodeRef(st, n.ID))
	}
	return out
}

// GetMyNodeID returns this node's ID (NODE_ID).
func (ck *ClusterKit) GetMyNodeID() string { return ck.cfg.NodeID }

// GetNodesForKey returns the nodes that store key: the primary first, then
// the replicas, as the partition table stands on this node now.
func (ck *ClusterKit) GetNodesForKey(key string) ([]Node, error) {
	st := ck.raft.State()
	if !st.Initialized() {
		return nil, ErrNotInitialized
	}
	p, _ := st.Partition(keyPartition(st, key))
	var out []Node
	if p.Primary != "" {
		out = append(out, ck.nodeRef(st, p.Primary))
	}
	for _, r := range p.Replicas {
		out = append(out, ck.nodeRef(st, r))
	}
	return out, nil
}

// AmIResponsibleFor reports whether this node stores key, in which role
// ("primary" or "replica"; "" when it does not), and all of the key's nodes.
func (ck *ClusterKit) AmIResponsibleFor(key string) (ok bool, role string, nodes []Node, err error) {
	nodes, err = ck.GetNodesForKey(key)
	if err != nil {
		return false, "", nil, err
	}
	st := ck.raft.State()
	p, _ := st.Partition(keyPartition(st, key))
	role = p.Role(ck.cfg.NodeID)
	return role != "", role, nodes, nil
}

// PartitionChange reports a partition whose owners or epoch changed.
type PartitionChange struct {
	Partition string
	Epoch     uint64
	Primary   string
	Replicas  []string
	// OldPrimary and OldReplicas are the previous assignment.
	OldPrimary  string
	OldReplicas []string
}

// WatchPartitions calls fn, from one goroutine, for every partition change
// this node applies until ctx ends. Changes that happen in quick succession
// may be reported together as their end result.
func (ck *ClusterKit) WatchPartitions(ctx context.Context, fn func(PartitionChange)) {
	ch, stop := ck.raft.FSM().Watch()
	prev := ck.raft.State()
	go func() {
		defer stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
			}
			cur := ck.raft.State()
			for i, p := range cur.Partitions {
				var old consensus.Partition
				if i < len(prev.Partitions) {
					old = prev.Partitions[i]
				}
				if old.Primary == p.Primary && old.Epoch == p.Epoch && slices.Equal(old.Replicas, p.Replicas) {
					continue
				}
				fn(PartitionChange{Partition: ring.PartitionName(p.ID), Epoch: p.Epoch, Primary: p.Primary,
					Replicas: slices.Clone(p.Replicas), OldPrimary: old.Primary, OldReplicas: slices.Clone(old.Replicas)})
			}
			prev = cur
		}
	}()
}
