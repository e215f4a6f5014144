package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// With Config.Watchers, a run opens that many watch streams on the prefix
// of the keys it writes before the writes start, and measures, besides
// the writes, how their events reach every stream: for each write of a
// key under the prefix that was acknowledged (the client got its 200),
// the time from the acknowledgement to the event's arrival on each
// stream, and which events never arrived or arrived twice.
//
// A write is known by its key and the revision its answer gave, which is
// the revision of its event, so events are matched to writes after the
// run: during it, a writer appends (key, revision, time of the 200) to a
// slice of its own and a stream's reader appends (key, revision, time of
// arrival) to one of its own, neither taking a lock or touching a map
// (24 bytes an event: a run that delivers 10 million events holds 240
// MB). An event may arrive before its write's 200 does (the write is
// committed before the answer is on its way back); its latency is then
// negative, and counted as before_ack.

// WatchTarget is a Target that can watch a prefix, as Config.Watchers
// needs, and whose writes report the revision each key got, by which
// their events are matched to them.
type WatchTarget interface {
	Target
	// SetRevision is Set that returns the key's new revision.
	SetRevision(ctx context.Context, worker int, key string, value []byte) (rev uint64, err error)
	// SetBatchRevisions is SetBatch that also sets revs[i] to keys[i]'s
	// new revision, 0 for a key not written.
	SetBatchRevisions(ctx context.Context, worker int, keys []string, value []byte, revs []uint64) (failed []error, err error)
	// OpenWatch opens the i-th watch stream (0, 1, ...) of every key with
	// prefix, from now: it returns once the store has set up the watch,
	// so that every write acknowledged afterwards is an event of the
	// stream. progress, if positive, asks for a progress event at that
	// interval while no change matches.
	OpenWatch(ctx context.Context, i int, prefix string, progress time.Duration) (WatchStream, error)
}

// WatchStream is an open watch. Next is called from one goroutine; Close
// may be called from another, and then ends a Next in progress.
type WatchStream interface {
	// Next returns the next event; its Key is valid until the next call.
	Next() (WatchEvent, error)
	Close() error
}

var _ WatchTarget = (*HTTPTarget)(nil)

// Watch settings' defaults.
const (
	DefaultWatchProgress = time.Second
	DefaultWatchGrace    = 10 * time.Second
	// watchOpeners is how many watches are opened at a time.
	watchOpeners = 16
)

// OpenWatch sends GET /kv/watch?prefix=P&since=now&progress=D to address
// i mod the number of addresses, on a connection of its own, and reads
// the answer's head and its first event, which must be a progress event.
// The stream then has no read deadline but its stall timeout: no event
// (not even a progress event) for 5 progress intervals, and at least 5s,
// ends it with a timeout error.
func (t *HTTPTarget) OpenWatch(ctx context.Context, i int, prefix string, progress time.Duration) (WatchStream, error) {
	ai := i % len(t.addrs)
	addr := t.addrs[ai]
	nc, err := t.dial(ctx, ai)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (WatchStream, error) {
		nc.Close()
		return nil, err
	}
	target := appendQueryEscape([]byte("/kv/watch?prefix="), prefix)
	target = append(target, "&since=now"...)
	if progress > 0 {
		target = append(target, "&progress="...)
		target = append(target, progress.String()...)
	}
	head := appendRequestHead(nil, http.MethodGet, string(target), addr, t.authHeader+"Accept: text/event-stream\r\n", -1)
	if t.timeout > 0 {
		_ = nc.SetDeadline(time.Now().Add(t.timeout))
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := nc.Write(head); err != nil {
		return fail(&KindError{Kind: "transport", Err: fmt.Errorf("GET %s/kv/watch: %w", addr, err)})
	}
	dc := &stallConn{Conn: nc}
	resp, err := http.ReadResponse(bufio.NewReaderSize(dc, 32<<10), &http.Request{Method: http.MethodGet})
	if err != nil {
		return fail(&KindError{Kind: "transport", Err: fmt.Errorf("GET %s/kv/watch: %w", addr, err)})
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		kind := "http_" + strconv.Itoa(resp.StatusCode)
		if code, ok := jsonStringBytes(topValue(body, "code")); ok && len(code) > 0 {
			kind += ":" + string(code)
		}
		return fail(&KindError{Kind: kind, Err: fmt.Errorf("GET %s%s: %s", addr, target, bytes.TrimSpace(body))})
	}
	w := &httpWatch{nc: nc, r: newSSEReader(resp.Body, 64<<10)}
	ev, err := w.Next()
	switch {
	case err != nil && ErrorKind(err) == "bad_answer":
		return fail(err)
	case err != nil:
		return fail(&KindError{Kind: "transport", Err: fmt.Errorf("GET %s/kv/watch: the first event: %w", addr, err)})
	case ev.Kind != EventProgress:
		return fail(&KindError{Kind: "bad_answer", Err: fmt.Errorf("GET %s/kv/watch: the first event is %s, not progress", addr, ev.Kind)})
	}
	_ = nc.SetDeadline(time.Time{})
	if progress <= 0 {
		progress = 5 * time.Second // the server's default
	}
	dc.stall = max(5*time.Second, 5*progress)
	return w, nil
}

// stallConn sets a read deadline stall from now before each read, when
// stall is set.
type stallConn struct {
	net.Conn
	stall time.Duration
}

func (c *stallConn) Read(p []byte) (int, error) {
	if c.stall > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.stall))
	}
	return c.Conn.Read(p)
}

// httpWatch is an open /kv/watch stream.
type httpWatch struct {
	nc net.Conn
	r  *sseReader
}

func (w *httpWatch) Next() (WatchEvent, error) {
	_, data, err := w.r.Next()
	if err != nil {
		return WatchEvent{}, err
	}
	ev, ok := parseWatchEvent(data)
	if !ok {
		return ev, &KindError{Kind: "bad_answer", Err: fmt.Errorf("watch event %.200q", data)}
	}
	return ev, nil
}

func (w *httpWatch) Close() error { return w.nc.Close() }

// topValue returns the JSON text of the top-level member name of the JSON
// object b (nil if there is none).
func topValue(b []byte, name string) []byte {
	var out []byte
	walkJSON(b, func(depth int, k, v []byte) {
		if depth == 1 && out == nil && string(k) == name {
			out = v
		}
	})
	return out
}

// WatchResult is the watchers' part of a Result.
type WatchResult struct {
	// Watchers is the number of streams opened, OpenErrors the number that
	// could not be, by kind (http_503:too_many_watchers, transport...).
	Watchers       int              `json:"watchers"`
	OpenErrors     int64            `json:"open_errors"`
	OpenErrorKinds map[string]int64 `json:"open_error_kinds,omitempty"`
	Prefix         string           `json:"prefix"`
	// Writes is the number of acknowledged writes of keys under the
	// prefix, Expected their events on all the streams (Writes times
	// Watchers), Delivered those that arrived (each write once per
	// stream), Missing the rest.
	Writes    int64 `json:"writes"`
	Expected  int64 `json:"expected"`
	Delivered int64 `json:"delivered"`
	Missing   int64 `json:"missing"`
	// Duplicates counts events that arrived again on a stream that had
	// had them; OutOfOrder events of a key older than one the stream had
	// already had; Unmatched set events of the key space that match no
	// acknowledged write (one whose request failed but which was
	// written, or another client's); Foreign set events of keys outside
	// the key space; Other the delete and expire events.
	Duplicates int64 `json:"duplicates"`
	OutOfOrder int64 `json:"out_of_order"`
	Unmatched  int64 `json:"unmatched"`
	Foreign    int64 `json:"foreign"`
	Other      int64 `json:"other"`
	Progress   int64 `json:"progress_events"`
	// Complete is the number of streams that had every expected event.
	Complete int `json:"complete"`
	// Ended counts the streams that ended before the run did, by why:
	// cut:REASON, resync_required, eof, stalled (no event for the stall
	// timeout), bad_answer, transport.
	Ended     int64            `json:"ended"`
	EndKinds  map[string]int64 `json:"end_kinds,omitempty"`
	BeforeAck int64            `json:"before_ack"`
	// The latency from a write's acknowledgement to its event's arrival,
	// over every delivered event of every stream; MinMs is negative when
	// an event came before its write's 200.
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
	MinMs  float64 `json:"min_ms"`
	// MaxGapMs is the longest a stream went without any event, progress
	// events included, while it was open.
	MaxGapMs float64 `json:"max_gap_ms"`
	// EventsPerSec is the events delivered per second, from the first
	// write to the end of the wait after the last.
	EventsPerSec float64 `json:"events_per_sec"`
	// GraceSeconds is how long after the last write the tool waited for
	// the events still on their way.
	GraceSeconds float64 `json:"grace_seconds"`
}

// Wrong reports events that no correct watch delivers: a duplicate, a
// key's revisions out of order, or an event missing while no stream ended
// early (a stream cut as a slow consumer misses the rest by design).
func (w *WatchResult) Wrong() bool {
	return w.Duplicates > 0 || w.OutOfOrder > 0 || w.Missing > 0 && w.Ended == 0
}

// writeID is one write: the key's index in the key space and the revision
// the write gave it.
type writeID struct {
	key int
	rev uint64
}

// stamp is a write and a time, since the run's epoch: its acknowledgement
// or its event's arrival.
type stamp struct {
	id writeID
	at time.Duration
}

// watchStream is one stream of a run and what its reader recorded.
type watchStream struct {
	st         WatchStream
	deliveries []stamp
	received   atomic.Int64 // set events of the key space, for the grace wait
	done       chan struct{}
	// Written by the reader, read once it is done.
	progress, other, foreign int64
	last, maxGap             time.Duration
	end                      string
}

// watchRun is the watchers of a run.
type watchRun struct {
	epoch     time.Time
	keyPrefix string
	prefix    string
	streams   []*watchStream
	openErrs  map[string]int64
	closing   atomic.Bool
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// openWatches opens c.Watchers streams, watchOpeners at a time, and starts
// their readers.
func openWatches(ctx context.Context, c Config, wt WatchTarget, epoch time.Time) *watchRun {
	r := &watchRun{epoch: epoch, keyPrefix: c.keyPrefix(), prefix: c.watchPrefix(), openErrs: map[string]int64{}}
	streams := make([]*watchStream, c.Watchers)
	kinds := make([]string, c.Watchers)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(watchOpeners, c.Watchers) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= c.Watchers {
					return
				}
				st, err := wt.OpenWatch(ctx, i, r.prefix, c.watchProgress())
				if err != nil {
					kinds[i] = ErrorKind(err)
					continue
				}
				streams[i] = &watchStream{st: st, done: make(chan struct{}), last: time.Since(epoch)}
			}
		})
	}
	wg.Wait()
	for i, s := range streams {
		if s == nil {
			r.openErrs[kinds[i]]++
			continue
		}
		r.streams = append(r.streams, s)
		r.wg.Go(func() { r.read(s) })
	}
	return r
}

// read records a stream's events until it ends or is closed.
func (r *watchRun) read(s *watchStream) {
	defer close(s.done)
	for {
		ev, err := s.st.Next()
		at := time.Since(r.epoch)
		if err != nil {
			if !r.closing.Load() {
				s.end = endKind(err)
			}
			return
		}
		s.maxGap = max(s.maxGap, at-s.last)
		s.last = at
		switch ev.Kind {
		case EventSet:
			i, ok := keyIndex(ev.Key, r.keyPrefix)
			if !ok {
				s.foreign++
				continue
			}
			s.deliveries = append(s.deliveries, stamp{writeID{i, ev.Revision}, at})
			s.received.Add(1)
		case EventProgress:
			s.progress++
		case EventResync:
			s.end = "resync_required"
			return
		case EventCut:
			s.end = "cut:" + ev.Reason
			return
		default:
			s.other++
		}
	}
}

// endKind names why a stream ended.
func endKind(err error) string {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "stalled"
	}
	var ke *KindError
	if errors.As(err, &ke) {
		return ke.Kind
	}
	return "transport"
}

// received is the set events of the key space all streams have had.
func (r *watchRun) received() int64 {
	var n int64
	for _, s := range r.streams {
		n += s.received.Load()
	}
	return n
}

// settle waits, at most grace, until every stream still open has had at
// least expected events (or has ended), and returns how long it waited.
func (r *watchRun) settle(expected int64, grace time.Duration) time.Duration {
	start := time.Now()
	for time.Since(start) < grace {
		waiting := false
		for _, s := range r.streams {
			select {
			case <-s.done:
				continue
			default:
			}
			if s.received.Load() < expected {
				waiting = true
				break
			}
		}
		if !waiting {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// close closes the streams and waits for their readers; it does nothing
// the second time.
func (r *watchRun) close() { r.closeOnce.Do(r.closeStreams) }

func (r *watchRun) closeStreams() {
	r.closing.Store(true)
	at := time.Since(r.epoch)
	for _, s := range r.streams {
		_ = s.st.Close()
	}
	r.wg.Wait()
	for _, s := range r.streams {
		if s.end == "" {
			s.maxGap = max(s.maxGap, at-s.last)
		}
	}
}

// result tallies the run's watchers against acks, the acknowledged writes
// of keys under the prefix; keys is the size of the key space.
func (r *watchRun) result(acks []stamp, keys int) *WatchResult {
	res := &WatchResult{Watchers: len(r.streams), Prefix: r.prefix}
	for k, v := range r.openErrs {
		if res.OpenErrorKinds == nil {
			res.OpenErrorKinds = map[string]int64{}
		}
		res.OpenErrorKinds[k] += v
		res.OpenErrors += v
	}
	deliveries := make([][]stamp, len(r.streams))
	var maxGap time.Duration
	for i, s := range r.streams {
		deliveries[i] = s.deliveries
		res.Progress += s.progress
		res.Other += s.other
		res.Foreign += s.foreign
		maxGap = max(maxGap, s.maxGap)
		if s.end != "" {
			if res.EndKinds == nil {
				res.EndKinds = map[string]int64{}
			}
			res.EndKinds[s.end]++
			res.Ended++
		}
	}
	res.MaxGapMs = ms(maxGap)
	t := tallyWatch(acks, deliveries, keys)
	res.Writes, res.Expected, res.Delivered, res.Missing = t.writes, t.writes*int64(len(r.streams)), t.delivered, t.writes*int64(len(r.streams))-t.delivered
	res.Duplicates, res.OutOfOrder, res.Unmatched, res.BeforeAck, res.Complete = t.duplicates, t.outOfOrder, t.unmatched, t.beforeAck, t.complete
	l := t.latencies
	res.P50Ms, res.P90Ms, res.P99Ms, res.P999Ms = pct(l, 0.50), pct(l, 0.90), pct(l, 0.99), pct(l, 0.999)
	if len(l) > 0 {
		res.MinMs, res.MaxMs = ms(l[0]), ms(l[len(l)-1])
	}
	return res
}

// watchTally is how the events of the streams match the writes.
type watchTally struct {
	writes     int64 // distinct acknowledged writes
	delivered  int64 // (stream, write) pairs that arrived
	duplicates int64
	outOfOrder int64
	unmatched  int64
	beforeAck  int64
	complete   int             // streams that had every write
	latencies  []time.Duration // of the delivered events, sorted
}

// tallyWatch matches each stream's events (streams[i], in the order they
// arrived) with acks, the acknowledged writes: an event is delivered the
// first time its write arrives on a stream, a duplicate after that,
// unmatched if it is no acknowledged write, and out of order if the
// stream had already delivered a later revision of its key. keys bounds
// the key indexes (those at or past it are unmatched).
func tallyWatch(acks []stamp, streams [][]stamp, keys int) watchTally {
	var t watchTally
	index := make(map[writeID]int32, len(acks))
	at := make([]time.Duration, 0, len(acks))
	for _, a := range acks {
		if _, dup := index[a.id]; dup {
			continue // two answers cannot give one key the same revision
		}
		index[a.id] = int32(len(at))
		at = append(at, a.at)
	}
	t.writes = int64(len(at))
	n := 0
	for _, s := range streams {
		n += len(s)
	}
	t.latencies = make([]time.Duration, 0, n)
	seen := make([]uint64, (len(at)+63)/64)
	last := make([]uint64, keys) // the latest revision delivered, by key
	for _, s := range streams {
		clear(seen)
		clear(last)
		var delivered int64
		for _, e := range s {
			w, ok := index[e.id]
			if !ok || e.id.key < 0 || e.id.key >= keys {
				t.unmatched++
				continue
			}
			if seen[w/64]&(1<<(w%64)) != 0 {
				t.duplicates++
				continue
			}
			seen[w/64] |= 1 << (w % 64)
			delivered++
			if e.id.rev < last[e.id.key] {
				t.outOfOrder++
			}
			last[e.id.key] = max(last[e.id.key], e.id.rev)
			d := e.at - at[w]
			if d < 0 {
				t.beforeAck++
			}
			t.latencies = append(t.latencies, d)
		}
		t.delivered += delivered
		if delivered == t.writes {
			t.complete++
		}
	}
	slices.Sort(t.latencies)
	return t
}
