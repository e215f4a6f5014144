package node

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/ring"
)

// deriveEvents turns every change of the replicated state this node
// applies into hook events, until ctx ends. It compares successive states
// only (never gossip, never local timers), so every node derives the same
// events from the same sequence of states.
func (ck *ClusterKit) deriveEvents(ctx context.Context) {
	ch, stop := ck.raft.FSM().Watch() // before reading the state: no change is missed
	defer stop()
	d := newDeriver(ck, ck.raft.State())
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		d.step(ck.raft.State(), time.Now())
	}
}

// deriver holds what event derivation remembers between two states.
type deriver struct {
	ck   *ClusterKit
	prev *consensus.State
	// health and unhealthy are the last assessment ("" before the
	// partitions were first assigned).
	health    string
	unhealthy []string
	// rebalancing is set from the first change of owners after a stable
	// table until the table is stable again.
	rebalancing bool
	rebStart    time.Time
	moved       map[int]bool
	// joined are nodes that joined or came back and may not have been
	// given partitions yet: a partition moving to one of them moves
	// because of the join.
	joined map[string]bool
}

func newDeriver(ck *ClusterKit, st *consensus.State) *deriver {
	d := &deriver{ck: ck, prev: st, moved: map[int]bool{}, joined: map[string]bool{}}
	d.health, d.unhealthy, _ = assessHealth(st)
	return d
}

func live(s consensus.NodeStatus) bool {
	return s == consensus.StatusAlive || s == consensus.StatusSuspect
}

func (d *deriver) step(cur *consensus.State, now time.Time) {
	prev := d.prev
	d.prev = cur
	if cur == prev {
		return
	}
	d.nodeEvents(prev, cur, now)
	changed := d.partitionEvents(prev, cur, now)
	d.rebalanceEvents(cur, changed, now)
	d.healthEvents(cur, now)
}

func (d *deriver) describe(st *consensus.State, id string) string {
	if n, ok := st.Nodes[id]; ok && n.Name != "" && n.Name != id {
		return fmt.Sprintf("%s (%s)", id, n.Name)
	}
	return id
}

func (d *deriver) nodeEvents(prev, cur *consensus.State, now time.Time) {
	ids := map[string]bool{}
	for id := range prev.Nodes {
		ids[id] = true
	}
	for id := range cur.Nodes {
		ids[id] = true
	}
	h := d.ck.hooks
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		p, inPrev := prev.Nodes[id]
		c, inCur := cur.Nodes[id]
		at := c.Since
		if at.IsZero() {
			at = now
		}
		ref := d.ck.nodeRef(cur, id)
		name := d.describe(cur, id)
		switch {
		case !inPrev && inCur && live(c.Status):
			d.joined[id] = true
			h.emit(hookJoin, NodeEvent{Node: ref, Time: at},
				EventRecord{Time: at, Type: "node_join", Node: id, Message: name + " joined"})
		case inPrev && inCur && !live(p.Status) && live(c.Status):
			away := max(0, c.Since.Sub(p.Since))
			d.joined[id] = true
			h.emit(hookRejoin, NodeEvent{Node: ref, Away: away, Time: at},
				EventRecord{Time: at, Type: "node_rejoin", Node: id,
					Message: fmt.Sprintf("%s is back after %s %s", name, away.Round(time.Millisecond), p.Status)})
		case inPrev && inCur && live(p.Status) && live(c.Status) && p.Incarnation != "" && c.Incarnation != p.Incarnation:
			d.joined[id] = true
			h.emit(hookRejoin, NodeEvent{Node: ref, Time: at},
				EventRecord{Time: at, Type: "node_rejoin", Node: id, Message: name + " restarted"})
		case inPrev && inCur && live(p.Status) && c.Status == consensus.StatusDead:
			delete(d.joined, id)
			h.emit(hookLeave, NodeEvent{Node: ref, Reason: LeaveFailure, Time: at},
				EventRecord{Time: at, Type: "node_leave", Node: id,
					Message: fmt.Sprintf("%s failed; away since %s", name, at.UTC().Format(time.RFC3339))})
		case inPrev && inCur && live(p.Status) && c.Status == consensus.StatusLeft:
			delete(d.joined, id)
			h.emit(hookLeave, NodeEvent{Node: ref, Reason: LeaveGraceful, Time: at},
				EventRecord{Time: at, Type: "node_leave", Node: id, Message: name + " left the cluster"})
		case inPrev && !inCur && p.Status != consensus.StatusLeft:
			delete(d.joined, id)
			ref = d.ck.nodeRef(prev, id)
			ref.Status = "removed"
			h.emit(hookLeave, NodeEvent{Node: ref, Reason: LeaveRemoved, Time: now},
				EventRecord{Time: now, Type: "node_leave", Node: id, Message: d.describe(prev, id) + " was removed from the cluster"})
		}
	}
}

// partitionEvents reports partitions whose owners changed and returns how
// many did. Changes of the in-sync set alone are not owner changes.
func (d *deriver) partitionEvents(prev, cur *consensus.State, now time.Time) int {
	n := 0
	for i, c := range cur.Partitions {
		var o consensus.Partition
		if i < len(prev.Partitions) {
			o = prev.Partitions[i]
		}
		if o.Primary == c.Primary && slices.Equal(o.Replicas, c.Replicas) {
			continue
		}
		n++
		d.moved[c.ID] = true
		oldOwners, newOwners := owners(o), owners(c)
		ev := PartitionChangeEvent{Partition: ring.PartitionName(c.ID), Number: c.ID,
			OldPrimary: o.Primary, NewPrimary: c.Primary, OldReplicas: slices.Clone(o.Replicas),
			NewReplicas: slices.Clone(c.Replicas), Epoch: c.Epoch, Time: now, CopiedFrom: []string{}, CopiedTo: []string{}}
		for _, id := range newOwners {
			if slices.Contains(oldOwners, id) {
				ev.CopiedFrom = append(ev.CopiedFrom, id)
			} else {
				ev.CopiedTo = append(ev.CopiedTo, id)
			}
		}
		ev.Reason = d.reason(cur, oldOwners, newOwners, ev.CopiedTo)
		msg := fmt.Sprintf("%s: primary %s → %s, replicas %v → %v (%s)", ev.Partition, orNone(o.Primary), orNone(c.Primary),
			o.Replicas, c.Replicas, ev.Reason)
		if o.Primary == c.Primary {
			msg = fmt.Sprintf("%s: primary %s, replicas %v → %v (%s)", ev.Partition, orNone(c.Primary), o.Replicas, c.Replicas, ev.Reason)
		}
		if len(ev.CopiedTo) > 0 && len(ev.CopiedFrom) > 0 {
			msg += fmt.Sprintf("; copying to %s", strings.Join(ev.CopiedTo, ", "))
		}
		node := c.Primary
		if len(ev.CopiedTo) > 0 {
			node = ev.CopiedTo[0]
		}
		d.ck.hooks.emit(hookPartition, ev, EventRecord{Time: now, Type: "partition_change", Node: node,
			Partition: ev.Partition, Message: msg})
	}
	return n
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func owners(p consensus.Partition) []string {
	var out []string
	if p.Primary != "" {
		out = append(out, p.Primary)
	}
	return append(out, p.Replicas...)
}

// reason explains a change of owners: an owner dropped because it is not
// up (or drains) is a leave; an owner added that joined recently, or a
// first assignment, is a join; anything else is a rebalance.
func (d *deriver) reason(cur *consensus.State, oldOwners, newOwners, added []string) string {
	for _, id := range oldOwners {
		if slices.Contains(newOwners, id) {
			continue
		}
		if n, ok := cur.Nodes[id]; !ok || n.Status != consensus.StatusAlive || n.Draining {
			return ReasonNodeLeave
		}
	}
	if len(oldOwners) == 0 {
		return ReasonNodeJoin
	}
	for _, id := range added {
		if d.joined[id] {
			return ReasonNodeJoin
		}
	}
	return ReasonRebalance
}

// stable reports whether every partition has a primary and every replica
// holds its copy.
func stable(st *consensus.State) bool {
	for _, p := range st.Partitions {
		if p.Primary == "" {
			return false
		}
		for _, r := range p.Replicas {
			if !p.IsInSync(r) {
				return false
			}
		}
	}
	return true
}

func (d *deriver) rebalanceEvents(cur *consensus.State, changed int, now time.Time) {
	h := d.ck.hooks
	if changed > 0 && !d.rebalancing {
		d.rebalancing, d.rebStart = true, now
		h.emit(hookRebalanceStart, RebalanceEvent{PartitionsMoved: changed, Time: now},
			EventRecord{Time: now, Type: "rebalance_start", Message: fmt.Sprintf("rebalance started: %d partitions changing owners", changed)})
	}
	if d.rebalancing && stable(cur) {
		took := now.Sub(d.rebStart)
		moved := len(d.moved)
		d.rebalancing, d.moved, d.joined = false, map[int]bool{}, map[string]bool{}
		h.emit(hookRebalanceComplete, RebalanceEvent{PartitionsMoved: moved, Duration: took, Time: now},
			EventRecord{Time: now, Type: "rebalance_complete",
				Message: fmt.Sprintf("rebalance complete: %d partitions moved in %s", moved, took.Round(time.Millisecond))})
	}
}

func (d *deriver) healthEvents(cur *consensus.State, now time.Time) {
	state, unhealthy, bad := assessHealth(cur)
	if state == "" || (state == d.health && slices.Equal(unhealthy, d.unhealthy)) {
		return
	}
	prevState := d.health
	d.health, d.unhealthy = state, unhealthy
	msg := "cluster " + state
	if len(unhealthy) > 0 {
		msg += "; not active: " + strings.Join(unhealthy, ", ")
	}
	if bad > 0 {
		msg += fmt.Sprintf("; %d partitions not stable", bad)
	}
	d.ck.hooks.emit(hookHealth, HealthEvent{State: state, Previous: prevState, UnhealthyNodes: slices.Clone(unhealthy),
		Partitions: bad, Time: now},
		EventRecord{Time: now, Type: "health_change", Message: msg})
}

// assessHealth rates the recorded state (see HealthEvent): the state, the
// members that are not active, and how many partitions are not stable. It
// returns "" until every partition has been assigned once.
func assessHealth(st *consensus.State) (state string, unhealthy []string, badPartitions int) {
	if !st.Initialized() {
		return "", nil, 0
	}
	assigned := false
	for _, p := range st.Partitions {
		if p.Epoch > 0 {
			assigned = true
		}
	}
	if !assigned {
		return "", nil, 0
	}
	unhealthy = []string{}
	for _, n := range st.SortedNodes() {
		if n.Status != consensus.StatusAlive {
			unhealthy = append(unhealthy, n.ID)
		}
	}
	state = HealthHealthy
	if len(unhealthy) > 0 {
		state = HealthDegraded
	}
	for _, p := range st.Partitions {
		switch toPartitionJSON(st, p).State {
		case "stable":
			continue
		case "unavailable":
			state = HealthCritical
		default:
			if state == HealthHealthy {
				state = HealthDegraded
			}
		}
		badPartitions++
	}
	return state, unhealthy, badPartitions
}
