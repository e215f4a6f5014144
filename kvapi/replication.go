package kvapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// primaryWrite orders, persists and replicates one write. The partition lock
// is held throughout, so writes reach replicas in sequence order and no read
// sees a write before it is acknowledged.
func (s *Server) primaryWrite(ctx context.Context, p int, epoch uint64, op opMsg) error {
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	rt, err := s.checkPrimary(p, epoch)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "deadline passed before the write started")
	}
	m, err := s.store.Meta(p)
	if err != nil {
		return fmt.Errorf("partition %d meta: %w", p, err)
	}
	seq := m.Seq + 1
	if err := s.store.Apply(p, rt.Epoch, seq, op.storageOp()); err != nil {
		// Storage failed before anything was replicated; bbolt rolled the
		// transaction back, so nothing was applied.
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "persist write: %v", err)
	}

	req := replicateReq{Partition: p, Epoch: rt.Epoch, Seq: seq, From: s.router.Self(), Version: s.router.Version(), Op: op}
	failed := s.fanOut(ctx, rt.InSync, req)
	// From here on the write is on this node's disk: any failure leaves its
	// outcome unknown to the client, never "not applied".
	for node, ferr := range failed {
		s.log.Warn("replica missed a write; removing it from the in-sync set",
			"partition", p, "epoch", rt.Epoch, "replica", node, "seq", seq, "err", ferr)
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := s.control.SetInSync(cctx, p, rt.Epoch, node, false)
		cancel()
		if err != nil {
			return errorf(http.StatusServiceUnavailable, CodeOutcomeUnknown,
				"replica %s of partition %d missed the write and could not be removed from the in-sync set: %v", node, p, err)
		}
		s.Kick()
	}
	return nil
}

// fanOut sends req to every node in parallel and returns those that failed.
func (s *Server) fanOut(ctx context.Context, nodes []string, req replicateReq) map[string]error {
	if len(nodes) == 0 {
		return nil
	}
	var mu sync.Mutex
	failed := map[string]error{}
	var wg sync.WaitGroup
	for _, n := range nodes {
		addr, ok := s.router.KVAddr(n)
		if !ok {
			failed[n] = errors.New("no address known")
			continue
		}
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.replTimeout)
			defer cancel()
			if err := s.peers.replicate(rctx, addr, req); err != nil {
				mu.Lock()
				failed[n] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes)).Decode(v); err != nil {
		writeError(w, errorf(http.StatusBadRequest, CodeInvalidJSON, "decode request: %v", err))
		return false
	}
	return true
}

// handleForwardedWrite runs a write sent by another node to this primary.
func (s *Server) handleForwardedWrite(w http.ResponseWriter, r *http.Request) {
	var req forwardReq
	if !decodeJSON(w, r, &req) {
		return
	}
	ctx, cancel := s.withDeadline(r.Context())
	defer cancel()
	if err := s.primaryWrite(ctx, req.Partition, req.Epoch, req.Op); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (s *Server) handleForwardedRead(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p, err1 := strconv.Atoi(q.Get("partition"))
	epoch, err2 := strconv.ParseUint(q.Get("epoch"), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		writeError(w, errorf(http.StatusBadRequest, CodeBadRequest, "bad partition or epoch: %v", err))
		return
	}
	stale := q.Get("consistency") == "stale"
	if stale {
		epoch = 0
	}
	v, err := s.localRead(p, epoch, q.Get("key"), stale)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, readResp{Value: v})
}

// awaitEpoch waits briefly for this node's table to reach epoch for p: a
// new primary may reach a replica before the replica has applied the Raft
// entry that made it primary.
func (s *Server) awaitEpoch(ctx context.Context, p int, epoch uint64) (Route, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		rt, ok := s.router.Route(p)
		if ok && rt.Epoch > epoch {
			return rt, errorf(http.StatusConflict, CodeEpochMismatch, "partition %d is at epoch %d, request is for %d", p, rt.Epoch, epoch)
		}
		if ok && rt.Epoch == epoch {
			return rt, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return rt, errorf(http.StatusServiceUnavailable, CodeNotReady, "partition %d: epoch %d not known here yet", p, epoch)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// awaitVersion waits briefly for this node's table to reach version.
func (s *Server) awaitVersion(ctx context.Context, version uint64) error {
	deadline := time.Now().Add(2 * time.Second)
	for s.router.Version() < version {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errorf(http.StatusServiceUnavailable, CodeNotReady, "partition table at version %d here, sender is at %d", s.router.Version(), version)
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
func (s *Server) checkReplica(ctx context.Context, p int, epoch uint64, from string, version uint64) error {
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
		return errorf(http.StatusConflict, CodeEpochMismatch, "%s is not the primary of partition %d at epoch %d", from, p, epoch)
	}
	if !slices.Contains(rt.Replicas, s.router.Self()) {
		return errorf(http.StatusConflict, CodeEpochMismatch, "%s is not a replica of partition %d at epoch %d", s.router.Self(), p, epoch)
	}
	return nil
}

// handleReplicate applies one write on a replica, in sequence order.
func (s *Server) handleReplicate(w http.ResponseWriter, r *http.Request) {
	var req replicateReq
	if !decodeJSON(w, r, &req) {
		return
	}
	l := s.lock(req.Partition)
	l.Lock()
	defer l.Unlock()
	if err := s.checkReplica(r.Context(), req.Partition, req.Epoch, req.From, req.Version); err != nil {
		writeError(w, err)
		return
	}
	m, err := s.store.Meta(req.Partition)
	if err != nil {
		writeError(w, err)
		return
	}
	switch {
	case m.Epoch != req.Epoch:
		writeError(w, errorf(http.StatusConflict, CodeNotReady, "partition %d copy is from epoch %d; it needs a sync for epoch %d", req.Partition, m.Epoch, req.Epoch))
		return
	case req.Seq <= m.Seq:
		// A duplicate of a write already applied (the primary retried).
		writeJSON(w, http.StatusOK, struct{}{})
		return
	case req.Seq != m.Seq+1:
		writeError(w, errorf(http.StatusConflict, CodeNotReady, "partition %d: got write %d after %d; it needs a sync", req.Partition, req.Seq, m.Seq))
		return
	}
	if err := s.store.Apply(req.Partition, req.Epoch, req.Seq, req.Op.storageOp()); err != nil {
		writeError(w, fmt.Errorf("apply replicated write: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// handleInstall replaces this replica's copy of a partition with the
// primary's, streamed in the request body.
func (s *Server) handleInstall(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p, err1 := strconv.Atoi(q.Get("partition"))
	epoch, err2 := strconv.ParseUint(q.Get("epoch"), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		writeError(w, errorf(http.StatusBadRequest, CodeBadRequest, "bad partition or epoch: %v", err))
		return
	}
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	version, _ := strconv.ParseUint(q.Get("version"), 10, 64)
	if err := s.checkReplica(r.Context(), p, epoch, q.Get("from"), version); err != nil {
		writeError(w, err)
		return
	}
	seq, next, err := readInstallStream(bufio.NewReaderSize(r.Body, 64<<10), MaxBodyBytes)
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, CodeBadRequest, "%v", err))
		return
	}
	start := time.Now()
	if err := s.store.Install(p, epoch, seq, next); err != nil {
		writeError(w, fmt.Errorf("install partition %d: %w", p, err))
		return
	}
	s.log.Info("installed partition copy from primary", "partition", p, "epoch", epoch, "seq", seq,
		"from", q.Get("from"), "took", time.Since(start).Round(time.Millisecond))
	writeJSON(w, http.StatusOK, struct{}{})
}
