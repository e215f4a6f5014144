package loadgen

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

func TestSSEReader(t *testing.T) {
	type ev struct{ id, data string }
	long := strings.Repeat("x", 100)
	tests := []struct {
		name    string
		in      string
		want    []ev
		wantErr error // after the events
	}{
		{name: "one event", in: "id: 1\ndata: {\"a\":1}\n\n", want: []ev{{"1", `{"a":1}`}}, wantErr: io.EOF},
		{name: "two events", in: "id: 1\ndata: a\n\nid: 2\ndata: b\n\n", want: []ev{{"1", "a"}, {"2", "b"}}, wantErr: io.EOF},
		{name: "CRLF", in: "id: 7\r\ndata: a\r\n\r\ndata: b\r\n\r\n", want: []ev{{"7", "a"}, {"7", "b"}}, wantErr: io.EOF},
		{name: "data lines are joined", in: "data: a\ndata:\ndata: b\n\n", want: []ev{{"", "a\n\nb"}}, wantErr: io.EOF},
		{name: "one space after the colon is dropped, not two", in: "data:x\n\ndata:  y\n\n", want: []ev{{"", "x"}, {"", " y"}}, wantErr: io.EOF},
		{name: "comments, event, retry and unknown fields", in: ": keep-alive\nevent: foo\nretry: 10\nfoo: bar\ndata: z\n:\n\n", want: []ev{{"", "z"}}, wantErr: io.EOF},
		{name: "a field with no colon has an empty value", in: "data\n\n", want: []ev{{"", ""}}, wantErr: io.EOF},
		{name: "no data, no event; the id stays", in: "\n\nid: 5\n\n\ndata: y\n\n", want: []ev{{"5", "y"}}, wantErr: io.EOF},
		{name: "an id with NUL is ignored", in: "id: 3\ndata: a\n\nid: 4\x00\ndata: b\n\n", want: []ev{{"3", "a"}, {"3", "b"}}, wantErr: io.EOF},
		{name: "an empty id resets it", in: "id: 3\ndata: a\n\nid\ndata: b\n\n", want: []ev{{"3", "a"}, {"", "b"}}, wantErr: io.EOF},
		{name: "a line longer than the buffer", in: "id: " + long + "\ndata: " + long + long + "\n\n", want: []ev{{long, long + long}}, wantErr: io.EOF},
		{name: "an event cut after a line", in: "data: a\n\ndata: b\n", want: []ev{{"", "a"}}, wantErr: io.ErrUnexpectedEOF},
		{name: "an event cut in a line", in: "data: a\n\ndata: b", want: []ev{{"", "a"}}, wantErr: io.ErrUnexpectedEOF},
		{name: "a comment cut by the end", in: "data: a\n\n: x", want: []ev{{"", "a"}}, wantErr: io.ErrUnexpectedEOF},
		{name: "empty", in: "", wantErr: io.EOF},
		{name: "a line too long", in: "data: " + strings.Repeat("y", maxSSELine+1) + "\n\n", wantErr: errSSELineTooLong},
	}
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
		size int
	}{
		{"whole", func(r io.Reader) io.Reader { return r }, 4096},
		{"16-byte buffer", func(r io.Reader) io.Reader { return r }, 16},
		{"a byte at a time", iotest.OneByteReader, 16},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			if rd.name == "a byte at a time" && len(tt.in) > 1<<16 {
				continue
			}
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				r := newSSEReader(rd.wrap(strings.NewReader(tt.in)), rd.size)
				var got []ev
				var err error
				for {
					var id, data []byte
					if id, data, err = r.Next(); err != nil {
						break
					}
					got = append(got, ev{string(id), string(data)})
				}
				if !slices.Equal(got, tt.want) || !errors.Is(err, tt.wantErr) {
					t.Errorf("events %.300q then %v; want %.300q then %v", got, err, tt.want, tt.wantErr)
				}
			})
		}
	}
}

func TestParseWatchEvent(t *testing.T) {
	tests := []struct {
		data   string
		ok     bool
		kind   EventKind
		key    string
		rev    uint64
		reason string
	}{
		{data: `{"type":"set","key":"bench:00000001","value":"xx","revision":513,"token":"VwF"}`, ok: true, kind: EventSet, key: "bench:00000001", rev: 513},
		{data: `{"token":"t","revision":7,"value":"\"type\":\"delete\"","key":"k","type":"set"}`, ok: true, kind: EventSet, key: "k", rev: 7},
		{data: `{"type":"set","key":"a\"b\u0041\\","revision":1}`, ok: true, kind: EventSet, key: `a"bA\`, rev: 1},
		{data: `{"type":"set","key":"k","value":"v","revision":2,"expires_at":"2026-12-02T04:37:17.140Z","token":"x"}`, ok: true, kind: EventSet, key: "k", rev: 2},
		{data: `{"type":"delete","key":"k","revision":3,"token":"x"}`, ok: true, kind: EventDelete, key: "k", rev: 3},
		{data: `{"type":"expire","key":"k","revision":4,"token":"x"}`, ok: true, kind: EventExpire, key: "k", rev: 4},
		{data: `{"type":"progress","token":"VwFw"}`, ok: true, kind: EventProgress},
		{data: `{"type":"resync_required","partition":3,"revision":9,"token":"x","error":"..."}`, ok: true, kind: EventResync},
		{data: `{"type":"cut","reason":"slow_consumer","token":"x","error":"behind"}`, ok: true, kind: EventCut, reason: "slow_consumer"},
		{data: `{"type":"new_kind","key":"k"}`, ok: true, kind: EventOther},
		{data: `{"type":"set","key":"k","value":{"revision":5},"revision":6}`, ok: true, kind: EventSet, key: "k", rev: 6},
		{data: `{"type":"set","key":"k","value":"v"}`}, // no revision
		{data: `{"type":"set","revision":1}`},                 // no key
		{data: `{"type":"set","key":"k","revision":"1"}`},     // a quoted revision
		{data: `{"type":"set","key":"k","revision":-1}`},      // not unsigned
		{data: `{"key":"k","revision":1}`},                    // no type
		{data: `{"type":"set","key":"k","revision":1`},        // cut
		{data: `data: {"type":"set","key":"k","revision":1}`}, // not JSON
		{data: ``}, // nothing
		{data: `{"type":7,"key":"k","revision":1}`},                     // a type that is no string
		{data: `{"type":"set","key":["k"],"revision":1,"x":{"key":2}}`}, // a key that is no string
	}
	for _, tt := range tests {
		ev, ok := parseWatchEvent([]byte(tt.data))
		if ok != tt.ok {
			t.Errorf("%s: ok %v, want %v", tt.data, ok, tt.ok)
			continue
		}
		if ok && (ev.Kind != tt.kind || string(ev.Key) != tt.key || ev.Revision != tt.rev || ev.Reason != tt.reason) {
			t.Errorf("%s: %v %q rev %d reason %q; want %v %q rev %d reason %q", tt.data, ev.Kind, ev.Key, ev.Revision, ev.Reason, tt.kind, tt.key, tt.rev, tt.reason)
		}
	}
}

func TestKeyIndex(t *testing.T) {
	for _, prefix := range []string{DefaultKeyPrefix, "{r}:k", ""} {
		for _, i := range []int{0, 1, 99999999, 100000000, 123456789012} {
			k := appendKey(nil, prefix, i)
			if got, ok := keyIndex(k, prefix); !ok || got != i {
				t.Errorf("keyIndex(%q, %q) = %d, %v; want %d", k, prefix, got, ok, i)
			}
		}
	}
	for _, k := range []string{"bench:1", "bench:0000000", "bench:000000001", "bench:0000000x", "bench:-0000001", "other:00000001", "bench:00000001 ", "", "bench:1234567890123456789"} {
		if i, ok := keyIndex([]byte(k), DefaultKeyPrefix); ok {
			t.Errorf("keyIndex(%q) = %d: want no key of the key space", k, i)
		}
	}
	if Key(42) != "bench:00000042" {
		t.Errorf("Key(42) = %q", Key(42))
	}
}

func TestBatchResults(t *testing.T) {
	for _, tt := range []struct{ doc, want string }{
		{`{"count":2,"results":[{"status":200,"op":"set","key":"a","revision":1},{"status":200,"op":"set","key":"b","revision":513}]}`, "200/1 200/513"},
		// Fields in another order, a failed result with no revision, and
		// a nested "prev" whose revision is not the result's.
		{`{"results":[{"key":"a","revision":4,"status":200},{"status":503,"code":"unavailable"},{"prev":{"revision":1,"status":9},"status":200,"revision":2}],"count":3}`, "200/4 503/- 200/2"},
		{`{"results":[{"revision":4},{"status":200}]}`, "200/-"},
		{`{"results":[],"count":0}`, ""},
		{`{"results":[{"status":200,"revision":1}]`, "-"},
		{`{"code":"too_many_ops"}`, "-"},
	} {
		var got []string
		ok := batchResults([]byte(tt.doc), func(status, rev []byte) {
			r := "-"
			if rev != nil {
				r = string(rev)
			}
			got = append(got, string(status)+"/"+r)
		})
		s := strings.Join(got, " ")
		if !ok {
			s = "-"
		}
		if s != tt.want {
			t.Errorf("%s: %q, want %q", tt.doc, s, tt.want)
		}
	}
}

func TestTallyWatch(t *testing.T) {
	w := func(key int, rev uint64, at time.Duration) stamp {
		return stamp{writeID{key, rev}, at * time.Millisecond}
	}
	acks := []stamp{w(1, 1, 10), w(2, 2, 20), w(1, 3, 30)}
	tests := []struct {
		name    string
		acks    []stamp
		streams [][]stamp
		want    watchTally // latencies in ms
		lat     []time.Duration
	}{
		{name: "every event once", acks: acks,
			streams: [][]stamp{{w(1, 1, 12), w(2, 2, 25), w(1, 3, 35)}, {w(2, 2, 21), w(1, 1, 11), w(1, 3, 31)}},
			want:    watchTally{writes: 3, delivered: 6, complete: 2}, lat: []time.Duration{1, 1, 1, 2, 5, 5}},
		{name: "an event before its 200", acks: acks,
			streams: [][]stamp{{w(1, 1, 12), w(2, 2, 19), w(1, 3, 30)}},
			want:    watchTally{writes: 3, delivered: 3, beforeAck: 1, complete: 1}, lat: []time.Duration{-1, 0, 2}},
		{name: "missing", acks: acks,
			streams: [][]stamp{{w(1, 1, 12), w(1, 3, 35)}, {}},
			want:    watchTally{writes: 3, delivered: 2}, lat: []time.Duration{2, 5}},
		{name: "duplicates count once as delivered", acks: acks,
			streams: [][]stamp{{w(1, 1, 12), w(1, 1, 13), w(2, 2, 22), w(1, 3, 31), w(2, 2, 40)}},
			want:    watchTally{writes: 3, delivered: 3, duplicates: 2, complete: 1}, lat: []time.Duration{1, 2, 2}},
		{name: "a key's older revision after a newer one", acks: acks,
			streams: [][]stamp{{w(1, 3, 31), w(2, 2, 32), w(1, 1, 33)}},
			want:    watchTally{writes: 3, delivered: 3, outOfOrder: 1, complete: 1}, lat: []time.Duration{1, 12, 23}},
		{name: "unmatched: no such write, a key past the key space", acks: acks,
			streams: [][]stamp{{w(1, 2, 12), w(7, 1, 13), w(-1, 1, 14), w(1, 1, 15)}},
			want:    watchTally{writes: 3, delivered: 1, unmatched: 3}, lat: []time.Duration{5}},
		{name: "a write acknowledged twice is one", acks: append([]stamp{w(2, 2, 18)}, acks...),
			streams: [][]stamp{{w(1, 1, 12), w(2, 2, 22), w(1, 3, 31)}},
			want:    watchTally{writes: 3, delivered: 3, complete: 1}, lat: []time.Duration{1, 2, 4}},
		{name: "no writes, no streams", want: watchTally{}},
		{name: "no writes, a stream", streams: [][]stamp{{w(1, 1, 1)}},
			want: watchTally{unmatched: 1, complete: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tallyWatch(tt.acks, tt.streams, 5)
			lat := got.latencies
			got.latencies = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("tally %+v, want %+v", got, tt.want)
			}
			var wantLat []time.Duration
			for _, l := range tt.lat {
				wantLat = append(wantLat, l*time.Millisecond)
			}
			if len(lat) != len(wantLat) || len(lat) > 0 && !slices.Equal(lat, wantLat) {
				t.Errorf("latencies %v, want %v", lat, wantLat)
			}
		})
	}
}

func TestStallConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := &stallConn{Conn: a, stall: 50 * time.Millisecond}
	go func() { _, _ = b.Write([]byte("x")) }()
	buf := make([]byte, 1)
	if n, err := c.Read(buf); n != 1 || err != nil {
		t.Fatalf("read %d, %v", n, err)
	}
	t0 := time.Now()
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) || endKind(err) != "stalled" {
		t.Fatalf("read of a silent stream: %v (%s)", err, endKind(err))
	}
	if d := time.Since(t0); d < 40*time.Millisecond || d > 2*time.Second {
		t.Errorf("stalled after %v, want about 50ms", d)
	}
}

// watchFault is what a fake watch stream does with one of its changes.
type watchFault int

const (
	deliver watchFault = iota
	drop
	duplicate
	cut
)

type change struct {
	key, value string
	rev        uint64
}

// watchServer is kvServer with GET /kv/watch: every write is an event of
// every open watch whose prefix it has, unless fault says otherwise.
type watchServer struct {
	*kvServer
	limit int // answer 503 too_many_watchers past this many watches (0: no limit)
	// fault, if set, says what the n-th watch opened (from 0) does with
	// its k-th change (from 0).
	fault func(n, k int) watchFault

	mu      sync.Mutex
	subs    map[chan change]struct{}
	opened  int
	hosts   map[string]int // watch requests by the listener's address
	queries []string
}

func newWatchServer() *watchServer {
	s := &watchServer{kvServer: &kvServer{data: map[string]string{}}, subs: map[chan change]struct{}{}, hosts: map[string]int{}}
	s.onApply = func(key, value string, rev uint64) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for ch := range s.subs {
			ch <- change{key, value, rev}
		}
	}
	return s
}

func (s *watchServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/kv/watch" {
		s.kvServer.ServeHTTP(w, r)
		return
	}
	q := r.URL.Query()
	s.mu.Lock()
	s.queries = append(s.queries, r.URL.RawQuery)
	s.hosts[r.Host]++
	if s.limit > 0 && len(s.subs) >= s.limit {
		s.mu.Unlock()
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"code":"too_many_watchers","error":"this node serves its maximum number of watches"}`))
		return
	}
	n := s.opened
	s.opened++
	ch := make(chan change, 1<<16)
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}()
	progress, err := time.ParseDuration(q.Get("progress"))
	if err != nil || q.Get("since") != "now" || !q.Has("prefix") {
		http.Error(w, "bad watch query", http.StatusBadRequest)
		return
	}
	prefix := q.Get("prefix")
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	_, _ = fmt.Fprintf(w, "id: t0\ndata: {\"type\":\"progress\",\"token\":\"t0\"}\n\n")
	fl.Flush()
	tick := time.NewTicker(progress)
	defer tick.Stop()
	k := 0
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			_, _ = fmt.Fprintf(w, ": idle\nid: p\ndata: {\"type\":\"progress\",\"token\":\"p\"}\n\n")
			fl.Flush()
		case c := <-ch:
			if !strings.HasPrefix(c.key, prefix) {
				continue
			}
			f := deliver
			if s.fault != nil {
				f = s.fault(n, k)
			}
			k++
			ev := fmt.Sprintf("id: t%d\ndata: {\"type\":\"set\",\"key\":%q,\"value\":%q,\"revision\":%d,\"token\":\"t%d\"}\n\n", c.rev, c.key, c.value, c.rev, c.rev)
			switch f {
			case drop:
				continue
			case duplicate:
				ev += ev
			case cut:
				ev = "data: {\"type\":\"cut\",\"reason\":\"slow_consumer\",\"token\":\"x\"}\n\n"
			}
			_, _ = io.WriteString(w, ev)
			fl.Flush()
			if f == cut {
				return
			}
		}
	}
}

// TestRunWatchers drives a fake cluster of two listeners sharing one store
// with watchers, some of whose streams drop, repeat or cut events, and
// checks that the result counts exactly that.
func TestRunWatchers(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		server func(*watchServer)
		check  func(t *testing.T, res Result, w *WatchResult)
	}{
		{name: "every event", cfg: Config{Watchers: 3}},
		{name: "batches", cfg: Config{Watchers: 2, Batch: 5}},
		{name: "with reads", cfg: Config{Watchers: 2, ReadRatio: 0.5}},
		{name: "a key prefix", cfg: Config{Watchers: 2, KeyPrefix: "bench:{t}:"}},
		{name: "a narrower watch prefix", cfg: Config{Watchers: 2, Keys: 100, WatchPrefix: "bench:0000000"},
			check: func(t *testing.T, res Result, w *WatchResult) {
				// Keys 0 to 9 of 100: about a tenth of the writes.
				if w.Writes == 0 || w.Writes > res.Writes/4 {
					t.Errorf("%d writes under %q of %d", w.Writes, w.Prefix, res.Writes)
				}
			}},
		{name: "drops", cfg: Config{Watchers: 3},
			server: func(s *watchServer) {
				s.fault = func(n, k int) watchFault {
					if n == 0 && (k == 4 || k == 6) {
						return drop
					}
					return deliver
				}
			},
			check: func(t *testing.T, res Result, w *WatchResult) {
				if w.Missing != 2 || w.Complete != 2 {
					t.Errorf("missing %d, complete %d; want 2 and 2", w.Missing, w.Complete)
				}
			}},
		{name: "duplicates", cfg: Config{Watchers: 2, Batch: 3},
			server: func(s *watchServer) {
				s.fault = func(n, k int) watchFault {
					if n == 1 && k%100 == 2 {
						return duplicate
					}
					return deliver
				}
			},
			check: func(t *testing.T, res Result, w *WatchResult) {
				if want := (w.Writes + 97) / 100; w.Duplicates != want || w.Missing != 0 {
					t.Errorf("duplicates %d, missing %d; want %d and 0", w.Duplicates, w.Missing, want)
				}
			}},
		{name: "a cut", cfg: Config{Watchers: 3},
			server: func(s *watchServer) {
				s.fault = func(n, k int) watchFault {
					if n == 2 && k == 10 {
						return cut
					}
					return deliver
				}
			},
			check: func(t *testing.T, res Result, w *WatchResult) {
				if w.Ended != 1 || w.EndKinds["cut:slow_consumer"] != 1 || w.Missing != w.Writes-10 || w.Complete != 2 {
					t.Errorf("ended %d %v, missing %d of %d writes, complete %d; want one cut, %d missing", w.Ended, w.EndKinds, w.Missing, w.Writes, w.Complete, w.Writes-10)
				}
			}},
		{name: "too many watchers", cfg: Config{Watchers: 5},
			server: func(s *watchServer) { s.limit = 3 },
			check: func(t *testing.T, res Result, w *WatchResult) {
				if w.Watchers != 3 || w.OpenErrors != 2 || w.OpenErrorKinds["http_503:too_many_watchers"] != 2 {
					t.Errorf("watchers %d, open errors %d %v; want 3 and 2 too_many_watchers", w.Watchers, w.OpenErrors, w.OpenErrorKinds)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newWatchServer()
			if tt.server != nil {
				tt.server(s)
			}
			var addrs []string
			for range 2 {
				srv := httptest.NewServer(s)
				t.Cleanup(srv.Close)
				addrs = append(addrs, strings.TrimPrefix(srv.URL, "http://"))
			}
			c := tt.cfg
			c.Addrs, c.Duration, c.ValueSize, c.Timeout, c.Seed = addrs, 200*time.Millisecond, 20, 5*time.Second, 7
			c.Concurrency, c.Keys = 3, cmp.Or(c.Keys, 1000)
			c.WatchProgress, c.WatchGrace = 100*time.Millisecond, 500*time.Millisecond
			res, err := Run(context.Background(), c, nil)
			if err != nil {
				t.Fatal(err)
			}
			if v := s.badBody.Load(); v != nil {
				t.Fatalf("server got a bad request: %v", v)
			}
			w := res.Watch
			if w == nil {
				t.Fatal("no watch result")
			}
			// The server notices the closed streams in its own time.
			var hosts, open int
			var queries []string
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				s.mu.Lock()
				hosts, queries, open = len(s.hosts), s.queries, len(s.subs)
				s.mu.Unlock()
				if open == 0 || time.Now().After(deadline) {
					break
				}
			}
			if hosts != 2 {
				t.Errorf("watch requests went to %d listeners, want both", hosts)
			}
			for _, q := range queries {
				v, err := url.ParseQuery(q)
				if err != nil || len(v) != 3 || v.Get("prefix") != c.watchPrefix() || v.Get("since") != "now" || v.Get("progress") != "100ms" {
					t.Errorf("watch query %q (%v), want prefix=%s since=now progress=100ms", q, err, c.watchPrefix())
				}
			}
			if open != 0 {
				t.Errorf("%d watches still open after the run", open)
			}
			// Every acknowledged write under the prefix is expected on
			// every stream; the fake store writes every key asked.
			if c.WatchPrefix == "" && w.Writes != res.Writes*int64(max(c.Batch, 1)) || w.Writes == 0 {
				t.Errorf("%d acknowledged writes under the prefix; the run made %d writes of %d keys", w.Writes, res.Writes, max(c.Batch, 1))
			}
			if w.Expected != w.Writes*int64(w.Watchers) || w.Delivered+w.Missing != w.Expected {
				t.Errorf("expected %d = %d writes x %d streams; delivered %d + missing %d", w.Expected, w.Writes, w.Watchers, w.Delivered, w.Missing)
			}
			if w.Unmatched != 0 || w.Foreign != 0 || w.OutOfOrder != 0 || w.Other != 0 {
				t.Errorf("unmatched %d, foreign %d, out of order %d, other %d; want none", w.Unmatched, w.Foreign, w.OutOfOrder, w.Other)
			}
			if !(w.MinMs <= w.P50Ms && w.P50Ms <= w.P90Ms && w.P90Ms <= w.P99Ms && w.P99Ms <= w.P999Ms && w.P999Ms <= w.MaxMs) || w.MaxMs > 1000 {
				t.Errorf("event delays out of order or too long: %+v", w)
			}
			if w.Progress == 0 || w.MaxGapMs <= 0 {
				t.Errorf("progress events %d, longest silence %.1fms", w.Progress, w.MaxGapMs)
			}
			if tt.check != nil {
				tt.check(t, res, w)
			} else if w.Missing != 0 || w.Duplicates != 0 || w.Ended != 0 || w.Complete != w.Watchers || w.Watchers != c.Watchers {
				t.Errorf("missing %d, duplicates %d, ended %d, complete %d of %d streams (%d asked)", w.Missing, w.Duplicates, w.Ended, w.Complete, w.Watchers, c.Watchers)
			}
			if w.Missing == 0 && w.GraceSeconds > 0.4 {
				t.Errorf("waited %.2fs after the writes with no event missing", w.GraceSeconds)
			}
			wantWrong := w.Duplicates > 0 || w.Missing > 0 && w.Ended == 0
			if code := WriteResult(io.Discard, res, c, true); w.Wrong() != wantWrong || code != map[bool]int{false: 0, true: 1}[wantWrong] {
				t.Errorf("wrong %v, exit %d; want wrong %v", w.Wrong(), code, wantWrong)
			}
			out := res.String(c)
			for _, want := range []string{fmt.Sprintf("%d delivered of %d expected", w.Delivered, w.Expected), "event delay  p50", fmt.Sprintf("missing %d  duplicates %d", w.Missing, w.Duplicates)} {
				if !strings.Contains(out, want) {
					t.Errorf("summary lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// TestOpenWatchAnswers: what OpenWatch makes of a node's answers.
func TestOpenWatchAnswers(t *testing.T) {
	for _, tt := range []struct {
		name     string
		status   int
		body     string
		wantKind string // "" for a stream
	}{
		{name: "a stream", status: 200, body: "id: a\ndata: {\"type\":\"progress\",\"token\":\"a\"}\n\n"},
		{name: "too many watchers", status: 503, body: `{"code":"too_many_watchers","error":"x"}`, wantKind: "http_503:too_many_watchers"},
		{name: "an error without a code", status: 400, body: `bad`, wantKind: "http_400"},
		{name: "a first event that is no progress", status: 200, body: "data: {\"type\":\"set\",\"key\":\"k\",\"revision\":1}\n\n", wantKind: "bad_answer"},
		{name: "a first event that does not parse", status: 200, body: "data: nonsense\n\n", wantKind: "bad_answer"},
		{name: "no first event", status: 200, body: "", wantKind: "transport"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Authorization") != "Bearer tok" || r.URL.Path != "/kv/watch" {
					http.Error(w, "no", http.StatusUnauthorized)
					return
				}
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			tg := NewHTTPTarget(Config{Addrs: []string{strings.TrimPrefix(srv.URL, "http://")}, Concurrency: 1, Timeout: 5 * time.Second, Token: "tok"})
			defer tg.Close()
			st, err := tg.OpenWatch(context.Background(), 3, "p", time.Second)
			if got := ErrorKind(err); got != tt.wantKind {
				t.Fatalf("OpenWatch: %v (kind %q), want kind %q", err, got, tt.wantKind)
			}
			if st != nil {
				// The server closes the stream after the first event.
				if _, err := st.Next(); !errors.Is(err, io.EOF) {
					t.Errorf("after the first event: %v, want EOF", err)
				}
				_ = st.Close()
			}
		})
	}
}

func TestMainWatchFlags(t *testing.T) {
	s := newWatchServer()
	srv := httptest.NewServer(s)
	defer srv.Close()
	for _, tt := range []struct {
		args     []string
		wantCode int
		wantErr  string
		check    func(Result) bool
	}{
		{args: []string{"-watchers", "-1"}, wantCode: 2, wantErr: "-watchers must be >= 0"},
		{args: []string{"-watchers", "2", "-workload", "cas"}, wantCode: 2, wantErr: "-watchers applies to -workload set only"},
		{args: []string{"-d", "0"}, wantCode: 2, wantErr: "-d must be positive"},
		{args: []string{"-d", "0", "-preload", "-watchers", "1"}, wantCode: 2, wantErr: "-watchers needs a measured run"},
		{args: []string{"-d", "0", "-preload", "-keys", "30", "-key-prefix", "bench:p:"}, check: func(r Result) bool { return r.Ops == 0 && r.Preloaded == 30 && r.Watch == nil }},
		{args: []string{"-watchers", "2", "-watch-progress", "100ms", "-watch-grace", "1s"}, check: func(r Result) bool {
			return r.Watch != nil && r.Watch.Watchers == 2 && r.Watch.Missing == 0 && r.Watch.Delivered == 2*r.Writes
		}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"-addrs", strings.TrimPrefix(srv.URL, "http://"), "-c", "2", "-d", "150ms", "-json", "-quiet"}, tt.args...)
			code := Main(args, &stdout, &stderr)
			if code != tt.wantCode || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want exit %d with %q", code, stderr.String(), tt.wantCode, tt.wantErr)
			}
			if tt.check == nil {
				return
			}
			var res Result
			if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
				t.Fatalf("%v: %s", err, stdout.String())
			}
			if !tt.check(res) {
				t.Errorf("result %s", stdout.String())
			}
		})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.data {
		if strings.HasPrefix(k, "bench:p:") {
			return
		}
	}
	t.Error("-key-prefix bench:p: wrote no such key")
}

// BenchmarkWatchEvents reports the cost of reading one watch event as the
// server writes it (two 80-byte tokens, a 100-byte value): SSE framing,
// the scan of its data and the key's number.
func BenchmarkWatchEvents(b *testing.B) {
	var buf bytes.Buffer
	tok := strings.Repeat("VwFwwbjtpJNifxAAgAQB", 4)
	val := strings.Repeat("x", 100)
	const n = 1000
	for i := range n {
		fmt.Fprintf(&buf, "id: %s\ndata: {\"type\":\"set\",\"key\":\"%s\",\"value\":\"%s\",\"revision\":%d,\"token\":\"%s\"}\n\n", tok, Key(i), val, i+1, tok)
	}
	stream := buf.Bytes()
	b.SetBytes(int64(len(stream) / n))
	b.ReportAllocs()
	rd := bytes.NewReader(stream)
	w := &httpWatch{r: newSSEReader(rd, 64<<10)}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%n == 0 {
			rd.Reset(stream)
			w.r.br.Reset(rd)
		}
		ev, err := w.Next()
		if err != nil || ev.Kind != EventSet {
			b.Fatal(err, ev)
		}
		if _, ok := keyIndex(ev.Key, DefaultKeyPrefix); !ok {
			b.Fatalf("key %q", ev.Key)
		}
	}
}
