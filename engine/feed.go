package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// Defaults of the retained history (the change feed's and tail
// catch-up's): per partition, the newest DefaultHistoryRevisions write
// numbers, none older than DefaultHistoryAge.
const (
	DefaultHistoryRevisions = 10000
	DefaultHistoryAge       = time.Hour
	// historyTrimEvery is how often each copy trims its history.
	historyTrimEvery = time.Second
	// maxLogEntries caps the entries of one history read, maxLogBytes
	// their keys and values beyond the first, and maxLogWait how long a
	// read may wait for a new write.
	maxLogEntries = 1024
	maxLogBytes   = 4 << 20
	maxLogWait    = 5 * time.Second
)

// feed is what the primary of a partition knows of its committed
// history: every write numbered up to seq is on every in-sync copy, so it
// survives a failover and may be streamed. Writes above it are on this
// node's disk only for the moment of a round (or until a replica that
// missed one is removed); a change feed never shows them.
type feed struct {
	mu    sync.Mutex
	epoch uint64 // 0: not known since this process started
	seq   uint64
	ch    chan struct{} // closed and replaced when seq moves
}

func (s *Engine) feed(p int) *feed {
	s.feedsMu.Lock()
	defer s.feedsMu.Unlock()
	f, ok := s.feeds[p]
	if !ok {
		f = &feed{ch: make(chan struct{})}
		s.feeds[p] = f
	}
	return f
}

// advance records that p's writes up to seq are committed at epoch; the
// caller holds the partition lock.
func (f *feed) advance(epoch, seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch == f.epoch && seq <= f.seq {
		return
	}
	f.epoch, f.seq = epoch, seq
	close(f.ch)
	f.ch = make(chan struct{})
}

func (f *feed) get() (epoch, seq uint64, changed <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.epoch, f.seq, f.ch
}

// committed returns how far p's history is committed, as its primary at
// rt's epoch. A primary that restarted does not know until it has checked
// that its in-sync replicas hold everything it does (it may have crashed
// in the middle of a round): establishFeed does that, under the partition
// lock, removing a replica that lacks writes from the in-sync set as a
// failed round would.
func (s *Engine) committed(ctx context.Context, p int, rt Route) (uint64, <-chan struct{}, error) {
	f := s.feed(p)
	if epoch, seq, ch := f.get(); epoch == rt.Epoch {
		return seq, ch, nil
	}
	if err := s.establishFeed(ctx, p); err != nil {
		return 0, nil, err
	}
	epoch, seq, ch := f.get()
	if epoch != rt.Epoch {
		return 0, nil, errcode.New(errcode.NotReady, "partition %d: committed history at epoch %d not known yet", p, rt.Epoch)
	}
	return seq, ch, nil
}

func (s *Engine) establishFeed(ctx context.Context, p int) error {
	l := s.lock(p)
	l.Lock()
	defer l.Unlock()
	rt, err := s.checkPrimary(p, 0)
	if err != nil {
		return err
	}
	if epoch, _, _ := s.feed(p).get(); epoch == rt.Epoch {
		return nil
	}
	if _, err := s.resolve(p, rt); err != nil {
		return err
	}
	if rt, err = s.checkPrimary(p, 0); err != nil {
		return err
	}
	m, err := s.store.Meta(p)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	behind := map[string]error{}
	var wg sync.WaitGroup
	for _, n := range rt.InSync {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, s.replTimeout)
			defer cancel()
			info, err := s.peers.CopyInfo(cctx, n, peer.CopyInfoReq{Partition: p})
			if err == nil && (info.Epoch != rt.Epoch || info.Seq != m.Seq) {
				err = fmt.Errorf("its copy is at epoch %d write %d, the primary's at epoch %d write %d", info.Epoch, info.Seq, rt.Epoch, m.Seq)
			}
			if err != nil {
				mu.Lock()
				behind[n] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for n, err := range behind {
		s.log.Warn("in-sync replica does not hold every write of the primary; removing it from the in-sync set",
			"partition", p, "epoch", rt.Epoch, "replica", n, "err", err)
	}
	if err := s.dropReplicas(p, rt.Epoch, behind); err != nil {
		return errcode.New(errcode.NotReady, "partition %d: %v", p, err)
	}
	s.feed(p).advance(rt.Epoch, m.Seq)
	return nil
}

// ServeLog answers from a partition's committed history, as its primary;
// with WaitMillis it holds the request until there is a write past After
// or the wait is over.
func (s *Engine) ServeLog(ctx context.Context, req peer.LogReq) (peer.LogResp, error) {
	if err := s.validPartition(req.Partition); err != nil {
		return peer.LogResp{}, err
	}
	if req.Limit <= 0 || req.Limit > maxLogEntries {
		req.Limit = maxLogEntries
	}
	wait := min(time.Duration(max(req.WaitMillis, 0))*time.Millisecond, maxLogWait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		resp, changed, err := s.readLog(ctx, req)
		if err != nil || req.Now || resp.Compacted || resp.Position > req.After || wait == 0 {
			return resp, err
		}
		select {
		case <-changed:
		case <-timer.C:
			return resp, nil
		case <-ctx.Done():
			return resp, nil
		}
	}
}

func (s *Engine) readLog(ctx context.Context, req peer.LogReq) (peer.LogResp, <-chan struct{}, error) {
	p := req.Partition
	l := s.lock(p)
	l.RLock()
	rt, err := s.checkPrimary(p, req.Epoch)
	l.RUnlock()
	if err != nil {
		return peer.LogResp{}, nil, err
	}
	seq, changed, err := s.committed(ctx, p, rt)
	if err != nil {
		return peer.LogResp{}, nil, err
	}
	// Like a read, the answer needs this node to still lead the
	// partition: a primary that was cut off, its table stale, must not
	// tell a reader that a position a newer primary handed out is ahead
	// of the history, nor that nothing came after one.
	if !s.stillPrimary(p, rt) {
		lctx, cancel := context.WithTimeout(ctx, leaseRenew)
		s.renewLeases(lctx)
		cancel()
		if !s.stillPrimary(p, rt) {
			return peer.LogResp{}, nil, errNoLease
		}
	}
	if req.Now {
		return peer.LogResp{Position: seq}, changed, nil
	}
	if req.After > seq {
		// No position handed out is ever past the committed history
		// (a token from elsewhere, or forged): the reader must resync.
		return peer.LogResp{Position: seq, Compacted: true, Floor: seq}, changed, nil
	}
	var keep func([]byte) bool
	if req.Prefix != "" {
		prefix := []byte(req.Prefix)
		keep = func(k []byte) bool { return bytes.HasPrefix(k, prefix) }
		if req.Exact {
			keep = func(k []byte) bool { return bytes.Equal(k, prefix) }
		}
	}
	// Committed entries never change, and the read comes from one
	// snapshot, so it needs no partition lock.
	entries, pos, err := s.store.ReadLog(p, req.After, seq, req.Limit, maxLogBytes, keep)
	var compacted *storage.ErrCompacted
	if errors.As(err, &compacted) {
		return peer.LogResp{Position: req.After, Compacted: true, Floor: compacted.Floor}, changed, nil
	}
	if err != nil {
		return peer.LogResp{}, nil, fmt.Errorf("read history of partition %d: %w", p, err)
	}
	out := peer.LogResp{Position: pos, Entries: make([]peer.LogEntry, len(entries))}
	for i, e := range entries {
		out.Entries[i] = peer.LogEntry{Seq: e.Seq, Entry: peer.Entry{
			Delete: e.Delete, Expired: e.Expired, Key: string(e.Key), Value: string(e.Value), ExpiresAt: e.ExpiresAt}}
	}
	return out, changed, nil
}

// ServeCopyInfo describes this node's copy of a partition.
func (s *Engine) ServeCopyInfo(ctx context.Context, req peer.CopyInfoReq) (peer.CopyInfo, error) {
	if err := s.validPartition(req.Partition); err != nil {
		return peer.CopyInfo{}, err
	}
	if err := s.checkTable(); err != nil {
		return peer.CopyInfo{}, err
	}
	m, err := s.store.Meta(req.Partition)
	if err != nil {
		return peer.CopyInfo{}, err
	}
	return peer.CopyInfo{Epoch: m.Epoch, Seq: m.Seq}, nil
}

// runTrim trims the history of every copy this node holds to the
// retention settings, until ctx ends.
func (s *Engine) runTrim(ctx context.Context) {
	t := time.NewTicker(historyTrimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		olderThan := time.Now().Add(-s.historyAge).UnixMilli()
		for _, p := range s.ownedPartitions() {
			if _, err := s.store.TrimLog(p, s.historyRevisions, olderThan); err != nil {
				s.log.Warn("trim partition history", "partition", p, "err", err)
			}
		}
	}
}
