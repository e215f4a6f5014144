package engine

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// Batching bounds: a round commits at most this many writes and bytes.
const (
	maxBatchOps   = 512
	maxBatchBytes = 4 << 20
)

// writeQueue collects a partition's writes while a round is in flight.
// The goroutine holding token commits everything queued as one round: one
// local commit (one fsync) and one replication message per in-sync
// replica, so the cost of a round is shared by every write in it.
type writeQueue struct {
	mu    sync.Mutex
	items []*pendingWrite
	token chan struct{}
}

// pendingWrite is one forwarded request: one op, or a batch of ops of the
// partition (all or none of them when atomic).
type pendingWrite struct {
	epoch     uint64
	ops       []Op
	atomic    bool
	minCopies int
	done      chan roundResult // buffered; gets exactly one result
}

type roundResult struct {
	results []peer.Result
	err     error
}

func (s *Engine) queue(p int) *writeQueue {
	s.queuesMu.Lock()
	defer s.queuesMu.Unlock()
	q, ok := s.queues[p]
	if !ok {
		q = &writeQueue{token: make(chan struct{}, 1)}
		s.queues[p] = q
	}
	return q
}

// take removes the next round's writes from the queue: up to maxBatchOps
// ops and maxBatchBytes, but always at least one request whole (a batch
// request is never split: the client limits keep it within maxBatchOps).
func (q *writeQueue) take() []*pendingWrite {
	q.mu.Lock()
	defer q.mu.Unlock()
	n, ops, size := 0, 0, 0
	for n < len(q.items) {
		for _, op := range q.items[n].ops {
			size += len(op.Key) + len(op.Value)
		}
		ops += len(q.items[n].ops)
		if n > 0 && (size > maxBatchBytes || ops > maxBatchOps) {
			break
		}
		n++
	}
	batch := q.items[:n:n]
	q.items = append([]*pendingWrite(nil), q.items[n:]...)
	return batch
}

// withdraw removes w if no round has taken it yet.
func (q *writeQueue) withdraw(w *pendingWrite) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, x := range q.items {
		if x == w {
			q.items = append(q.items[:i], q.items[i+1:]...)
			return true
		}
	}
	return false
}

// primaryWrite orders, persists and replicates w's ops, as part of the next
// round of partition p. It returns once the round is acknowledged by every
// in-sync replica (or failed).
func (s *Engine) primaryWrite(ctx context.Context, p int, w *pendingWrite) ([]peer.Result, error) {
	q := s.queue(p)
	w.done = make(chan roundResult, 1)
	q.mu.Lock()
	q.items = append(q.items, w)
	q.mu.Unlock()
	for {
		select {
		case r := <-w.done:
			return r.results, r.err
		case <-ctx.Done():
			if q.withdraw(w) {
				return nil, errcode.New(errcode.Unavailable, "deadline passed before the write started")
			}
			// A round has it: its outcome is coming, and soon (the
			// round's replication is bounded).
			r := <-w.done
			return r.results, r.err
		case q.token <- struct{}{}:
			s.commitUntilDone(p, q, w)
			<-q.token
		}
	}
}

// commitUntilDone runs rounds of q, holding its token, until w has its
// result: w may not be in the first round if the queue was longer than one.
func (s *Engine) commitUntilDone(p int, q *writeQueue, w *pendingWrite) {
	for len(w.done) == 0 {
		batch := q.take()
		if len(batch) == 0 {
			// Unreachable while w waits: only w's own goroutine
			// withdraws it, and every earlier round has delivered.
			return
		}
		s.commitRound(p, batch)
	}
}

func failAll(batch []*pendingWrite, err error) {
	for _, w := range batch {
		w.done <- roundResult{err: err}
	}
}

// commitRound decides, persists and replicates batch as consecutive writes
// of p and delivers each write's result. The partition lock is held
// throughout, so rounds reach replicas in sequence order, conditions are
// checked against every write before them, and no read sees a write
// before it is acknowledged.
func (s *Engine) commitRound(p int, batch []*pendingWrite) {
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	rt, err := s.checkPrimary(p, 0)
	if err != nil {
		failAll(batch, err)
		return
	}
	changed, err := s.resolve(p, rt)
	if err != nil {
		failAll(batch, err)
		return
	}
	if changed {
		// Replicas left the in-sync set: count copies on the new table.
		if rt, err = s.checkPrimary(p, 0); err != nil {
			failAll(batch, err)
			return
		}
	}
	m, err := s.store.Meta(p)
	if err != nil {
		failAll(batch, fmt.Errorf("partition %d meta: %w", p, err))
		return
	}
	if changed {
		// The replicas that missed a round are out: every write here is
		// on every in-sync copy.
		s.feed(p).advance(rt.Epoch, m.Seq)
	}
	floor := s.router.MinCopies()
	copies := 1 + len(rt.InSync)
	r := newRound(s.store, p, m, time.Now())
	var writes []*pendingWrite
	for _, w := range batch {
		switch need := max(floor, w.minCopies); {
		case w.epoch != 0 && w.epoch != rt.Epoch:
			w.done <- roundResult{err: errcode.New(errcode.EpochMismatch, "partition %d is at epoch %d here, request used %d", p, rt.Epoch, w.epoch)}
		case copies < need:
			w.done <- roundResult{err: errcode.New(errcode.NotEnoughReplicas,
				"partition %d has %d of the %d copies a write needs in sync; nothing was written", p, copies, need)}
		default:
			if err := r.add(w); err != nil {
				w.done <- roundResult{err: err}
				continue
			}
			writes = append(writes, w)
		}
	}
	if len(writes) == 0 {
		return
	}
	if len(r.entries) == 0 {
		// Nothing to write (failed conditions, deletes of absent keys):
		// the answers were read from this copy, so, like a read, they
		// need this node to still lead the partition.
		if !s.stillPrimary(p, rt) {
			failAll(writes, errNoLease)
			return
		}
		for i, w := range writes {
			w.done <- roundResult{results: r.results[i]}
		}
		return
	}
	acked, err := s.replicateRound(p, rt, m.Seq+1, r)
	if err == nil {
		// On every in-sync copy: the change feed may show it, before any
		// client hears it was acknowledged.
		s.feed(p).advance(rt.Epoch, m.Seq+uint64(len(r.entries)))
	}
	for i, w := range writes {
		switch need := max(floor, w.minCopies); {
		case err != nil:
			w.done <- roundResult{err: err}
		case acked < need:
			w.done <- roundResult{err: errcode.New(errcode.OutcomeUnknown,
				"partition %d: the write reached only %d of the %d copies it needs", p, acked, need)}
		default:
			w.done <- roundResult{results: r.results[i]}
		}
	}
}

// stillPrimary checks, as a read does, that this node still leads p.
func (s *Engine) stillPrimary(p int, rt Route) bool {
	if s.confirmRead {
		return s.confirm(p, rt)
	}
	return s.leases.valid(p, rt.Epoch, rt.InSync, time.Now())
}

// replicateRound persists r's entries as writes first, first+1, ... of p
// and sends them to every in-sync replica. It returns how many copies,
// this one included, have them on disk.
func (s *Engine) replicateRound(p int, rt Route, first uint64, r *round) (int, error) {
	sops := make([]storage.Op, len(r.entries))
	for i, e := range r.entries {
		sops[i] = storageOp(e)
	}
	keys := r.keys
	if err := s.store.ApplyReplicated(p, rt.Epoch, first, sops, keys); err != nil {
		// Storage failed before anything was replicated; the batch is
		// atomic, so nothing was applied.
		return 0, errcode.New(errcode.Unavailable, "persist write: %v", err)
	}

	req := peer.ReplicateReq{Partition: p, Epoch: rt.Epoch, Seq: first, From: s.router.Self(), Version: s.router.Version(), Entries: r.entries, Keys: &keys}
	failed := s.fanOut(context.Background(), rt.InSync, req)
	// From here on the writes are on this node's disk: any failure leaves
	// their outcome unknown to the clients, never "not applied".
	for node, ferr := range failed {
		s.log.Warn("replica missed writes; removing it from the in-sync set",
			"partition", p, "epoch", rt.Epoch, "replica", node, "seq", first, "writes", len(r.entries), "err", ferr)
	}
	if err := s.dropReplicas(p, rt.Epoch, failed); err != nil {
		return 0, errcode.New(errcode.OutcomeUnknown, "partition %d: %v", p, err)
	}
	return 1 + len(rt.InSync) - len(failed), nil
}

// dropReplicas removes nodes, which missed a round, from p's in-sync set.
// Until that succeeds the partition takes no further round (see resolve):
// a primary cut off from the cluster keeps at most one round on its disk
// that the others lack, which is what bounds the revision gap a new primary
// leaves (see advanceForEpoch).
func (s *Engine) dropReplicas(p int, epoch uint64, failed map[string]error) error {
	if len(failed) == 0 {
		return nil
	}
	for n := range failed {
		s.markUnresolved(p, epoch, n, false)
	}
	defer s.Kick()
	return s.resolveNodes(p, epoch)
}

// markUnresolved records that node must leave p's in-sync set before p
// takes another round. added marks a node whose addition to the set had
// an unknown outcome: the local table not listing it proves nothing then
// (the addition may not have been applied here yet), so only a confirmed
// removal resolves it.
func (s *Engine) markUnresolved(p int, epoch uint64, node string, added bool) {
	s.unresolvedMu.Lock()
	defer s.unresolvedMu.Unlock()
	u := s.unresolved[p]
	if u.epoch != epoch || u.nodes == nil {
		u = unresolvedRound{epoch: epoch, nodes: map[string]bool{}}
	}
	u.nodes[node] = u.nodes[node] || added
	s.unresolved[p] = u
	s.noteUnsettledLocked()
}

// noteUnsettledLocked recomputes anyUnsettled after unresolved changed;
// the caller holds unresolvedMu.
func (s *Engine) noteUnsettledLocked() {
	unsettled := false
	for _, u := range s.unresolved {
		for _, unknownAdd := range u.nodes {
			unsettled = unsettled || unknownAdd
		}
	}
	s.anyUnsettled.Store(unsettled)
}

// unresolvedRound lists the replicas of a partition that must be taken out
// of its in-sync set before its next round: they missed a round, or their
// addition to the set had an unknown outcome (the value true).
type unresolvedRound struct {
	epoch uint64
	nodes map[string]bool
}

// resolve removes, before a new round of p starts, the replicas that
// missed an earlier round, and reports whether there were any; while it
// cannot, the partition refuses writes (they are not applied).
func (s *Engine) resolve(p int, rt Route) (bool, error) {
	s.unresolvedMu.Lock()
	u, ok := s.unresolved[p]
	s.unresolvedMu.Unlock()
	if !ok {
		return false, nil
	}
	if u.epoch != rt.Epoch {
		s.unresolvedMu.Lock()
		delete(s.unresolved, p)
		s.noteUnsettledLocked()
		s.unresolvedMu.Unlock()
		return false, nil
	}
	if err := s.resolveNodes(p, rt.Epoch); err != nil {
		return false, errcode.New(errcode.Unavailable, "partition %d: a replica missed a write and cannot be taken out of the in-sync set yet: %v", p, err)
	}
	return true, nil
}

// resolveNodes takes p's unresolved replicas out of its in-sync set.
func (s *Engine) resolveNodes(p int, epoch uint64) error {
	s.unresolvedMu.Lock()
	u := s.unresolved[p]
	added := maps.Clone(u.nodes)
	s.unresolvedMu.Unlock()
	for node, unknownAdd := range added {
		if unknownAdd {
			if err := s.resolveAddition(p, epoch, node); err != nil {
				return err
			}
			continue
		}
		if rt, ok := s.router.Route(p); ok && rt.Epoch == epoch && !rt.IsInSync(node) {
			s.forgetUnresolved(p, node)
			continue
		}
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := s.control.SetInSync(cctx, p, epoch, node, false)
		cancel()
		if err != nil {
			return fmt.Errorf("replica %s missed the write and could not be removed from the in-sync set: %w", node, err)
		}
		s.forgetUnresolved(p, node)
	}
	return nil
}

// resolveAddition settles an addition of node to p's in-sync set whose
// outcome was unknown, by making it again: the addition is idempotent, and
// since the copy no round has run, so node holds every write. Once this
// node has applied it (or the table here already shows it), node is in
// sync and rounds include it; a refusal because the epoch moved on, or
// because node is no longer a replica, means it is not in sync at this
// epoch either.
func (s *Engine) resolveAddition(p int, epoch uint64, node string) error {
	if rt, ok := s.router.Route(p); ok && (rt.Epoch != epoch || rt.IsInSync(node)) {
		s.forgetUnresolved(p, node)
		return nil
	}
	cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err := s.control.SetInSync(cctx, p, epoch, node, true)
	cancel()
	if c := errcode.Of(err); err != nil && c != errcode.EpochMismatch && c != errcode.Conflict {
		return fmt.Errorf("the addition of %s to the in-sync set is not settled yet: %w", node, err)
	}
	s.forgetUnresolved(p, node)
	return nil
}

// additionUnsettled reports whether p has an addition to its in-sync set
// at epoch whose outcome is not known yet.
func (s *Engine) additionUnsettled(p int, epoch uint64) bool {
	if !s.anyUnsettled.Load() {
		return false
	}
	s.unresolvedMu.Lock()
	defer s.unresolvedMu.Unlock()
	u, ok := s.unresolved[p]
	if !ok || u.epoch != epoch {
		return false
	}
	for _, unknownAdd := range u.nodes {
		if unknownAdd {
			return true
		}
	}
	return false
}

func (s *Engine) forgetUnresolved(p int, node string) {
	s.unresolvedMu.Lock()
	defer s.unresolvedMu.Unlock()
	u, ok := s.unresolved[p]
	if !ok {
		return
	}
	delete(u.nodes, node)
	if len(u.nodes) == 0 {
		delete(s.unresolved, p)
	}
	s.noteUnsettledLocked()
}

// fanOut sends req to every node in parallel and returns those that failed.
func (s *Engine) fanOut(ctx context.Context, nodes []string, req peer.ReplicateReq) map[string]error {
	if len(nodes) == 0 {
		return nil
	}
	var mu sync.Mutex
	failed := map[string]error{}
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.replTimeout)
			defer cancel()
			if err := s.peers.Replicate(rctx, n, req); err != nil {
				mu.Lock()
				failed[n] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

// ServeForward runs writes sent to this node as the partition's primary
// (by a peer, or by this node itself).
func (s *Engine) ServeForward(ctx context.Context, req peer.ForwardReq) (peer.ForwardResp, error) {
	if len(req.Ops) == 0 || len(req.Ops) > MaxBatchOps {
		return peer.ForwardResp{}, errcode.New(errcode.BadRequest, "a forwarded write holds 1 to %d ops, not %d", MaxBatchOps, len(req.Ops))
	}
	if req.MinCopies < 0 || req.MinCopies > maxCopies {
		return peer.ForwardResp{}, errcode.New(errcode.BadRequest, "min_copies %d is out of range", req.MinCopies)
	}
	for _, op := range req.Ops {
		if err := s.validOp(req.Partition, op); err != nil {
			return peer.ForwardResp{}, err
		}
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	res, err := s.primaryWrite(ctx, req.Partition, &pendingWrite{epoch: req.Epoch, ops: req.Ops, atomic: req.Atomic, minCopies: req.MinCopies})
	return peer.ForwardResp{Results: res}, err
}

// validPartition checks a partition number a peer sent.
func (s *Engine) validPartition(p int) error {
	switch parts := s.router.Partitions(); {
	case parts == 0:
		// A node that has just restarted knows no table yet: the sender
		// may try again (or elsewhere).
		return errcode.New(errcode.NotReady, "no partition table on %s yet", s.router.Self())
	case p < 0 || p >= parts:
		return errcode.New(errcode.BadRequest, "no partition %d", p)
	}
	return nil
}

// validOp checks what a peer sent: a write of a key of partition p, within
// the limits. Clients' writes were checked by the KV API already; this
// keeps a buggy or hostile sender from storing what no client could.
func (s *Engine) validOp(p int, op Op) error {
	if err := s.validPartition(p); err != nil {
		return err
	}
	switch {
	case op.Key == "":
		return errcode.New(errcode.BadRequest, "write without a key")
	case op.TTLMillis < 0 || op.TTLMillis > MaxTTL.Milliseconds():
		return errcode.New(errcode.BadRequest, "ttl of %d ms is out of range", op.TTLMillis)
	case len(op.Key) > MaxKeyBytes || len(op.Value) > MaxValueBytes:
		return errcode.New(errcode.BadRequest, "write of a %d-byte key and a %d-byte value is over the limits", len(op.Key), len(op.Value))
	case s.router.PartitionOf(op.Key) != p:
		return errcode.New(errcode.BadRequest, "key %q belongs to partition %d, not %d", op.Key, s.router.PartitionOf(op.Key), p)
	}
	return nil
}

// validEntry checks a log entry a primary sent, as validOp checks an op.
func (s *Engine) validEntry(p int, e peer.Entry) error {
	if err := s.validOp(p, Op{Key: e.Key, Value: e.Value}); err != nil {
		return err
	}
	if e.ExpiresAt < 0 || e.PrevExpiresAt < 0 {
		return errcode.New(errcode.BadRequest, "entry with a negative deadline")
	}
	return nil
}

// awaitEpoch waits briefly for this node's table to reach epoch for p: a
// new primary may reach a replica before the replica has applied the Raft
// entry that made it primary.
func (s *Engine) awaitEpoch(ctx context.Context, p int, epoch uint64) (Route, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		rt, ok := s.router.Route(p)
		if ok && rt.Epoch > epoch {
			return rt, errcode.New(errcode.EpochMismatch, "partition %d is at epoch %d, request is for %d", p, rt.Epoch, epoch)
		}
		if ok && rt.Epoch == epoch {
			return rt, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return rt, errcode.New(errcode.NotReady, "partition %d: epoch %d not known here yet", p, epoch)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// awaitVersion waits briefly for this node's table to reach version.
func (s *Engine) awaitVersion(ctx context.Context, version uint64) error {
	deadline := time.Now().Add(2 * time.Second)
	for s.router.Version() < version {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errcode.New(errcode.NotReady, "partition table at version %d here, sender is at %d", s.router.Version(), version)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// checkReplica validates that this node may accept data for p at epoch from
// the node claiming to be its primary.
//
// The replica first waits until its table has reached the sender's version:
// a replica that was cut off may still hold a table from before it was
// dropped from the partition and added back, with the same epoch (removing
// a replica does not change the epoch). Acting on that table, it would take
// the copy and later, on applying its removal, delete it while the current
// table lists it as in sync.
func (s *Engine) checkReplica(ctx context.Context, p int, epoch uint64, from string, version uint64) error {
	if err := s.awaitVersion(ctx, version); err != nil {
		return err
	}
	if err := s.checkTable(); err != nil {
		return err
	}
	rt, err := s.awaitEpoch(ctx, p, epoch)
	if err != nil {
		return err
	}
	if rt.Primary != from {
		return errcode.New(errcode.EpochMismatch, "%s is not the primary of partition %d at epoch %d", from, p, epoch)
	}
	if !slices.Contains(rt.Replicas, s.router.Self()) {
		return errcode.New(errcode.EpochMismatch, "%s is not a replica of partition %d at epoch %d", s.router.Self(), p, epoch)
	}
	return nil
}

// ServeReplicate applies a primary's replication round on this replica.
func (s *Engine) ServeReplicate(ctx context.Context, req peer.ReplicateReq) error {
	return s.applyReplicate(ctx, req)
}

// applyReplicate applies a primary's round on this replica, in sequence
// order. A round that overlaps what is already applied (the primary
// retried) is applied from the first write this copy lacks.
func (s *Engine) applyReplicate(ctx context.Context, req peer.ReplicateReq) error {
	if len(req.Entries) == 0 {
		return errcode.New(errcode.BadRequest, "replication round without writes")
	}
	for _, e := range req.Entries {
		if err := s.validEntry(req.Partition, e); err != nil {
			return err
		}
	}
	l := s.lock(req.Partition)
	l.Lock()
	defer l.Unlock()
	if err := s.checkReplica(ctx, req.Partition, req.Epoch, req.From, req.Version); err != nil {
		return err
	}
	m, err := s.store.Meta(req.Partition)
	if err != nil {
		return err
	}
	last := req.Seq + uint64(len(req.Entries)) - 1
	switch {
	case m.Epoch != req.Epoch:
		return errcode.New(errcode.NotReady, "partition %d copy is from epoch %d; it needs a sync for epoch %d", req.Partition, m.Epoch, req.Epoch)
	case last <= m.Seq:
		return nil // already applied
	case req.Seq > m.Seq+1:
		return errcode.New(errcode.NotReady, "partition %d: got write %d after %d; it needs a sync", req.Partition, req.Seq, m.Seq)
	}
	entries := req.Entries[m.Seq+1-req.Seq:]
	sops := make([]storage.Op, len(entries))
	for i, e := range entries {
		sops[i] = storageOp(e)
	}
	// The primary's key count is for the end of the round, which is where
	// this copy will be too, however much of the round it already had.
	if req.Keys != nil {
		err = s.store.ApplyReplicated(req.Partition, req.Epoch, m.Seq+1, sops, *req.Keys)
	} else {
		_, err = s.store.ApplyBatch(req.Partition, req.Epoch, m.Seq+1, sops)
	}
	if err != nil {
		return fmt.Errorf("apply replicated writes: %w", err)
	}
	s.leases.heard(req.Partition, time.Now())
	return nil
}

// ServeInstall replaces this replica's copy of a partition with the
// primary's, streamed after accept. The copy is received and staged first, without
// the partition lock (a slow or stalled sender holds up nothing), and then
// swapped in under the lock once the table still says it should be.
func (s *Engine) ServeInstall(ctx context.Context, req peer.InstallReq, accept func() (io.Reader, error)) error {
	p, epoch := req.Partition, req.Epoch
	if err := s.validPartition(p); err != nil {
		return err
	}
	if err := s.checkReplica(ctx, p, epoch, req.From, req.Version); err != nil {
		return err
	}
	r, err := accept()
	if err != nil {
		return err
	}
	start := time.Now()
	ir, err := peer.NewInstallReader(r, MaxKeyBytes, MaxValueBytes+storage.RecordOverhead)
	if err != nil {
		return errcode.New(errcode.BadRequest, "%v", err)
	}
	seq := ir.Seq
	staged, err := s.store.StageInstall(p, epoch, seq, func() (storage.KV, bool, error) {
		k, v, ok, err := ir.Next()
		if err != nil || !ok {
			return storage.KV{}, ok, err
		}
		if err := s.validOp(p, Op{Key: string(k)}); err != nil {
			return storage.KV{}, false, err
		}
		if _, err := storage.DecodeRecord(v); err != nil {
			return storage.KV{}, false, fmt.Errorf("key %q: %w", k, err)
		}
		return storage.KV{Key: k, Value: v}, true, nil
	}, func() (uint64, func() (storage.LogRecord, bool, error), error) {
		floor, err := ir.Log()
		return floor, func() (storage.LogRecord, bool, error) {
			seq, raw, ok, err := ir.NextLog()
			if err != nil || !ok {
				return storage.LogRecord{}, false, err
			}
			e, err := storage.DecodeLog(seq, raw)
			if err == nil {
				err = s.validOp(p, Op{Key: string(e.Key), Value: string(e.Value)})
			}
			return storage.LogRecord{Seq: seq, Raw: raw}, true, err
		}, err
	})
	if err != nil {
		return errcode.New(errcode.BadRequest, "receive partition %d: %v", p, err)
	}
	defer staged.Close()
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	// The table may have moved on while the copy arrived.
	if err := s.checkReplica(ctx, p, epoch, req.From, req.Version); err != nil {
		return err
	}
	if err := staged.Commit(); err != nil {
		return fmt.Errorf("install partition %d: %w", p, err)
	}
	s.log.Info("installed partition copy from primary", "partition", p, "epoch", epoch, "seq", seq,
		"from", req.From, "took", time.Since(start).Round(time.Millisecond))
	return nil
}
