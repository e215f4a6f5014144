package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/peer"
)

// A watch streams a range's committed changes from a position per
// partition. Each node keeps, per partition that any of its watchers
// follows, one relay: a goroutine that follows the partition's history on
// its primary (one long-polled read at a time, whoever the primary is)
// into a bounded buffer. Watchers read the buffer and filter it
// themselves, so the primary's cost does not grow with the number of
// watchers. A watcher whose position is older than the buffer (it resumed
// from an old token) reads the primary's history directly, filtered there,
// until it reaches the buffer. Positions are write numbers, the same on
// every copy of the committed history, so a relay or a watcher that
// changes primary in a failover continues where it was: no gap, no
// duplicate.

// Watch limits.
const (
	// DefaultMaxWatchers bounds a node's open watches.
	DefaultMaxWatchers = 1000
	// relayEntries and relayBytes bound a relay's buffer. A watcher that
	// was reading the buffer and falls more than relayEntries changes
	// behind cannot keep up, and is cut; one that falls out of the buffer
	// by less (large values) reads the history directly until it is back.
	relayEntries = 4096
	relayBytes   = 4 << 20
	// relayIdle is how long a relay with no watcher keeps following, so
	// that watchers that reconnect find it warm.
	relayIdle = 30 * time.Second
	// relayWait is the long poll of a relay's read.
	relayWait = time.Second
	// relayCoalesce spaces a busy relay's reads, so that a partition
	// taking many rounds a second costs its primary a bounded number of
	// reads per node.
	relayCoalesce = 2 * time.Millisecond
	// directEntries caps one direct read of a watcher that catches up.
	directEntries = 512
	// minDirectWait is the least time a direct read gets, however short
	// the caller's wait.
	minDirectWait = 100 * time.Millisecond
)

// Watch errors.
var (
	// ErrTooManyWatchers refuses a watch beyond the node's limit.
	ErrTooManyWatchers = errcode.New(errcode.TooManyWatchers, "this node serves its maximum number of watches; try later or another node")
	// ErrSlowWatcher ends a watch that fell behind its node's buffer.
	ErrSlowWatcher = errors.New("the watcher fell too far behind the changes; resume from its last token")
)

// ResyncError ends a watch whose position in a partition is older than
// the partition's retained history: changes were dropped and the reader
// must read the range again.
type ResyncError struct {
	Partition int
	// Floor is the oldest position the history can be read from.
	Floor uint64
}

func (e *ResyncError) Error() string {
	return fmt.Sprintf("partition %d no longer retains the changes after this position; the oldest it can resume from is %d", e.Partition, e.Floor)
}

// WatchSpec selects a watch: every key with Prefix (one key when Exact),
// from From (position per partition; nil: from now).
type WatchSpec struct {
	Prefix string
	Exact  bool
	From   map[int]uint64
}

// Event is one committed change of a watched key.
type Event struct {
	Partition int
	peer.LogEntry
}

// Watcher follows a watch; it is used by one goroutine.
type Watcher struct {
	s      *Engine
	spec   WatchSpec
	parts  []int
	pos    map[int]uint64
	relays map[int]*relay
	// gen, per partition, is the relay generation whose buffer the
	// watcher has read near its head (0: not yet): falling far behind
	// that buffer afterwards means the watcher could not keep up.
	gen map[int]uint64
	sub *subscriber
	// pending lists partitions to look at on the next pass without
	// waiting for their relay: all of them at first, then those that
	// had more to read than one pass took, or whose read failed.
	pending map[int]bool
	next    int
	closed  bool
}

// subscriber is how relays wake a watcher: they mark their partition
// dirty and signal, so that a watcher following many partitions looks
// only at those that changed.
type subscriber struct {
	ch    chan struct{}
	mu    sync.Mutex
	dirty map[int]bool
}

func (s *subscriber) mark(p int) {
	s.mu.Lock()
	s.dirty[p] = true
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

// take moves the dirty partitions into into.
func (s *subscriber) take(into map[int]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.dirty {
		into[p] = true
		delete(s.dirty, p)
	}
}

// hub holds a node's relays and counts its watchers.
type hub struct {
	s           *Engine
	maxWatchers int
	mu          sync.Mutex
	watchers    int
	relays      map[int]*relay
}

func newHub(s *Engine, maxWatchers int) *hub {
	if maxWatchers <= 0 {
		maxWatchers = DefaultMaxWatchers
	}
	return &hub{s: s, maxWatchers: maxWatchers, relays: map[int]*relay{}}
}

// WatchPartitions lists the partitions a watch of spec follows.
func (s *Engine) WatchPartitions(spec WatchSpec) []int {
	if spec.Exact {
		return []int{s.router.PartitionOf(spec.Prefix)}
	}
	parts := make([]int, s.router.Partitions())
	for p := range parts {
		parts[p] = p
	}
	return parts
}

// Watchers is the number of open watches on this node.
func (s *Engine) Watchers() int {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.hub.watchers
}

// Watch opens a watch. From must hold a position for every partition the
// watch follows (WatchPartitions), or be nil to start from the present:
// each partition's committed position, asked of its primary.
func (s *Engine) Watch(ctx context.Context, spec WatchSpec) (*Watcher, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	parts := s.WatchPartitions(spec)
	pos := make(map[int]uint64, len(parts))
	if spec.From == nil {
		ctx, cancel := s.withDeadline(ctx)
		defer cancel()
		var mu sync.Mutex
		errs := make([]error, len(parts))
		var wg sync.WaitGroup
		for i, p := range parts {
			wg.Go(func() {
				resp, err := s.logFromPrimary(ctx, peer.LogReq{Partition: p, Now: true})
				errs[i] = err
				mu.Lock()
				pos[p] = resp.Position
				mu.Unlock()
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return nil, err
			}
		}
	} else {
		for _, p := range parts {
			v, ok := spec.From[p]
			if !ok {
				return nil, errcode.New(errcode.InvalidToken, "the token does not cover partition %d", p)
			}
			pos[p] = v
		}
	}
	h := s.hub
	h.mu.Lock()
	if h.watchers >= h.maxWatchers {
		h.mu.Unlock()
		return nil, ErrTooManyWatchers
	}
	h.watchers++
	h.mu.Unlock()
	s.count.watchesOpened.Add(1)
	w := &Watcher{s: s, spec: spec, parts: parts, pos: pos, relays: make(map[int]*relay, len(parts)),
		gen: make(map[int]uint64, len(parts)), sub: &subscriber{ch: make(chan struct{}, 1), dirty: map[int]bool{}},
		pending: make(map[int]bool, len(parts))}
	for _, p := range parts {
		w.pending[p] = true
		w.relays[p] = h.acquire(p, w.sub)
	}
	return w, nil
}

// Positions returns the watcher's position in every partition it follows:
// every matching change up to it has been returned by Next.
func (w *Watcher) Positions() map[int]uint64 {
	out := make(map[int]uint64, len(w.pos))
	for p, v := range w.pos {
		out[p] = v
	}
	return out
}

// Close releases the watcher.
func (w *Watcher) Close() {
	if w.closed {
		return
	}
	w.closed = true
	h := w.s.hub
	for p, r := range w.relays {
		h.release(p, r, w.sub)
	}
	h.mu.Lock()
	h.watchers--
	h.mu.Unlock()
}

func (w *Watcher) match(key string) bool {
	if w.spec.Exact {
		return key == w.spec.Prefix
	}
	return strings.HasPrefix(key, w.spec.Prefix)
}

// Next returns the next matching changes, at most max, in order within
// each partition. It waits up to wait for one; it returns none (and no
// error) when the wait is over, so that the caller can report progress.
// A *ResyncError or ErrSlowWatcher ends the watch.
func (w *Watcher) Next(ctx context.Context, max int, wait time.Duration) ([]Event, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	// A read from a primary that cannot be reached must not hold up the
	// caller's progress report: the reads of one call share its wait.
	readWait := wait
	if readWait < minDirectWait {
		readWait = minDirectWait
	}
	rctx, cancel := context.WithTimeout(ctx, readWait)
	defer cancel()
	backoff := 10 * time.Millisecond
	for {
		var out []Event
		var failed error
		w.sub.take(w.pending)
		// Start one further each call, so a busy partition cannot keep
		// the others waiting.
		w.next = (w.next + 1) % len(w.parts)
		for i := range w.parts {
			p := w.parts[(w.next+i)%len(w.parts)]
			if !w.pending[p] {
				continue
			}
			if len(out) >= max {
				break // still pending: the next call looks first
			}
			delete(w.pending, p)
			evs, more, err := w.take(rctx, p, max-len(out))
			if err != nil && rctx.Err() != nil {
				// Out of time for this call: report progress, come back.
				w.pending[p] = true
				if ctx.Err() != nil {
					return out, ctx.Err()
				}
				return out, nil
			}
			if err != nil {
				var rs *ResyncError
				if errors.As(err, &rs) || errors.Is(err, ErrSlowWatcher) {
					return out, err
				}
				failed = err
				w.pending[p] = true
				continue
			}
			if more {
				w.pending[p] = true
			}
			out = append(out, evs...)
		}
		if len(out) > 0 {
			return out, nil
		}
		var wake <-chan time.Time
		switch {
		case failed != nil:
			// A primary is away: try again soon, not in a loop.
			wake = time.After(backoff)
			backoff = min(2*backoff, 500*time.Millisecond)
		case len(w.pending) > 0:
			continue
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, nil
		case <-w.sub.ch:
		case <-wake:
		}
	}
}

// take returns partition p's matching changes after the watcher's
// position, from the relay's buffer or, when the position is older than
// the buffer, from the primary's history.
// more reports that the partition may have more to read right away.
func (w *Watcher) take(ctx context.Context, p, max int) (evs []Event, more bool, err error) {
	r := w.relays[p]
	evs, pos, head, gen, ahead, ok := r.read(w.pos[p], max, w.match)
	if ok && !ahead {
		w.pos[p] = pos
		// It counts as keeping up once it is near the head, not as soon
		// as it reaches the buffer's old end while catching up: from
		// there the next append would push it out again.
		if head-pos <= relayEntries/2 {
			w.gen[p] = gen
		}
		return evs, pos < head, nil
	}
	if !ok && w.gen[p] != 0 && w.gen[p] == gen && head > w.pos[p]+relayEntries {
		// It was reading the buffer and is now further behind than the
		// buffer ever holds.
		w.s.count.watchersCut.Add(1)
		return nil, false, ErrSlowWatcher
	}
	// Older than the buffer, or the relay has not started, or the
	// position is past the relay's (a scan's token can be, briefly; a
	// token the cluster never handed out is, and the primary says so).
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := w.s.logFromPrimary(rctx, peer.LogReq{Partition: p, After: w.pos[p], Limit: min(max, directEntries), Prefix: w.spec.Prefix, Exact: w.spec.Exact})
	if err != nil {
		return nil, false, err
	}
	if resp.Compacted {
		return nil, false, &ResyncError{Partition: p, Floor: resp.Floor}
	}
	out := make([]Event, 0, len(resp.Entries))
	for _, e := range resp.Entries {
		if e.Seq > w.pos[p] && w.match(e.Key) {
			out = append(out, Event{Partition: p, LogEntry: e})
		}
	}
	// Moving on, it looks again at once (the buffer, or the rest of the
	// history); standing still, it waits for the relay to move.
	moved := resp.Position > w.pos[p]
	w.pos[p] = resp.Position
	return out, moved, nil
}

// logFromPrimary reads partition p's history from its primary, retrying
// while the answer guarantees nothing (a primary moving).
func (s *Engine) logFromPrimary(ctx context.Context, req peer.LogReq) (peer.LogResp, error) {
	var out peer.LogResp
	err := retry(ctx, func() error {
		rt, ok := s.router.Route(req.Partition)
		if !ok || rt.Primary == "" {
			return errcode.New(errcode.Unavailable, "partition %d has no primary", req.Partition)
		}
		r, err := s.peers.Log(ctx, rt.Primary, req)
		if errors.Is(err, errcode.ErrOutcomeUnknown) {
			err = errcode.New(errcode.Unavailable, "%v", err)
		}
		out = r
		return err
	})
	return out, err
}

// relay follows one partition's committed history for a node's watchers.
type relay struct {
	p  int
	mu sync.Mutex
	// gen counts restarts of the buffer (0: not following yet); buf
	// holds the entries numbered in (base, pos].
	gen   uint64
	base  uint64
	pos   uint64
	buf   []peer.LogEntry
	bytes int
	subs  map[*subscriber]struct{}
	refs  int
	idle  time.Time
	stop  context.CancelFunc
}

func (h *hub) acquire(p int, sub *subscriber) *relay {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.relays[p]
	if !ok {
		ctx, cancel := context.WithCancel(context.Background())
		r = &relay{p: p, subs: map[*subscriber]struct{}{}, stop: cancel}
		h.relays[p] = r
		go h.follow(ctx, r)
	}
	r.mu.Lock()
	r.refs++
	r.subs[sub] = struct{}{}
	r.mu.Unlock()
	return r
}

func (h *hub) release(p int, r *relay, sub *subscriber) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refs--
	delete(r.subs, sub)
	if r.refs == 0 {
		r.idle = time.Now()
	}
}

// Close stops every relay (the engine is shutting down).
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for p, r := range h.relays {
		r.stop()
		delete(h.relays, p)
	}
}

// retire removes r if it has had no watcher for relayIdle.
func (h *hub) retire(r *relay) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refs > 0 || time.Since(r.idle) < relayIdle {
		return false
	}
	delete(h.relays, r.p)
	r.stop()
	return true
}

// follow runs a relay until it is retired.
func (h *hub) follow(ctx context.Context, r *relay) {
	backoff := 10 * time.Millisecond
	pause := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	for ctx.Err() == nil {
		if h.retire(r) {
			return
		}
		r.mu.Lock()
		started, after := r.gen != 0, r.pos
		r.mu.Unlock()
		req := peer.LogReq{Partition: r.p, Now: !started, After: after, Limit: maxLogEntries, WaitMillis: relayWait.Milliseconds()}
		rctx, cancel := context.WithTimeout(ctx, relayWait+3*time.Second)
		resp, err := h.s.logFromPrimary(rctx, req)
		cancel()
		if err != nil {
			if !pause(backoff) {
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		switch {
		case !started || resp.Compacted:
			// Start (again) from the present; watchers behind it read
			// the history directly and learn of any gap there.
			if resp.Compacted {
				resp, err = h.s.logFromPrimary(ctx, peer.LogReq{Partition: r.p, Now: true})
				if err != nil {
					continue
				}
			}
			r.restart(resp.Position)
		default:
			if r.append(after, resp) && !pause(relayCoalesce) {
				return
			}
		}
	}
}

func (r *relay) restart(pos uint64) {
	r.mu.Lock()
	r.gen++
	r.base, r.pos, r.buf, r.bytes = pos, pos, nil, 0
	r.mu.Unlock()
	r.wake()
}

// append adds a read's entries (read after position after) and reports
// whether there were any.
func (r *relay) append(after uint64, resp peer.LogResp) bool {
	r.mu.Lock()
	if after != r.pos || resp.Position <= r.pos {
		r.mu.Unlock()
		return false
	}
	for _, e := range resp.Entries {
		r.buf = append(r.buf, e)
		r.bytes += len(e.Key) + len(e.Value)
	}
	r.pos = resp.Position
	drop := 0
	for drop < len(r.buf) && (len(r.buf)-drop > relayEntries || r.bytes > relayBytes) {
		r.bytes -= len(r.buf[drop].Key) + len(r.buf[drop].Value)
		r.base = r.buf[drop].Seq
		drop++
	}
	if drop > 0 {
		r.buf = append([]peer.LogEntry(nil), r.buf[drop:]...)
	}
	r.mu.Unlock()
	r.wake()
	return len(resp.Entries) > 0
}

func (r *relay) wake() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for sub := range r.subs {
		sub.mark(r.p)
	}
}

// read returns the buffer's matching entries after pos, at most max, the
// position reached and the relay's head. ok is false when pos is older
// than the buffer (or the relay has not started), ahead when it is past
// the buffer: either way the caller must read elsewhere.
func (r *relay) read(pos uint64, max int, match func(string) bool) (evs []Event, reached, head, gen uint64, ahead, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen == 0 || pos < r.base {
		return nil, pos, r.pos, r.gen, false, false
	}
	if pos >= r.pos || max <= 0 {
		return nil, pos, r.pos, r.gen, pos > r.pos, true
	}
	// The first entry after pos.
	lo, hi := 0, len(r.buf)
	for lo < hi {
		mid := (lo + hi) / 2
		if r.buf[mid].Seq <= pos {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	reached = r.pos
	for i := lo; i < len(r.buf); i++ {
		e := r.buf[i]
		if len(evs) >= max {
			reached = r.buf[i-1].Seq
			break
		}
		if match(e.Key) {
			evs = append(evs, Event{Partition: r.p, LogEntry: e})
		}
	}
	return evs, reached, r.pos, r.gen, false, true
}
