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
}

func (ck *ClusterKit) nodeRef(st *consensus.State, id string) Node {
	n, ok := st.Nodes[id]
	if !ok {
		return Node{ID: id, Status: "unknown"}
	}
	return Node{ID: n.ID, Name: n.Name, IP: n.MgmtAddr, KVAddr: n.KVAddr, Status: apiStatus(n.Status)}
}

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
