package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/peer"
)

// Scan limits: a page holds at most MaxScanLimit keys (DefaultScanLimit
// unless asked), and each partition's part of it at most scanPartBytes of
// keys and values beyond its first key, so that a node's memory for one
// page is bounded by the limit and the partition count, never by the
// range.
const (
	DefaultScanLimit = 100
	MaxScanLimit     = 10000
	scanPageBytes    = 4 << 20
	minScanPartBytes = 64 << 10
)

// ScanSpec is one page of a range read: keys in [Start, End) (no end when
// !HasEnd), after After when HasAfter (the previous page's last key).
type ScanSpec struct {
	Start, End string
	HasEnd     bool
	After      string
	HasAfter   bool
	Limit      int
	Values     bool
	Stale      bool
}

// ScanPage is one page of a range read.
type ScanPage struct {
	Items []peer.ScanItem
	// More: the range holds keys after the last item.
	More bool
	// Positions holds, per partition, the write number its part of the
	// page is a view of.
	Positions map[int]uint64
}

// Scan reads one page of a range across every partition: each partition's
// primary (or, when stale, a copy) returns its first keys of the range,
// and the page is their merge in key order, cut where every partition's
// part is still complete.
func (s *Engine) Scan(ctx context.Context, spec ScanSpec) (ScanPage, error) {
	if err := s.ready(); err != nil {
		return ScanPage{}, err
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	parts := s.router.Partitions()
	req := peer.ScanReq{Start: spec.Start, End: spec.End, HasEnd: spec.HasEnd, Limit: spec.Limit, Values: spec.Values, Stale: spec.Stale,
		MaxBytes: max(minScanPartBytes, scanPageBytes/parts)}
	if spec.HasAfter && spec.After >= spec.Start {
		req.Start, req.Exclusive = spec.After, true
	}
	resps := make([]peer.ScanResp, parts)
	errs := make([]error, parts)
	var wg sync.WaitGroup
	for p := range parts {
		wg.Go(func() { resps[p], errs[p] = s.scanPartition(ctx, p, req) })
	}
	wg.Wait()
	// Never a page with a partition missing: the whole page fails.
	for _, err := range errs {
		if err != nil {
			return ScanPage{}, err
		}
	}
	page := ScanPage{Positions: make(map[int]uint64, parts)}
	// A partition that stopped early bounds what the page may show: past
	// its last key it may hold keys the page would otherwise skip.
	bound, bounded := "", false
	n := 0
	for p, r := range resps {
		page.Positions[p] = r.Position
		n += len(r.Items)
		if r.More && len(r.Items) > 0 {
			if last := r.Items[len(r.Items)-1].Key; !bounded || last < bound {
				bound, bounded = last, true
			}
		}
	}
	items := make([]peer.ScanItem, 0, min(n, spec.Limit+1))
	for _, r := range resps {
		for _, it := range r.Items {
			if !bounded || it.Key <= bound {
				items = append(items, it)
			}
		}
	}
	slices.SortFunc(items, func(a, b peer.ScanItem) int { return strings.Compare(a.Key, b.Key) })
	page.More = bounded
	if len(items) > spec.Limit {
		items, page.More = items[:spec.Limit], true
	}
	page.Items = items
	return page, nil
}

func (s *Engine) scanPartition(ctx context.Context, p int, req peer.ScanReq) (peer.ScanResp, error) {
	req.Partition = p
	var out peer.ScanResp
	err := retry(ctx, func() error {
		rt, ok := s.router.Route(p)
		if !ok || rt.Primary == "" {
			return errcode.New(errcode.Unavailable, "partition %d has no primary", p)
		}
		target := rt.Primary
		if self := s.router.Self(); req.Stale && (rt.Primary == self || rt.IsInSync(self)) {
			target = self
		}
		req.Epoch = rt.Epoch
		r, err := s.peers.Scan(ctx, target, req)
		if errors.Is(err, errcode.ErrOutcomeUnknown) {
			err = errcode.New(errcode.Unavailable, "%v", err)
		}
		out = r
		return err
	})
	return out, err
}

// ServeScan answers one partition's part of a range read: as its primary,
// under the read lease, from a copy whose every write is committed, or,
// when stale, from this node's copy.
func (s *Engine) ServeScan(ctx context.Context, req peer.ScanReq) (peer.ScanResp, error) {
	if err := s.validPartition(req.Partition); err != nil {
		return peer.ScanResp{}, err
	}
	req.Limit = min(max(req.Limit, 1), MaxScanLimit)
	req.MaxBytes = min(max(req.MaxBytes, 1), scanPageBytes)
	if req.Stale {
		m, err := s.store.Meta(req.Partition)
		if err != nil {
			return peer.ScanResp{}, err
		}
		return s.scanLocal(req, m.Seq)
	}
	for attempt := 0; ; attempt++ {
		resp, err := s.leasedScan(ctx, req)
		if err != errNoLease || attempt > 0 {
			return resp, err
		}
		lctx, cancel := context.WithTimeout(ctx, leaseRenew)
		s.renewLeases(lctx)
		cancel()
	}
}

func (s *Engine) leasedScan(ctx context.Context, req peer.ScanReq) (peer.ScanResp, error) {
	p := req.Partition
	l := s.lock(p)
	l.RLock()
	rt, err := s.checkPrimary(p, req.Epoch)
	l.RUnlock()
	if err != nil {
		return peer.ScanResp{}, err
	}
	// The page's position must be one a watch can start from.
	if _, _, err := s.committed(ctx, p, rt); err != nil {
		return peer.ScanResp{}, err
	}
	l.RLock()
	defer l.RUnlock()
	if rt, err = s.checkPrimary(p, req.Epoch); err != nil {
		return peer.ScanResp{}, err
	}
	m, err := s.store.Meta(p)
	if err != nil {
		return peer.ScanResp{}, err
	}
	if epoch, seq, _ := s.feed(p).get(); epoch != rt.Epoch || seq != m.Seq {
		return peer.ScanResp{}, errcode.New(errcode.NotReady, "partition %d: a write that a replica missed is being resolved", p)
	}
	resp, err := s.scanLocal(req, m.Seq)
	if err != nil {
		return resp, err
	}
	if !s.stillPrimary(p, rt) {
		return peer.ScanResp{}, errNoLease
	}
	return resp, nil
}

func (s *Engine) scanLocal(req peer.ScanReq, pos uint64) (peer.ScanResp, error) {
	var end []byte
	if req.HasEnd {
		end = []byte(req.End)
	}
	items, more, err := s.store.Scan(req.Partition, []byte(req.Start), end, req.Exclusive, req.Limit, req.MaxBytes, req.Values, time.Now().UnixMilli())
	if err != nil {
		return peer.ScanResp{}, fmt.Errorf("scan partition %d: %w", req.Partition, err)
	}
	out := peer.ScanResp{More: more, Position: pos, Items: make([]peer.ScanItem, len(items))}
	for i, it := range items {
		out.Items[i] = peer.ScanItem{Key: string(it.Key), Value: string(it.Value), Revision: it.Revision}
	}
	return out, nil
}
