package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// Kick asks the background sync loop to look at the partitions now.
func (s *Engine) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run keeps the replicas of the partitions this node leads in sync until ctx
// ends: after a change of primary it reconciles the in-sync replicas to its
// own copy before serving, and it brings replicas that are not in sync up to
// date (a full copy of the partition, taken under the partition lock) and
// then adds them to the in-sync set.
func (s *Engine) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.hub.close()
	wg.Go(func() { s.runLeases(ctx) })
	wg.Go(func() { s.runSweep(ctx) })
	wg.Go(func() { s.runTrim(ctx) })
	changed, stop := s.router.Changed()
	defer stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	w := &syncWork{busy: map[string]bool{}, until: map[string]time.Time{}, copies: make(chan struct{}, syncWorkers)}
	for {
		s.syncPass(ctx, w, &wg)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-s.kick:
		case <-tick.C:
		}
	}
}

// syncWorkers bounds how many partition copies to replicas run at once.
const syncWorkers = 4

// syncWork tracks the background jobs: which (partition, target) jobs are
// running, so that a pass never waits for a slow one (a copy to a replica
// that is cut off must not hold up the reconcile of another partition),
// and which failed recently.
type syncWork struct {
	mu     sync.Mutex
	busy   map[string]bool
	until  map[string]time.Time
	copies chan struct{} // semaphore for catch-up copies
}

// start reserves job key, unless it is running or backing off.
func (w *syncWork) start(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.busy[key] || time.Now().Before(w.until[key]) {
		return false
	}
	w.busy[key] = true
	return true
}

// done releases job key; a failed job backs off for a while.
func (w *syncWork) done(key string, failed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.busy, key)
	if failed {
		w.until[key] = time.Now().Add(2 * time.Second)
	} else {
		delete(w.until, key)
	}
}

// syncPass starts whatever each partition this node leads needs, without
// waiting for jobs to finish.
func (s *Engine) syncPass(ctx context.Context, w *syncWork, wg *sync.WaitGroup) {
	if s.checkStore() != nil {
		return // this node's old copies are gone: it must not make its new, empty one the truth
	}
	self := s.router.Self()
	for p := range s.router.Partitions() {
		if ctx.Err() != nil {
			return
		}
		rt, ok := s.router.Route(p)
		if !ok {
			continue
		}
		if !slices.Contains(rt.Owners(), self) {
			s.release(p)
			continue
		}
		if rt.Primary != self {
			continue
		}
		m, err := s.store.Meta(p)
		if err != nil {
			s.log.Error("read partition meta", "partition", p, "err", err)
			continue
		}
		if m.Epoch != rt.Epoch {
			if key := rt.Key(""); w.start(key) {
				wg.Go(func() {
					w.done(key, !s.reconcile(ctx, p, rt.Epoch))
				})
			}
			continue
		}
		if s.additionUnsettled(p, rt.Epoch) {
			// Settle it even if no write comes to do so: until then the
			// partition serves no linearizable read either.
			if key := rt.Key("settle"); w.start(key) {
				wg.Go(func() {
					l := s.lock(p)
					l.Lock()
					_, err := s.resolve(p, rt)
					l.Unlock()
					w.done(key, err != nil)
				})
			}
			continue
		}
		for _, r := range rt.Replicas {
			if rt.IsInSync(r) || !s.router.Alive(r) {
				continue
			}
			key := rt.Key(r)
			if !w.start(key) {
				continue
			}
			wg.Go(func() {
				select {
				case w.copies <- struct{}{}:
				case <-ctx.Done():
					w.done(key, false)
					return
				}
				err := s.catchUp(ctx, p, rt.Epoch, r)
				<-w.copies
				if err != nil {
					s.log.Warn("replica catch-up failed; will retry", "partition", p, "epoch", rt.Epoch, "replica", r, "err", err)
				}
				w.done(key, err != nil)
			})
		}
	}
}

// reconcileTimeout bounds the copy of a partition to one in-sync replica
// when this node becomes primary; a replica that cannot take it in time is
// dropped from the in-sync set (and caught up later) rather than keep the
// partition unavailable.
const reconcileTimeout = 5 * time.Second

// reconcile makes this node's copy the truth for a new epoch: every in-sync
// replica gets a fresh copy (dropping any write of the old epoch that was
// never acknowledged) or leaves the in-sync set, and only then does the
// primary mark itself ready. It reports whether the partition is ready.
func (s *Engine) reconcile(ctx context.Context, p int, epoch uint64) bool {
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	rt, ok := s.router.Route(p)
	if !ok || rt.Primary != s.router.Self() || rt.Epoch != epoch {
		return true
	}
	start := time.Now()
	if err := s.advanceForEpoch(p, epoch); err != nil {
		s.log.Error("advance partition write order for a new epoch", "partition", p, "epoch", epoch, "err", err)
		return false
	}
	var mu sync.Mutex
	var failed []string
	var wg sync.WaitGroup
	for _, r := range rt.InSync {
		wg.Go(func() {
			ictx, cancel := context.WithTimeout(ctx, reconcileTimeout)
			defer cancel()
			if err := s.installOn(ictx, p, epoch, r, "reconcile"); err != nil {
				s.log.Warn("could not reconcile replica for new epoch; removing it from the in-sync set",
					"partition", p, "epoch", epoch, "replica", r, "err", err)
				mu.Lock()
				failed = append(failed, r)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, r := range failed {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := s.control.SetInSync(cctx, p, epoch, r, false)
		cancel()
		if err != nil {
			s.log.Warn("partition stays not ready", "partition", p, "epoch", epoch, "err", err)
			return false
		}
	}
	// The previous primary may still hold a read lease this node granted:
	// serving before it runs out could let it answer a stale read.
	if d := time.Until(s.leases.primaryBlockedUntil(p)); d > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
		}
	}
	if err := s.store.SetEpoch(p, epoch); err != nil {
		s.log.Error("record partition epoch", "partition", p, "err", err)
		return false
	}
	// Every in-sync copy is now this one.
	if m, err := s.store.Meta(p); err == nil {
		s.feed(p).advance(epoch, m.Seq)
	}
	lvl := slog.LevelInfo
	if len(rt.InSync) == 0 {
		lvl = slog.LevelDebug
	}
	s.log.Log(ctx, lvl, "partition ready as primary", "partition", p, "epoch", epoch,
		"in_sync", rt.InSync, "dropped", failed, "took", time.Since(start).Round(time.Millisecond))
	return true
}

// epochRevisionGap is how far a new primary moves a partition's write
// order past its own copy's. The previous primary may have put writes on
// its disk that never reached this copy and were never acknowledged; their
// revisions may have been seen (by a stale read there, or in a response
// lost on the way), so they must never be handed out again for other
// writes. A primary keeps at most one unacknowledged round on its disk
// that its in-sync replicas lack (it takes no round while one is
// unresolved, see dropReplicas), and a round holds at most maxBatchOps
// writes, so that many numbers suffice.
const epochRevisionGap = maxBatchOps

// advanceForEpoch moves p's write order past every revision the previous
// primary may have used, before the copy goes to the replicas; the first
// epoch has no previous primary.
func (s *Engine) advanceForEpoch(p int, epoch uint64) error {
	if epoch <= 1 {
		return nil
	}
	m, err := s.store.Meta(p)
	if err != nil {
		return err
	}
	return s.store.Advance(p, m.Seq+epochRevisionGap)
}

// catchUpTimeout bounds one partition copy to a replica.
const catchUpTimeout = 15 * time.Second

func (s *Engine) installOn(ctx context.Context, p int, epoch uint64, node, how string) error {
	total := 0
	if m, err := s.store.Meta(p); err == nil {
		total = int(m.Keys)
	}
	c := s.copies.start(p, node, how, total)
	defer s.copies.done(c)
	req := peer.InstallReq{Partition: p, Epoch: epoch, Version: s.router.Version(), From: s.router.Self()}
	return s.peers.Install(ctx, node, req, snapshotSender(s.store, p, c))
}

// snapshotSender writes partition p's copy, read straight out of one
// storage snapshot, as a partition copy's stream.
func snapshotSender(st Storage, p int, progress *copyProgress) func(io.Writer) error {
	return func(w io.Writer) error {
		var iw *peer.InstallWriter
		err := st.SnapshotLog(p, func(m storage.Meta) (err error) {
			iw, err = peer.NewInstallWriter(w, m.Seq)
			return err
		}, func(k, v []byte) error {
			progress.add(1)
			return iw.Pair(k, v)
		}, func(floor uint64) error {
			if err := iw.End(); err != nil {
				return err
			}
			return iw.Log(floor)
		}, func(seq uint64, raw []byte) error { return iw.LogEntry(seq, raw) })
		if err != nil {
			return err
		}
		return iw.EndLog()
	}
}

// probe checks within a second that node's data plane answers (an empty
// lease request).
func (s *Engine) probe(ctx context.Context, node string) error {
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := s.peers.Lease(pctx, node, peer.LeaseReq{From: s.router.Self()})
	return err
}

// catchUp copies the partition to a replica and adds it to the in-sync set.
// The partition lock is held from the copy until the table shows the replica
// in sync, so no write can slip between the two.
func (s *Engine) catchUp(ctx context.Context, p int, epoch uint64, node string) error {
	// Writes to the partition wait while the copy runs, so first make sure
	// the replica answers at all: a node behind a cut link would hold the
	// lock until the copy times out.
	if err := s.probe(ctx, node); err != nil {
		return err
	}
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	rt, ok := s.router.Route(p)
	if !ok || rt.Primary != s.router.Self() || rt.Epoch != epoch || slices.Contains(rt.InSync, node) || !slices.Contains(rt.Replicas, node) {
		return nil
	}
	start := time.Now()
	ictx, cancel := context.WithTimeout(ctx, catchUpTimeout)
	defer cancel()
	how := "tail"
	sent, err := s.sendTail(ictx, p, rt, node)
	if err != nil {
		return err
	}
	if sent < 0 {
		how = "full copy"
		if err := s.installOn(ictx, p, epoch, node, "full"); err != nil {
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.control.SetInSync(cctx, p, epoch, node, true); err != nil {
		// The change may have been committed all the same (the answer
		// was lost, or this node has not applied it yet). The table then
		// counts node in sync, and a round that left it out, once the
		// lock is released, would be acknowledged without a copy the
		// table promises: node could be promoted without it. So node is
		// unresolved: the partition takes no write and serves no
		// linearizable read until the addition is known to have been
		// applied here (node has every write: none ran since the copy)
		// or to be impossible.
		s.markUnresolved(p, epoch, node, true)
		return fmt.Errorf("add %s to the in-sync set (outcome unknown: the partition waits until it is known): %w", node, err)
	}
	attrs := []any{"partition", p, "epoch", epoch, "replica", node, "by", how}
	if sent >= 0 {
		attrs = append(attrs, "writes", sent)
	}
	s.log.Info("replica caught up and in sync", append(attrs, "took", time.Since(start).Round(time.Millisecond))...)
	return nil
}

// sendTail catches node's copy of p up from the history when it can: the
// copy was installed at this epoch (so it is this primary's copy as of its
// last write: a replica applies one primary's rounds in order, and an
// epoch has one primary) and the history still holds every write after
// it. It returns how many writes it sent, or -1 when the copy needs a full
// one. The caller holds the partition lock.
func (s *Engine) sendTail(ctx context.Context, p int, rt Route, node string) (int, error) {
	// Every call is bounded like a replication round: the partition is
	// locked, and a replica that takes connections but does not answer
	// must not hold its writes and reads up for the whole catch-up.
	cctx, cancel := context.WithTimeout(ctx, s.replTimeout)
	info, err := s.peers.CopyInfo(cctx, node, peer.CopyInfoReq{Partition: p})
	cancel()
	if err != nil {
		return -1, nil
	}
	m, err := s.store.Meta(p)
	if err != nil {
		return 0, err
	}
	if info.Epoch != rt.Epoch || info.Seq > m.Seq || info.Seq < m.LogFloor {
		return -1, nil
	}
	c := s.copies.start(p, node, "tail", int(m.Seq-info.Seq))
	defer s.copies.done(c)
	sent := 0
	for after := info.Seq; after < m.Seq; {
		entries, _, err := s.store.ReadLog(p, after, m.Seq, maxBatchOps, maxBatchBytes, nil)
		if err != nil || len(entries) == 0 {
			return -1, nil
		}
		req := peer.ReplicateReq{Partition: p, Epoch: rt.Epoch, Seq: after + 1, From: s.router.Self(), Version: s.router.Version(),
			Entries: make([]peer.Entry, len(entries))}
		for i, e := range entries {
			if e.Seq != after+1+uint64(i) {
				// A gap within one epoch: not a history to replay.
				return -1, nil
			}
			// No previous deadline and no key count: the replica reads
			// each key, as it does for a round from an older sender.
			req.Entries[i] = peer.Entry{Delete: e.Delete, Expired: e.Expired, Key: string(e.Key), Value: string(e.Value), ExpiresAt: e.ExpiresAt}
		}
		rctx, cancel := context.WithTimeout(ctx, s.replTimeout)
		err = s.peers.Replicate(rctx, node, req)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("send writes %d to %d: %w", after+1, entries[len(entries)-1].Seq, err)
		}
		after = entries[len(entries)-1].Seq
		sent += len(entries)
		c.add(len(entries))
	}
	return sent, nil
}

// release deletes this node's copy of a partition it no longer owns (the
// last step of a migration away from it). It is safe against a stale
// table: the table guard refuses a table older than one acted on before,
// and a node that becomes an owner again gets a fresh copy before it counts
// as in sync.
func (s *Engine) release(p int) {
	m, err := s.store.Meta(p)
	if err != nil || (m.Epoch == 0 && m.Seq == 0 && m.Keys == 0) {
		return
	}
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	if s.checkTable() != nil {
		return
	}
	if rt, ok := s.router.Route(p); !ok || slices.Contains(rt.Owners(), s.router.Self()) {
		return
	}
	if err := s.store.Drop(p); err != nil {
		s.log.Error("could not delete a released partition copy", "partition", p, "err", err)
		return
	}
	s.log.Info("released partition: deleted the local copy this node no longer owns", "partition", p, "keys", m.Keys)
}
