package node

import (
	"context"
	"fmt"
	"time"

	"github.com/clusterkit/clusterkit/consensus"
)

// DefaultDrainTimeout bounds how long a graceful leave waits for this
// node's partitions to move elsewhere.
const DefaultDrainTimeout = 30 * time.Second

// Drain hands this node's partitions to the other nodes before it leaves:
// it asks the Raft leader to mark it draining, so the leader stops choosing
// it as an owner, moves each partition's primary role to an in-sync copy
// elsewhere, adds replacement replicas (copied while this node keeps
// serving), and releases this node once they are in sync. Drain returns when
// no partition names this node any more, or with ctx's error. With no other
// live node to take over, there is nothing to hand over and it returns at
// once.
//
// After POST /cluster/leave (LeaveRequested) the node is marked as leaving
// for good even when it holds no partition, so that the leader also takes
// its Raft vote once it has left; Shutdown waits for that.
func (ck *ClusterKit) Drain(ctx context.Context) error {
	ck.leaving.Store(true)
	if !ck.othersAlive() {
		return nil
	}
	if ownedCount(ck.raft.State(), ck.cfg.NodeID) == 0 && !ck.removing.Load() {
		return nil
	}
	ck.log.Info("draining: handing partitions over before leaving")
	for {
		err := ck.requestDrain(ctx)
		if err == nil {
			break
		}
		ck.log.Warn("could not ask the leader to drain this node; retrying", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	start := time.Now()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	lastLog := time.Now()
	for {
		left := ownedCount(ck.raft.State(), ck.cfg.NodeID)
		if left == 0 {
			ck.log.Info("drained: no partition left on this node", "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if !ck.othersAlive() {
			// Every other node is leaving too (a whole cluster being
			// stopped): nobody can take the partitions, and waiting
			// would only delay the stop. Every write is already on disk.
			ck.log.Info("not draining further: every other node is leaving or down", "partitions_left", left)
			return nil
		}
		if time.Since(lastLog) > 2*time.Second {
			ck.log.Info("draining", "partitions_left", left)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %d partitions still on this node: %w", left, ctx.Err())
		case <-t.C:
		}
	}
}

func ownedCount(st *consensus.State, id string) int {
	n := 0
	for _, p := range st.Partitions {
		if p.Owns(id) {
			n++
		}
	}
	return n
}

// othersAlive reports whether any other node is up to take partitions.
func (ck *ClusterKit) othersAlive() bool {
	for id, n := range ck.raft.State().Nodes {
		if id != ck.cfg.NodeID && n.Status == consensus.StatusAlive && !n.Draining {
			return true
		}
	}
	return false
}

// requestDrain marks this node draining through the leader.
func (ck *ClusterKit) requestDrain(ctx context.Context) error {
	if ck.raft.IsLeader() {
		return ck.markDraining(ctx, ck.cfg.NodeID, ck.removing.Load())
	}
	leaderID, _ := ck.raft.Leader()
	if leaderID == "" {
		return consensus.ErrNotLeader
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return ck.peers.Drain(rctx, leaderID, ck.cfg.NodeID, ck.removing.Load())
}

// markDraining records a node as draining, and with remove as leaving for
// good; only the leader can.
func (ck *ClusterKit) markDraining(ctx context.Context, id string, remove bool) error {
	n, ok := ck.raft.State().Nodes[id]
	if !ok {
		return fmt.Errorf("unknown node %q", id)
	}
	if n.Draining && (n.Removing || !remove) {
		return nil
	}
	n.Draining, n.Removing = true, n.Removing || remove
	cmd, err := consensus.Encode(consensus.CmdUpsertNode, consensus.UpsertNodeCmd{Node: n})
	if err != nil {
		return err
	}
	if _, err := ck.raft.Apply(ctx, cmd); err != nil {
		return err
	}
	ck.log.Info("node is draining", "node", id)
	ck.nudgeReconcile()
	return nil
}

// awaitRaftRemoval waits, after an operator's leave, until the leader has
// taken this node's Raft vote (it does once gossip reports the node left),
// at most a few seconds. Stopping Raft first could strand the cluster: if
// this node is one of two voters the change needs its vote to commit, and
// the survivor alone would never again reach a quorum.
func (ck *ClusterKit) awaitRaftRemoval(ctx context.Context) {
	deadline := time.Now().Add(raftRemovalWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		servers, err := ck.raft.Servers()
		if err != nil {
			return
		}
		in, others := false, false
		for _, s := range servers {
			if s.ID == ck.cfg.NodeID {
				in = true
			} else if s.Voter {
				others = true
			}
		}
		if !in || !others {
			if in {
				return // the last voter keeps its vote
			}
			ck.log.Info("removed from the raft configuration; stopping")
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	ck.log.Warn("left the cluster, but the leader has not yet taken this node's raft vote; stopping anyway", "waited", raftRemovalWait)
}

// raftRemovalWait bounds awaitRaftRemoval.
const raftRemovalWait = 10 * time.Second

// LeaveRequested is closed when POST /cluster/leave asked this node to
// leave the cluster; the program should then Drain and Shutdown.
func (ck *ClusterKit) LeaveRequested() <-chan struct{} { return ck.leaveCh }
