package node

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Reasons a partition's owners changed (PartitionChangeEvent.Reason).
const (
	ReasonNodeJoin  = "node_join"
	ReasonNodeLeave = "node_leave"
	ReasonRebalance = "rebalance"
)

// Reasons a node left (NodeEvent.Reason of OnNodeLeave).
const (
	LeaveFailure  = "failure"  // recorded dead: it stopped answering
	LeaveGraceful = "graceful" // it announced its leave
	LeaveRemoved  = "removed"  // its record was deleted without a leave
)

// Cluster health states (HealthEvent.State, and "health" in
// GET /cluster/overview).
const (
	HealthHealthy  = "healthy"
	HealthDegraded = "degraded"
	HealthCritical = "critical"
)

// PartitionChangeEvent reports a partition whose owners changed.
type PartitionChangeEvent struct {
	// Partition is "partition-N"; Number is N.
	Partition string
	Number    int
	// Reason is ReasonNodeJoin (owners added for nodes that joined or
	// came back, or the first assignment), ReasonNodeLeave (an owner
	// failed, left or is draining) or ReasonRebalance (anything else).
	Reason string
	// CopiedFrom are the owners before the change that stay owners: the
	// nodes that hold the data (the primary among them sends the copies).
	// CopiedTo are the owners that had no copy before and receive one.
	CopiedFrom []string
	CopiedTo   []string
	OldPrimary string
	NewPrimary string
	// OldReplicas and NewReplicas are the other owners before and after.
	OldReplicas []string
	NewReplicas []string
	Epoch       uint64
	// Time is when this node applied the change.
	Time time.Time
}

// NodeEvent reports a member that joined, came back or left.
type NodeEvent struct {
	Node Node
	// Reason is set for OnNodeLeave: LeaveFailure, LeaveGraceful or
	// LeaveRemoved.
	Reason string
	// Away is set for OnNodeRejoin: how long the node was recorded dead or
	// left (0 for a restart too quick for the cluster to see it down).
	Away time.Duration
	// Time is when the leader recorded the change (the same on every
	// node), or when this node applied it for a removal.
	Time time.Time
}

// RebalanceEvent reports the start or the end of a rebalance: the time
// from the first change of owners after a stable table until every
// partition is stable again (each owner holds its copy).
type RebalanceEvent struct {
	// PartitionsMoved is how many partitions changed owners: in the first
	// step for OnRebalanceStart, in the whole rebalance for
	// OnRebalanceComplete.
	PartitionsMoved int
	// Duration is set for OnRebalanceComplete.
	Duration time.Duration
	Time     time.Time
}

// HealthEvent reports a change of the cluster's health: HealthHealthy when
// every member recorded is active and every partition is stable,
// HealthDegraded when a member is not active or a partition is
// under-replicated or catching up but every partition has a live primary,
// HealthCritical when some partition has none.
type HealthEvent struct {
	State string
	// Previous is the state before ("" for the first assessment after the
	// partitions were first assigned).
	Previous string
	// UnhealthyNodes are the members recorded as not active, by ID.
	UnhealthyNodes []string
	// Partitions counts the partitions that are not stable.
	Partitions int
	Time       time.Time
}

// EventRecord is one entry of the recent-event log (RecentEvents, and
// "events" in GET /cluster/overview).
type EventRecord struct {
	Time time.Time `json:"time"`
	// Type is node_join, node_rejoin, node_leave, partition_change,
	// rebalance_start, rebalance_complete or health_change.
	Type      string `json:"type"`
	Node      string `json:"node,omitempty"`
	Partition string `json:"partition,omitempty"`
	Message   string `json:"message"`
}

// Hook queue and log sizes.
const (
	// hookQueueSize bounds the events waiting for handlers; beyond it new
	// events are dropped (and counted) rather than slow the node.
	hookQueueSize = 1024
	// recentEvents is how many events RecentEvents keeps.
	recentEvents = 100
)

type hookKind int

const (
	hookPartition hookKind = iota
	hookJoin
	hookRejoin
	hookLeave
	hookRebalanceStart
	hookRebalanceComplete
	hookHealth
	hookKinds
)

var hookNames = [hookKinds]string{"OnPartitionChange", "OnNodeJoin", "OnNodeRejoin", "OnNodeLeave",
	"OnRebalanceStart", "OnRebalanceComplete", "OnClusterHealthChange"}

// hookEvent is one derived event waiting for its handlers.
type hookEvent struct {
	kind hookKind
	ev   any
}

// hooks holds the registered handlers, the queue they are called from and
// the recent-event log. Events are produced by one goroutine (deriveEvents)
// and consumed by one (dispatch), so each ClusterKit's handlers see them in
// order.
type hooks struct {
	log   *slog.Logger
	queue chan hookEvent

	mu       sync.Mutex
	handlers [hookKinds][]any

	dropped atomic.Uint64
	// inBurst is set while events are being dropped, so the warning is
	// logged once per burst; only the producer goroutine touches it.
	inBurst     bool
	burstDrops  uint64
	dispatching sync.Once

	recentMu sync.Mutex
	recent   []EventRecord // ring of recentEvents, oldest at next
	next     int
}

func newHooks(log *slog.Logger, queueSize int) *hooks {
	return &hooks{log: log.With("component", "hooks"), queue: make(chan hookEvent, queueSize)}
}

func (h *hooks) add(k hookKind, fn any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.handlers[k] = append(h.handlers[k], fn)
}

func (h *hooks) has(k hookKind) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.handlers[k]) > 0
}

// OnPartitionChange calls fn for every partition whose owners change. Like
// every hook it may be registered before or after Start, any number of
// times; handlers run one at a time on a goroutine of their own, in the
// order the changes were applied, never on the Raft apply path. A handler
// that is slow delays only later events, and once hookQueueSize events
// wait, newer ones are dropped (DroppedHookEvents counts them). A handler
// that panics is logged and skipped.
//
// Events are derived from the replicated cluster state, so every node
// reports the same ones. Changes that are applied in quick succession may
// be seen as their end result, and a node that restarts reports again the
// changes it replays from its Raft log.
func (ck *ClusterKit) OnPartitionChange(fn func(PartitionChangeEvent)) {
	ck.hooks.add(hookPartition, fn)
}

// OnNodeJoin calls fn when a member is recorded for the first time.
func (ck *ClusterKit) OnNodeJoin(fn func(NodeEvent)) { ck.hooks.add(hookJoin, fn) }

// OnNodeRejoin calls fn when a member recorded dead or left is alive again,
// or was restarted; NodeEvent.Away says for how long it was away.
func (ck *ClusterKit) OnNodeRejoin(fn func(NodeEvent)) { ck.hooks.add(hookRejoin, fn) }

// OnNodeLeave calls fn when a member is recorded dead (LeaveFailure), has
// left (LeaveGraceful) or was removed without leaving (LeaveRemoved).
func (ck *ClusterKit) OnNodeLeave(fn func(NodeEvent)) { ck.hooks.add(hookLeave, fn) }

// OnRebalanceStart calls fn when partitions start to change owners after a
// stable table.
func (ck *ClusterKit) OnRebalanceStart(fn func(RebalanceEvent)) {
	ck.hooks.add(hookRebalanceStart, fn)
}

// OnRebalanceComplete calls fn when every partition is stable again.
func (ck *ClusterKit) OnRebalanceComplete(fn func(RebalanceEvent)) {
	ck.hooks.add(hookRebalanceComplete, fn)
}

// OnClusterHealthChange calls fn when the cluster's health state or its set
// of unhealthy members changes.
func (ck *ClusterKit) OnClusterHealthChange(fn func(HealthEvent)) {
	ck.hooks.add(hookHealth, fn)
}

// DroppedHookEvents counts the events dropped because the handlers were
// too far behind.
func (ck *ClusterKit) DroppedHookEvents() uint64 { return ck.hooks.dropped.Load() }

// RecentEvents returns the last events of every kind, newest first (at
// most 100), whether or not a handler is registered.
func (ck *ClusterKit) RecentEvents() []EventRecord {
	h := ck.hooks
	h.recentMu.Lock()
	defer h.recentMu.Unlock()
	out := make([]EventRecord, 0, len(h.recent))
	for i := range len(h.recent) {
		// newest is just before next
		out = append(out, h.recent[(h.next-1-i+2*len(h.recent))%len(h.recent)])
	}
	return out
}

func (h *hooks) record(r EventRecord) {
	h.recentMu.Lock()
	defer h.recentMu.Unlock()
	if len(h.recent) < recentEvents {
		h.recent = append(h.recent, r)
		h.next = len(h.recent) % recentEvents
		return
	}
	h.recent[h.next] = r
	h.next = (h.next + 1) % recentEvents
}

// emit records ev and queues it for its handlers without ever blocking.
func (h *hooks) emit(k hookKind, ev any, r EventRecord) {
	h.record(r)
	if !h.has(k) {
		return
	}
	select {
	case h.queue <- hookEvent{kind: k, ev: ev}:
		if h.inBurst {
			h.log.Warn("hook handlers caught up; events were dropped", "dropped", h.burstDrops)
			h.inBurst, h.burstDrops = false, 0
		}
	default:
		h.dropped.Add(1)
		h.burstDrops++
		if !h.inBurst {
			h.inBurst = true
			h.log.Warn("hook handlers are too slow: dropping events until they catch up", "queue", cap(h.queue), "hook", hookNames[k])
		}
	}
}

// startDispatch runs the handlers until ctx ends. It is not part of the
// node's wait group: a handler that never returns must not hold up
// Shutdown.
func (h *hooks) startDispatch(ctx context.Context) {
	h.dispatching.Do(func() {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case e := <-h.queue:
					h.mu.Lock()
					fns := slices.Clone(h.handlers[e.kind])
					h.mu.Unlock()
					for _, fn := range fns {
						if ctx.Err() != nil {
							return
						}
						h.call(e.kind, fn, e.ev)
					}
				}
			}
		}()
	})
}

// call runs one handler, recovering a panic so that the node and the
// later events carry on.
func (h *hooks) call(k hookKind, fn, ev any) {
	defer func() {
		if r := recover(); r != nil {
			h.log.Error("hook handler panicked; continuing with the next", "hook", hookNames[k],
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	switch f := fn.(type) {
	case func(PartitionChangeEvent):
		f(ev.(PartitionChangeEvent))
	case func(NodeEvent):
		f(ev.(NodeEvent))
	case func(RebalanceEvent):
		f(ev.(RebalanceEvent))
	case func(HealthEvent):
		f(ev.(HealthEvent))
	}
}
