package engine

import (
	"context"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
)

// The sweep deletes expired keys from storage. Reads never return a key
// past its deadline whether or not it has been swept; the sweep keeps dead
// keys from piling up on disk and gives each expiry its own revision.
// Every sweepInterval the primary of each partition looks up to
// sweepBatch keys past their deadline and deletes them in one round, so a
// node sweeps at most sweepBatch/sweepInterval keys per second for each
// partition it leads (2,048 per second per partition: 16 partitions drain
// a million expired keys on three nodes in about 30 s).
const (
	sweepInterval = 250 * time.Millisecond
	sweepBatch    = 512
)

func (s *Engine) runSweep(ctx context.Context) {
	tick := time.NewTicker(sweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for p := range s.router.Partitions() {
			if ctx.Err() != nil {
				return
			}
			s.sweep(ctx, p)
		}
	}
}

// sweep deletes a batch of p's expired keys if this node leads p.
func (s *Engine) sweep(ctx context.Context, p int) {
	rt, ok := s.router.Route(p)
	if !ok || rt.Primary != s.router.Self() {
		return
	}
	keys, err := s.store.Expired(p, time.Now().UnixMilli(), sweepBatch)
	if err != nil {
		s.log.Warn("expiry sweep: read the expiry index", "partition", p, "err", err)
		return
	}
	if len(keys) == 0 {
		return
	}
	ops := make([]Op, len(keys))
	for i, k := range keys {
		ops[i] = Op{Key: string(k), Expire: true}
	}
	wctx, cancel := context.WithTimeout(ctx, s.reqTimeout)
	defer cancel()
	_, err = s.primaryWrite(wctx, p, &pendingWrite{epoch: rt.Epoch, ops: ops})
	switch {
	case err == nil:
		s.count.sweeps.Add(1)
		s.count.expired.Add(uint64(len(keys)))
	case errcode.Retryable(err), errcode.Of(err) == errcode.NotEnoughReplicas:
		// The partition is moving or short of copies; reads hide the
		// keys meanwhile, and the next sweep tries again.
		s.log.Debug("expiry sweep: delete expired keys", "partition", p, "keys", len(keys), "err", err)
	default:
		s.log.Warn("expiry sweep: delete expired keys", "partition", p, "keys", len(keys), "err", err)
	}
}
