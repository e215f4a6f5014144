package kvapi

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Kick asks the background sync loop to look at the partitions now.
func (s *Server) Kick() {
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
func (s *Server) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.runLeases(ctx) })
	changed, stop := s.router.Changed()
	defer stop()
	defer s.peers.close()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	b := &backoffs{until: map[string]time.Time{}}
	for {
		s.syncPass(ctx, b)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-s.kick:
		case <-tick.C:
		}
	}
}

// syncWorkers bounds how many partitions are reconciled or copied at once.
const syncWorkers = 4

// backoffs remembers (partition, replica) pairs whose catch-up failed.
type backoffs struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (b *backoffs) active(key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return time.Now().Before(b.until[key])
}

func (b *backoffs) set(key string, d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d == 0 {
		delete(b.until, key)
		return
	}
	b.until[key] = time.Now().Add(d)
}

// syncPass looks at every partition this node leads, a few at a time.
func (s *Server) syncPass(ctx context.Context, b *backoffs) {
	self := s.router.Self()
	sem := make(chan struct{}, syncWorkers)
	var wg sync.WaitGroup
	for p := range s.router.Partitions() {
		if ctx.Err() != nil {
			break
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
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.syncPartition(ctx, rt, b)
		})
	}
	wg.Wait()
}

func (s *Server) syncPartition(ctx context.Context, rt Route, b *backoffs) {
	p := rt.Partition
	m, err := s.store.Meta(p)
	if err != nil {
		s.log.Error("read partition meta", "partition", p, "err", err)
		return
	}
	if m.Epoch != rt.Epoch {
		s.reconcile(ctx, p, rt.Epoch)
		return
	}
	for _, r := range rt.Replicas {
		if slices.Contains(rt.InSync, r) || !s.router.Alive(r) {
			continue
		}
		key := rt.Key(r)
		if b.active(key) {
			continue
		}
		if err := s.catchUp(ctx, p, rt.Epoch, r); err != nil {
			s.log.Warn("replica catch-up failed; will retry", "partition", p, "epoch", rt.Epoch, "replica", r, "err", err)
			b.set(key, 2*time.Second)
			continue
		}
		b.set(key, 0)
	}
}

// reconcile makes this node's copy the truth for a new epoch: every in-sync
// replica gets a fresh copy (dropping any write of the old epoch that was
// never acknowledged) or leaves the in-sync set, and only then does the
// primary mark itself ready.
func (s *Server) reconcile(ctx context.Context, p int, epoch uint64) {
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	rt, ok := s.router.Route(p)
	if !ok || rt.Primary != s.router.Self() || rt.Epoch != epoch {
		return
	}
	start := time.Now()
	for _, r := range rt.InSync {
		err := s.installOn(ctx, p, epoch, r)
		if err == nil {
			continue
		}
		s.log.Warn("could not reconcile replica for new epoch; removing it from the in-sync set",
			"partition", p, "epoch", epoch, "replica", r, "err", err)
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err = s.control.SetInSync(cctx, p, epoch, r, false)
		cancel()
		if err != nil {
			s.log.Warn("partition stays not ready", "partition", p, "epoch", epoch, "err", err)
			return
		}
	}
	// The previous primary may still hold a read lease this node granted:
	// serving before it runs out could let it answer a stale read.
	if d := time.Until(s.leases.primaryBlockedUntil(p)); d > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
	if err := s.store.SetEpoch(p, epoch); err != nil {
		s.log.Error("record partition epoch", "partition", p, "err", err)
		return
	}
	lvl := slog.LevelInfo
	if len(rt.InSync) == 0 {
		lvl = slog.LevelDebug
	}
	s.log.Log(ctx, lvl, "partition ready as primary", "partition", p, "epoch", epoch,
		"in_sync", rt.InSync, "took", time.Since(start).Round(time.Millisecond))
}

func (s *Server) installOn(ctx context.Context, p int, epoch uint64, node string) error {
	addr, ok := s.router.KVAddr(node)
	if !ok {
		return errorf(503, CodeUnavailable, "no address for %s", node)
	}
	ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return s.peers.install(ictx, addr, s.router.Self(), p, epoch, s.store)
}

// catchUp copies the partition to a replica and adds it to the in-sync set.
// The partition lock is held from the copy until the table shows the replica
// in sync, so no write can slip between the two.
func (s *Server) catchUp(ctx context.Context, p int, epoch uint64, node string) error {
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	rt, ok := s.router.Route(p)
	if !ok || rt.Primary != s.router.Self() || rt.Epoch != epoch || slices.Contains(rt.InSync, node) || !slices.Contains(rt.Replicas, node) {
		return nil
	}
	start := time.Now()
	if err := s.installOn(ctx, p, epoch, node); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.control.SetInSync(cctx, p, epoch, node, true); err != nil {
		return err
	}
	s.log.Info("replica caught up and in sync", "partition", p, "epoch", epoch, "replica", node,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// release deletes this node's copy of a partition it no longer owns (the
// last step of a migration away from it). It is safe against a stale
// table: the table guard refuses a table older than one acted on before,
// and a node that becomes an owner again gets a fresh copy before it counts
// as in sync.
func (s *Server) release(p int) {
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
