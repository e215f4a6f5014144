package node

import (
	"fmt"
	"net/http"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/ring"
)

// readiness says whether this node serves its partitions now, and if not,
// why (an errcode code and a sentence).
type readiness struct {
	ready     bool
	code, why string
	primaries int
	replicas  int
	leader    string
}

// readiness is GET /ready's test. A node serves when it knows a leader, the
// table exists and has caught up with what this node already acted on
// before a restart, it is an active member that is not leaving, and each
// partition it is primary of passes the engine's own test before it takes
// a write or a read as primary (reconciled for the table's epoch, the
// previous primary's read lease over).
func (ck *ClusterKit) readiness() readiness {
	leader, _ := ck.raft.Leader()
	r := readiness{leader: leader}
	st := ck.raft.State()
	self, member := st.Nodes[ck.cfg.NodeID]
	switch {
	case ck.leaving.Load():
		r.code, r.why = errcode.NotReady, "this node is leaving the cluster"
		return r
	case leader == "":
		r.code, r.why = errcode.NoLeader, "no raft leader is known right now"
		return r
	case !st.Initialized():
		r.code, r.why = errcode.Unavailable, "cluster is not initialised yet"
		return r
	case st.Version < ck.tableFloor:
		r.code, r.why = errcode.NotReady, fmt.Sprintf("partition table at version %d here, behind version %d this node acted on before it restarted; catching up", st.Version, ck.tableFloor)
		return r
	case !member || self.Status != consensus.StatusAlive:
		r.code, r.why = errcode.NotReady, "this node is not recorded as an active member yet"
		return r
	case self.Draining:
		r.code, r.why = errcode.NotReady, "this node is draining: its partitions are moving to other nodes"
		return r
	case self.Store != "" && self.Store != ck.db.ID():
		r.code, r.why = errcode.NotReady, "this node's data directory is new and the cluster still counts the copies of its old one; waiting for the leader to record it"
		return r
	}
	var pending []string
	for _, p := range st.Partitions {
		if p.Primary == "" && len(p.Replicas) == 0 {
			// Right after the bootstrap the table exists before the
			// leader has given its partitions owners: nobody serves yet.
			r.code, r.why = errcode.NotReady, fmt.Sprintf("%s has no owner yet: the partitions are being assigned", ring.PartitionName(p.ID))
			return r
		}
		switch p.Role(ck.cfg.NodeID) {
		case "replica":
			r.replicas++
		case "primary":
			r.primaries++
			if ck.eng.PrimaryReady(p.ID) != nil {
				pending = append(pending, ring.PartitionName(p.ID))
			}
		}
	}
	if len(pending) > 0 {
		r.code = errcode.NotReady
		r.why = fmt.Sprintf("%d of the %d partitions this node leads are not served yet (first: %s: being reconciled for a new epoch, or waiting out the previous primary's read lease)",
			len(pending), r.primaries, pending[0])
		return r
	}
	r.ready = true
	return r
}

// handleReady is GET /ready: 200 while this node serves its partitions, 503
// with the reason otherwise. Load balancers and orchestrators use it to
// decide whether to send traffic; /health only says the process is up.
func (ck *ClusterKit) handleReady(w http.ResponseWriter, r *http.Request) {
	rd := ck.readiness()
	if !rd.ready {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{
			"ready": false, "error": rd.why, "code": rd.code, "node_id": ck.cfg.NodeID,
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"ready": true, "node_id": ck.cfg.NodeID, "leader": rd.leader,
		"primaries": rd.primaries, "replicas": rd.replicas,
	})
}
