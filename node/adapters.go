package node

import (
	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/ring"
)

// tableRouter serves the engine's view of the partition table from the
// local FSM.
type tableRouter struct {
	self string
	fsm  *consensus.FSM
}

var _ engine.Router = (*tableRouter)(nil)

func (t *tableRouter) Self() string { return t.self }

func (t *tableRouter) Version() uint64 { return t.fsm.State().Version }

func (t *tableRouter) Partitions() int { return t.fsm.State().Config.Partitions }

func (t *tableRouter) PartitionOf(key string) int { return keyPartition(t.fsm.State(), key) }

// keyPartition places key by the rule the cluster was bootstrapped with.
func keyPartition(st *consensus.State, key string) int {
	if st.Config.HashTags {
		return ring.PartitionOfTagged(key, st.Config.Partitions)
	}
	return ring.PartitionOf(key, st.Config.Partitions)
}

func (t *tableRouter) MinCopies() int { return t.fsm.State().MinCopies() }

func (t *tableRouter) ClusterID() string { return t.fsm.State().Config.ID }

func (t *tableRouter) ReplicationFactor() int { return t.fsm.State().Config.ReplicationFactor }

func (t *tableRouter) Route(p int) (engine.Route, bool) {
	row, ok := t.fsm.State().Partition(p)
	if !ok {
		return engine.Route{}, false
	}
	return engine.Route{Partition: p, Primary: row.Primary, Replicas: row.Replicas, InSync: row.InSync, Epoch: row.Epoch}, true
}

func (t *tableRouter) Alive(node string) bool {
	n, ok := t.fsm.State().Nodes[node]
	return ok && (n.Status == consensus.StatusAlive || n.Status == consensus.StatusSuspect)
}

func (t *tableRouter) StoreOf(node string) string { return t.fsm.State().Nodes[node].Store }

func (t *tableRouter) Changed() (<-chan struct{}, func()) { return t.fsm.Watch() }

// TableVersion is the partition-table version the KV API reports on every
// answer (kvapi.Info).
func (ck *ClusterKit) TableVersion() uint64 { return ck.raft.State().Version }
