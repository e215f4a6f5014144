package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/membership"
	"github.com/clusterkit/clusterkit/placement"
)

// maxVoters caps the Raft voters; further nodes join as non-voters, which
// receive the log but do not slow down commits.
const maxVoters = 5

// reconcileInterval is the period of the leader's full reconcile pass; it
// also catches gossip events that were dropped and failover graces that
// expire with no new event.
const reconcileInterval = 500 * time.Millisecond

// monitorLeadership runs the leader loop while this node leads Raft
// (Consul's pattern: leadership from raft's NotifyCh, one loop per term).
func (ck *ClusterKit) monitorLeadership(ctx context.Context) {
	var stop context.CancelFunc
	done := make(chan struct{})
	close(done)
	for {
		select {
		case <-ctx.Done():
			if stop != nil {
				stop()
				<-done
			}
			return
		case leader := <-ck.raft.LeaderNotify():
			if leader && stop == nil {
				ck.log.Info("gained raft leadership; starting the reconcile loop")
				var lctx context.Context
				lctx, stop = context.WithCancel(ctx)
				done = make(chan struct{})
				go func() {
					defer close(done)
					ck.leaderLoop(lctx)
				}()
			} else if !leader && stop != nil {
				ck.log.Info("lost raft leadership; stopping the reconcile loop")
				stop()
				<-done
				stop = nil
			}
		}
	}
}

// leaderLoop reconciles gossip membership against the FSM until ctx ends.
func (ck *ClusterKit) leaderLoop(ctx context.Context) {
	// Everything committed by earlier leaders must be applied before this
	// node trusts its FSM.
	for {
		err := ck.raft.Barrier(ctx)
		if err == nil {
			break
		}
		ck.log.Warn("barrier failed", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	r := &reconciler{ck: ck, firstSeen: map[string]time.Time{}, start: time.Now()}
	t := time.NewTicker(reconcileInterval)
	defer t.Stop()
	for {
		if err := r.pass(ctx); err != nil && ctx.Err() == nil {
			ck.log.Warn("reconcile pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ck.reconcileCh:
		case <-t.C:
		}
	}
}

type reconciler struct {
	ck    *ClusterKit
	start time.Time
	// firstSeen remembers when a node the FSM knows was first found missing
	// from gossip (a member that died before this leader started).
	firstSeen map[string]time.Time
}

func statusOf(s membership.State) consensus.NodeStatus {
	switch s {
	case membership.Suspect:
		return consensus.StatusSuspect
	case membership.Dead:
		return consensus.StatusDead
	case membership.Left:
		return consensus.StatusLeft
	}
	return consensus.StatusAlive
}

func (r *reconciler) apply(ctx context.Context, t consensus.CommandType, body any) error {
	cmd, err := consensus.Encode(t, body)
	if err != nil {
		return err
	}
	_, err = r.ck.raft.Apply(ctx, cmd)
	return err
}

// pass is one idempotent reconcile: it reads the FSM first and proposes only
// what differs.
func (r *reconciler) pass(ctx context.Context) error {
	ck := r.ck
	st := ck.raft.State()
	if !st.Initialized() {
		id := make([]byte, 8)
		_, _ = rand.Read(id)
		if err := r.apply(ctx, consensus.CmdInit, consensus.InitCmd{Config: consensus.ClusterConfig{
			ID: hex.EncodeToString(id), Name: ck.cfg.ClusterName,
			Partitions: ck.cfg.Partitions, ReplicationFactor: ck.cfg.ReplicationFactor,
			MinInSync: ck.cfg.MinInSync, HashTags: true,
		}}); err != nil {
			return err
		}
		ck.log.Info("cluster initialised", "name", ck.cfg.ClusterName, "partitions", ck.cfg.Partitions,
			"replication_factor", ck.cfg.ReplicationFactor, "min_insync", ck.cfg.MinInSync, "hash_tags", true)
	}
	now := time.Now()
	var errs []error

	// 1. Record members and their health.
	seen := map[string]bool{}
	for _, m := range ck.members.Members() {
		seen[m.Meta.ID] = true
		want := consensus.NodeInfo{ID: m.Meta.ID, Name: m.Meta.Name, MgmtAddr: m.Meta.MgmtAddr,
			KVAddr: m.Meta.KVAddr, RaftAddr: m.Meta.RaftAddr, GossipAddr: m.Meta.GossipAddr, Status: statusOf(m.State),
			Incarnation: m.Meta.Incarnation, Services: m.Meta.Services, Store: m.Meta.Store}
		have, ok := ck.raft.State().Nodes[want.ID]
		if !ok && (want.Status == consensus.StatusLeft || want.Status == consensus.StatusDead) {
			continue // already forgotten (or never known): nothing to record
		}
		if ok && have.Status == want.Status {
			want.Since = have.Since
		} else {
			want.Since = now
		}
		// A drain outlives gossip noise, but not a restart: a node that
		// comes back after being down, or with a new incarnation (a
		// restart too quick for anyone to see it down, as when a whole
		// cluster is stopped and started), is a new process that did not
		// ask to leave.
		want.Draining = ok && have.Draining && have.Incarnation == want.Incarnation &&
			!(have.Status != consensus.StatusAlive && want.Status == consensus.StatusAlive)
		want.Removing = want.Draining && have.Removing
		if ok && have == want {
			continue
		}
		if ok && have.Status == consensus.StatusLeft && want.Status == consensus.StatusDead {
			continue // memberlist reports a left node as dead once it is reaped
		}
		if err := r.apply(ctx, consensus.CmdUpsertNode, consensus.UpsertNodeCmd{Node: want}); err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok || have.Status != want.Status {
			ck.log.Info("node health recorded", "node", want.ID, "status", want.Status)
		}
		if ok && have.Store != "" && want.Store != "" && have.Store != want.Store {
			ck.log.Warn("node came back with a new data directory; its old copies no longer count, and the partitions it led moved to in-sync replicas",
				"node", want.ID, "old_store", have.Store, "store", want.Store)
		}
	}
	// A node the FSM knows but gossip has never shown this leader: give
	// gossip time to converge, then treat it as dead.
	for id, n := range ck.raft.State().Nodes {
		if seen[id] || n.Status == consensus.StatusDead || n.Status == consensus.StatusLeft {
			delete(r.firstSeen, id)
			continue
		}
		if _, ok := r.firstSeen[id]; !ok {
			r.firstSeen[id] = now
		}
		if now.Sub(r.firstSeen[id]) > 5*time.Second+ck.cfg.FailoverGrace {
			n.Status, n.Since = consensus.StatusDead, now
			if err := r.apply(ctx, consensus.CmdUpsertNode, consensus.UpsertNodeCmd{Node: n}); err != nil {
				errs = append(errs, err)
			}
			ck.log.Warn("node unknown to gossip; recorded as dead", "node", id)
		}
	}

	// 2. Raft membership follows the recorded health.
	if err := r.reconcileRaft(ctx); err != nil {
		errs = append(errs, err)
	}

	// 3. Partition table.
	st = ck.raft.State()
	if rows := placement.Plan(st, now, ck.cfg.FailoverGrace); len(rows) > 0 {
		err := r.apply(ctx, consensus.CmdSetPartition, consensus.SetPartitionsCmd{ExpectVersion: st.Version, Partitions: rows})
		switch {
		case errors.Is(err, consensus.ErrStaleVersion):
			ck.nudgeReconcile() // the table moved under us; recompute at once
		case err != nil:
			errs = append(errs, err)
		default:
			for _, p := range rows {
				old, _ := st.Partition(p.ID)
				ck.log.Info("partition assignment changed", "partition", p.ID, "epoch", p.Epoch,
					"primary", p.Primary, "replicas", p.Replicas, "in_sync", p.InSync,
					"old_primary", old.Primary, "old_epoch", old.Epoch)
			}
		}
	}

	// 4. Forget nodes that left once no partition names them.
	st = ck.raft.State()
	for id, n := range st.Nodes {
		if n.Status != consensus.StatusLeft || ownedCount(st, id) > 0 {
			continue
		}
		if err := r.apply(ctx, consensus.CmdRemoveNode, consensus.RemoveNodeCmd{ID: id}); err != nil {
			errs = append(errs, err)
		} else {
			ck.log.Info("node left the cluster and was removed", "node", id)
		}
	}
	return errors.Join(errs...)
}

// reconcileRaft adds live nodes to the Raft configuration (voters up to
// maxVoters) and removes nodes that left.
func (r *reconciler) reconcileRaft(ctx context.Context) error {
	ck := r.ck
	servers, err := ck.raft.Servers()
	if err != nil {
		return err
	}
	have := map[string]consensus.Server{}
	voters := 0
	for _, s := range servers {
		have[s.ID] = s
		if s.Voter {
			voters++
		}
	}
	var errs []error
	for _, n := range ck.raft.State().SortedNodes() {
		s, in := have[n.ID]
		switch n.Status {
		case consensus.StatusAlive:
			if in && s.Address == n.RaftAddr {
				continue
			}
			// Re-adding a known server with a new address updates it (a
			// container restarted with a new IP).
			voter := (in && s.Voter) || voters < maxVoters
			if err := ck.raft.AddServer(ctx, n.ID, n.RaftAddr, voter); err != nil {
				errs = append(errs, err)
				continue
			}
			if !in && voter {
				voters++
			}
			ck.log.Info("raft server added", "node", n.ID, "addr", n.RaftAddr, "voter", voter)
		case consensus.StatusLeft:
			if !in || n.ID == ck.cfg.NodeID {
				continue
			}
			// Never shrink the voters below three on a leave: when a whole
			// cluster is stopped (every node leaves at once) removing them
			// would leave one voter, and if that node did not come back no
			// leader could ever be elected. A left voter counts against the
			// quorum until it returns.
			// An operator's leave (Removing) does take the vote: the
			// operator means the cluster to be smaller. The leaving node
			// waits for that before it stops (shutdown), so the change
			// can commit even when it is one of two voters. The last
			// voter is never removed.
			if s.Voter && (voters <= 1 || (voters <= 3 && !n.Removing)) {
				continue
			}
			if err := ck.raft.RemoveServer(ctx, n.ID); err != nil {
				errs = append(errs, err)
				continue
			}
			if s.Voter {
				voters--
			}
			ck.log.Info("raft server removed", "node", n.ID)
		}
	}
	return errors.Join(errs...)
}
