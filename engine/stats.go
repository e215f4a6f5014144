package engine

import (
	"slices"
	"sync/atomic"
	"time"
)

// counters are the engine's running totals for metrics. They only grow.
type counters struct {
	sweeps        atomic.Uint64 // sweep rounds that deleted expired keys
	expired       atomic.Uint64 // expired keys deleted by the sweep
	watchersCut   atomic.Uint64 // watches ended because they fell behind
	watchesOpened atomic.Uint64
}

// Stats are the engine's totals since it started.
type Stats struct {
	Sweeps        uint64 // sweep rounds that deleted expired keys
	ExpiredSwept  uint64 // expired keys the sweep deleted
	WatchersCut   uint64 // watches ended because they fell behind
	WatchesOpened uint64
	Watchers      int // open now
}

// Stats reads the engine's totals.
func (s *Engine) Stats() Stats {
	return Stats{Sweeps: s.count.sweeps.Load(), ExpiredSwept: s.count.expired.Load(),
		WatchersCut: s.count.watchersCut.Load(), WatchesOpened: s.count.watchesOpened.Load(), Watchers: s.Watchers()}
}

// PartitionStatus is this node's copy of one partition it owns.
type PartitionStatus struct {
	Partition int
	Role      string // "primary" or "replica"
	InSync    bool   // the table counts this copy as in sync (a primary always is)
	Revision  uint64 // the last write applied to this copy
	Keys      uint64
	// SincePrimary is, on a replica, how long since its primary was last
	// heard from (a lease renewal or a write); -1 if never since start.
	SincePrimary time.Duration
}

// PartitionStatuses lists this node's copies, by partition. Comparing a
// replica's Revision with its primary's is the replica's lag in writes.
func (s *Engine) PartitionStatuses() []PartitionStatus {
	self := s.router.Self()
	now := time.Now()
	var out []PartitionStatus
	for p := range s.router.Partitions() {
		rt, ok := s.router.Route(p)
		if !ok || !slices.Contains(rt.Owners(), self) {
			continue
		}
		st := PartitionStatus{Partition: p, Role: "replica", InSync: slices.Contains(rt.InSync, self), SincePrimary: -1}
		if rt.Primary == self {
			st.Role, st.InSync, st.SincePrimary = "primary", true, 0
		} else {
			st.SincePrimary = s.leases.heardAgo(p, now)
		}
		if m, err := s.store.Meta(p); err == nil {
			st.Revision, st.Keys = m.Seq, m.Keys
		}
		out = append(out, st)
	}
	return out
}
