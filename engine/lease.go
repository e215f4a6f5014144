package engine

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/peer"
)

// Read leases.
//
// A primary answers a linearizable read from its own copy only while it
// holds a lease from every in-sync replica of the partition. A replica that
// grants a lease promises not to act as primary of that partition (serve
// reads or acknowledge writes) until the lease has run out on its own clock.
// Only an in-sync replica can be promoted, so once a new primary serves, the
// old primary's lease has expired and it refuses reads: a primary that is
// paused or cut off can never return a stale value. A primary with no
// in-sync replica needs no lease, because nobody can replace it.
//
// The lease is valid only for the in-sync set it was granted by: when the
// primary adds a replica to the in-sync set (it holds the partition lock
// until its own table shows the change, so no read is served in between),
// the lease must be renewed with that replica too before the next read.
//
// Both sides measure durations on their monotonic clocks: the primary
// counts from before it sent the request and uses only leaseSafety of the
// lease, the replica counts from when it received it.
const (
	LeaseDuration = 1500 * time.Millisecond
	leaseRenew    = LeaseDuration / 3
	leaseSafety   = 0.85
)

// leases is the primary-side record of valid leases and the replica-side
// record of grants.
type leases struct {
	mu sync.Mutex
	// held: partition → epoch and expiry of this node's lease as primary.
	held map[int]heldLease
	// granted: partition → until when this node promised another node
	// not to act as primary.
	granted map[int]time.Time
	// lastHeard: partition → when its primary last renewed a lease or
	// sent a round to this replica.
	lastHeard map[int]time.Time
	// floor: after a restart this node does not know what it granted
	// before, so it acts as primary of nothing until floor.
	floor time.Time
}

type heldLease struct {
	epoch    uint64
	until    time.Time
	granters []string
}

func newLeases(now time.Time) *leases {
	return &leases{held: map[int]heldLease{}, granted: map[int]time.Time{}, lastHeard: map[int]time.Time{}, floor: now.Add(LeaseDuration)}
}

// valid reports whether this node may answer reads for p at epoch now,
// given its current view of the in-sync set.
func (l *leases) valid(p int, epoch uint64, inSync []string, now time.Time) bool {
	if len(inSync) == 0 {
		return true // nobody can be promoted over this primary
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.held[p]
	if !ok || h.epoch != epoch || !now.Before(h.until) {
		return false
	}
	for _, n := range inSync {
		if !slices.Contains(h.granters, n) {
			return false
		}
	}
	return true
}

func (l *leases) hold(p int, epoch uint64, until time.Time, granters []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held[p] = heldLease{epoch: epoch, until: until, granters: granters}
}

// grant records a promise not to act as primary of p before now+LeaseDuration.
func (l *leases) grant(p int, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.granted[p] = now.Add(LeaseDuration)
	l.lastHeard[p] = now
}

// heard records that p's primary was heard from at now (a replica's
// record, for the staleness of its stale reads).
func (l *leases) heard(p int, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastHeard[p] = now
}

// heardAgo is how long since p's primary was last heard from, or -1 if
// never since this process started.
func (l *leases) heardAgo(p int, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.lastHeard[p]
	if !ok {
		return -1
	}
	return now.Sub(t)
}

// primaryBlockedUntil is when this node may start acting as primary of p.
func (l *leases) primaryBlockedUntil(p int) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.floor
	if g := l.granted[p]; g.After(t) {
		t = g
	}
	return t
}

// ServeLease grants leases to the primary of the listed partitions.
func (s *Engine) ServeLease(ctx context.Context, req peer.LeaseReq) (peer.LeaseResp, error) {
	now := time.Now()
	self := s.router.Self()
	var out peer.LeaseResp
	if s.checkTable() != nil {
		return out, nil // catching up: grant nothing yet
	}
	for _, pe := range req.Partitions {
		rt, ok := s.router.Route(pe.Partition)
		// Grant only to the primary of the epoch this node knows, and only
		// as one of its replicas. A request from an older epoch is refused;
		// one from a newer epoch than this node has seen is refused too,
		// and the primary retries after this node's table catches up.
		if !ok || rt.Epoch != pe.Epoch || rt.Primary != req.From || !slices.Contains(rt.Replicas, self) {
			continue
		}
		s.leases.grant(pe.Partition, now)
		out.Granted = append(out.Granted, pe.Partition)
	}
	return out, nil
}

// renewLeases asks every in-sync replica of the partitions this node leads
// (one request per replica node) for a lease, and records the partitions
// for which all in-sync replicas granted it. Replicas that do not answer are
// reported so the caller can shrink them out of the in-sync set.
func (s *Engine) renewLeases(ctx context.Context) map[int][]string {
	self := s.router.Self()
	routes := map[int]Route{}
	byNode := map[string][]peer.LeasePart{}
	for p := range s.router.Partitions() {
		rt, ok := s.router.Route(p)
		if !ok || rt.Primary != self {
			continue
		}
		routes[p] = rt
		for _, n := range rt.InSync {
			byNode[n] = append(byNode[n], peer.LeasePart{Partition: p, Epoch: rt.Epoch})
		}
	}
	if len(routes) == 0 {
		return nil
	}
	start := time.Now()
	until := start.Add(time.Duration(float64(LeaseDuration) * leaseSafety))
	var mu sync.Mutex
	granted := map[string][]int{}
	unreachable := map[string]bool{}
	var wg sync.WaitGroup
	for n, parts := range byNode {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, leaseRenew)
			defer cancel()
			resp, err := s.peers.Lease(rctx, n, peer.LeaseReq{From: self, Partitions: parts})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				unreachable[n] = true
				return
			}
			granted[n] = resp.Granted
		})
	}
	wg.Wait()
	failed := map[int][]string{}
	for p, rt := range routes {
		var granters []string
		for _, n := range rt.InSync {
			switch {
			case slices.Contains(granted[n], p):
				granters = append(granters, n)
			case unreachable[n]:
				failed[p] = append(failed[p], n)
			}
		}
		s.leases.hold(p, rt.Epoch, until, granters)
	}
	return failed
}

// runLeases keeps the leases of the partitions this node leads fresh. A
// replica that cannot be reached is removed from the in-sync set (as a
// failed write would do), so reads do not stay blocked on a dead replica.
func (s *Engine) runLeases(ctx context.Context) {
	t := time.NewTicker(leaseRenew)
	defer t.Stop()
	for {
		for p, nodes := range s.renewLeases(ctx) {
			rt, ok := s.router.Route(p)
			if !ok || rt.Primary != s.router.Self() {
				continue
			}
			for _, n := range nodes {
				s.log.Warn("in-sync replica unreachable for the read lease; removing it from the in-sync set",
					"partition", p, "epoch", rt.Epoch, "replica", n)
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				if err := s.control.SetInSync(cctx, p, rt.Epoch, n, false); err != nil {
					s.log.Warn("could not shrink the in-sync set", "partition", p, "replica", n, "err", err)
				}
				cancel()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// confirm asks every in-sync replica of p, now, whether this node is still
// its primary at rt's epoch (a lease request for this one partition), for
// ReadMode "confirm".
func (s *Engine) confirm(p int, rt Route) bool {
	if len(rt.InSync) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
	defer cancel()
	req := peer.LeaseReq{From: s.router.Self(), Partitions: []peer.LeasePart{{Partition: p, Epoch: rt.Epoch}}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	all := true
	for _, n := range rt.InSync {
		wg.Go(func() {
			resp, err := s.peers.Lease(ctx, n, req)
			if err != nil || !slices.Contains(resp.Granted, p) {
				mu.Lock()
				all = false
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return all
}
