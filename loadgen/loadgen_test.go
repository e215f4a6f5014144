package loadgen

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/ring"
)

// fakeTarget is an in-memory stand-in for a KV store: a test double for the
// store under load, so that RunTarget's accounting can be checked exactly.
type fakeTarget struct {
	mu   sync.Mutex
	data map[string][]byte

	failEvery int    // every failEvery-th call fails (0: never)
	failWith  error  // what it fails with
	failSets  bool   // every set fails (for the preload check)
	drop      string // Get reports this key missing even if it was set
	delay     time.Duration

	calls   atomic.Int64
	sets    atomic.Int64
	gets    atomic.Int64
	workers sync.Map // worker numbers seen
	active  sync.Map // worker -> *atomic.Int32, to catch overlapping calls
	overlap atomic.Bool
	closed  atomic.Bool
}

func newFake() *fakeTarget { return &fakeTarget{data: map[string][]byte{}} }

func (f *fakeTarget) enter(worker int) func() {
	f.workers.Store(worker, true)
	v, _ := f.active.LoadOrStore(worker, new(atomic.Int32))
	n := v.(*atomic.Int32)
	if n.Add(1) != 1 {
		f.overlap.Store(true)
	}
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	return func() { n.Add(-1) }
}

func (f *fakeTarget) fail() error {
	n := f.calls.Add(1)
	if f.failEvery > 0 && n%int64(f.failEvery) == 0 {
		return f.failWith
	}
	return nil
}

func (f *fakeTarget) Set(_ context.Context, worker int, key string, value []byte) error {
	defer f.enter(worker)()
	f.sets.Add(1)
	if f.failSets {
		return &KindError{Kind: "refused"}
	}
	if err := f.fail(); err != nil {
		return err
	}
	f.mu.Lock()
	f.data[key] = bytes.Clone(value)
	f.mu.Unlock()
	return nil
}

func (f *fakeTarget) Get(_ context.Context, worker int, key string) (bool, error) {
	defer f.enter(worker)()
	f.gets.Add(1)
	if err := f.fail(); err != nil {
		return false, err
	}
	if key == f.drop {
		return false, nil
	}
	f.mu.Lock()
	_, ok := f.data[key]
	f.mu.Unlock()
	return ok, nil
}

func (f *fakeTarget) Close() error { f.closed.Store(true); return nil }

func TestRunTarget(t *testing.T) {
	base := Config{Concurrency: 4, Duration: 150 * time.Millisecond, Keys: 50, ValueSize: 10, Seed: 1}
	with := func(f func(*Config)) Config { c := base; f(&c); return c }
	tests := []struct {
		name       string
		cfg        Config
		fake       func(*fakeTarget)
		wantReads  bool
		wantWrites bool
		wantMisses bool
		wantKinds  []string // error kinds that must be counted (and no others)
	}{
		{name: "writes only", cfg: base, wantWrites: true},
		{name: "reads only, preloaded", cfg: with(func(c *Config) { c.ReadRatio = 1; c.Preload = true }), wantReads: true},
		{name: "mixed", cfg: with(func(c *Config) { c.ReadRatio = 0.5 }), wantReads: true, wantWrites: true},
		{name: "missing key without preload is no miss", cfg: with(func(c *Config) { c.ReadRatio = 1 }), wantReads: true},
		{
			name: "dropped preloaded key is a miss",
			cfg:  with(func(c *Config) { c.ReadRatio = 1; c.Preload = true; c.Keys = 2 }),
			fake: func(f *fakeTarget) { f.drop = Key(1) }, wantReads: true, wantMisses: true,
		},
		{
			name: "error kinds",
			cfg:  with(func(c *Config) { c.ReadRatio = 0.5 }),
			fake: func(f *fakeTarget) {
				f.failEvery = 3
				f.failWith = fmt.Errorf("wrapped: %w", &KindError{Kind: "http_503", Err: errors.New("busy")})
			},
			wantReads: true, wantWrites: true, wantKinds: []string{"http_503"},
		},
		{
			name:      "plain errors",
			cfg:       with(func(c *Config) { c.ReadRatio = 1 }),
			fake:      func(f *fakeTarget) { f.failEvery = 2; f.failWith = context.DeadlineExceeded },
			wantReads: true, wantKinds: []string{"timeout"},
		},
		{
			name:      "slow target",
			cfg:       with(func(c *Config) { c.ReadRatio = 0.9; c.Preload = true }),
			fake:      func(f *fakeTarget) { f.delay = time.Millisecond },
			wantReads: true, wantWrites: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			if tt.fake != nil {
				tt.fake(f)
			}
			var progress bytes.Buffer
			res, err := RunTarget(context.Background(), tt.cfg, f, &syncWriter{w: &progress})
			if err != nil {
				t.Fatal(err)
			}
			if res.Ops == 0 || res.Ops != res.Reads+res.Writes {
				t.Errorf("ops %d, reads %d, writes %d", res.Ops, res.Reads, res.Writes)
			}
			if got := f.sets.Load() + f.gets.Load(); got != res.Ops+int64(res.Preloaded) {
				t.Errorf("target saw %d calls, result counts %d ops + %d preloaded", got, res.Ops, res.Preloaded)
			}
			if res.Reads != f.gets.Load() {
				t.Errorf("reads %d, target saw %d gets", res.Reads, f.gets.Load())
			}
			if (res.Reads > 0) != tt.wantReads || (res.Writes > 0) != tt.wantWrites {
				t.Errorf("reads %d writes %d, want reads %v writes %v", res.Reads, res.Writes, tt.wantReads, tt.wantWrites)
			}
			if tt.cfg.Preload {
				if res.Preloaded != tt.cfg.Keys {
					t.Errorf("preloaded %d, want %d", res.Preloaded, tt.cfg.Keys)
				}
				for i := range tt.cfg.Keys {
					if v, ok := f.data[Key(i)]; !ok || string(v) != strings.Repeat("x", tt.cfg.ValueSize) {
						t.Fatalf("key %s not preloaded: %q %v", Key(i), v, ok)
					}
				}
			}
			if (res.Misses > 0) != tt.wantMisses {
				t.Errorf("misses %d, want misses: %v", res.Misses, tt.wantMisses)
			}
			var kindSum int64
			for _, v := range res.ErrorKinds {
				kindSum += v
			}
			if kindSum != res.Errors {
				t.Errorf("error kinds %v add up to %d, errors %d", res.ErrorKinds, kindSum, res.Errors)
			}
			if len(res.ErrorKinds) != len(tt.wantKinds) {
				t.Errorf("error kinds %v, want %v", res.ErrorKinds, tt.wantKinds)
			}
			for _, k := range tt.wantKinds {
				if res.ErrorKinds[k] == 0 {
					t.Errorf("error kinds %v: no %s", res.ErrorKinds, k)
				}
			}
			if tt.fake != nil && f.failEvery > 0 {
				// Every failEvery-th call after the preload fails.
				if want := res.Ops / int64(f.failEvery); res.Errors < want-1 || res.Errors > want+1 {
					t.Errorf("errors %d, want about %d of %d ops", res.Errors, want, res.Ops)
				}
			}
			if !(0 <= res.P50Ms && res.P50Ms <= res.P90Ms && res.P90Ms <= res.P99Ms && res.P99Ms <= res.P999Ms && res.P999Ms <= res.MaxMs) {
				t.Errorf("percentiles out of order: %+v", res)
			}
			if f.delay > 0 && res.P50Ms < ms(f.delay) {
				t.Errorf("p50 %.3fms below the target's delay %v", res.P50Ms, f.delay)
			}
			if res.Seconds < tt.cfg.Duration.Seconds() || res.OpsPerSec <= 0 {
				t.Errorf("seconds %.3f, ops/s %.0f", res.Seconds, res.OpsPerSec)
			}
			if f.overlap.Load() {
				t.Error("two calls for the same worker overlapped")
			}
			f.workers.Range(func(k, _ any) bool {
				if w := k.(int); w < 0 || w >= tt.cfg.Concurrency {
					t.Errorf("worker number %d outside [0,%d)", w, tt.cfg.Concurrency)
				}
				return true
			})
			if f.closed.Load() {
				t.Error("RunTarget closed the target")
			}
			// The summary shows every kind, like "http_503=12".
			s := res.String(tt.cfg)
			for k, v := range res.ErrorKinds {
				if !strings.Contains(s, fmt.Sprintf("%s=%d", k, v)) {
					t.Errorf("summary lacks %s=%d:\n%s", k, v, s)
				}
			}
		})
	}
}

func TestRunTargetPreloadFails(t *testing.T) {
	f := newFake()
	f.failSets = true
	c := Config{Concurrency: 2, Duration: time.Second, Keys: 2, Preload: true}
	_, err := RunTarget(context.Background(), c, f, nil)
	if err == nil || !strings.Contains(err.Error(), "2 preload writes failed") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v", err)
	}
	if f.gets.Load() != 0 {
		t.Errorf("the run went on after a failed preload")
	}
}

func TestRunTargetInvalid(t *testing.T) {
	for _, c := range []Config{
		{Concurrency: 0, Duration: time.Second, Keys: 1},
		{Concurrency: 1, Duration: 0, Keys: 1},
		{Concurrency: 1, Duration: time.Second, Keys: 0},
		{Concurrency: 1, Duration: time.Second, Keys: 1, ReadRatio: 2},
	} {
		if _, err := RunTarget(context.Background(), c, newFake(), nil); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	// Run needs addresses; RunTarget does not.
	if _, err := Run(context.Background(), Config{Concurrency: 1, Duration: time.Second, Keys: 1}, nil); err == nil {
		t.Error("Run without addresses: no error")
	}
}

func TestErrorKind(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{&KindError{Kind: "http_503"}, "http_503"},
		{fmt.Errorf("x: %w", &KindError{Kind: "transport", Err: context.DeadlineExceeded}), "transport"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{context.Canceled, "canceled"},
		{errors.New("boom"), "other"},
	} {
		if got := ErrorKind(tt.err); got != tt.want {
			t.Errorf("ErrorKind(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestKey(t *testing.T) {
	for _, i := range []int{0, 7, 12345678, 99999999, 100000000, 1234567890123} {
		if got, want := Key(i), fmt.Sprintf("bench:%08d", i); got != want {
			t.Errorf("Key(%d) = %q, want %q", i, got, want)
		}
	}
}

func TestAppendEscaping(t *testing.T) {
	for _, s := range []string{"", "bench:00000001", strings.Repeat("x", 100), `a"b\c`, "tab\there", "nl\n", "ünï", "\x00\x7f", "<&>", "a+b c/d?e=f", "\xff"} {
		var got string
		b := appendJSONString([]byte("["), s)
		if err := json.Unmarshal(append(b[1:], ' '), &got); err != nil {
			t.Errorf("appendJSONString(%q) = %s: %v", s, b[1:], err)
		}
		want := s
		if s == "\xff" {
			want = "\ufffd" // what encoding/json makes of invalid UTF-8
		}
		if got != want {
			t.Errorf("appendJSONString(%q) decodes to %q", s, got)
		}
		if got, want := string(appendQueryEscape(nil, s)), url.QueryEscape(s); got != want {
			t.Errorf("appendQueryEscape(%q) = %q, want %q", s, got, want)
		}
	}
}

// kvServer is a minimal ClusterKit KV API: POST /kv/set, GET /kv/get.
type kvServer struct {
	mu       sync.Mutex
	data     map[string]string
	sets     atomic.Int64
	gets     atomic.Int64
	stale    atomic.Int64
	forget   string // answer 404 for this key
	failSets bool   // answer 503 to every other set after the first ten
	badBody  atomic.Value
}

func (s *kvServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/kv/set" && r.Method == http.MethodPost:
		n := s.sets.Add(1)
		var body struct{ Key, Value string }
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || r.Header.Get("Content-Type") != "application/json" || !strings.HasPrefix(body.Key, "bench:") {
			s.badBody.Store(fmt.Sprintf("%v %q %+v", err, r.Header.Get("Content-Type"), body))
			http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
			return
		}
		if s.failSets && n > 10 && n%2 == 0 {
			http.Error(w, `{"error":"unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		s.mu.Lock()
		s.data[body.Key] = body.Value
		s.mu.Unlock()
		fmt.Fprintf(w, `{"key":%q,"status":"success"}`, body.Key)
	case r.URL.Path == "/kv/get" && r.Method == http.MethodGet:
		s.gets.Add(1)
		if r.URL.Query().Get("consistency") == "stale" {
			s.stale.Add(1)
		}
		k := r.URL.Query().Get("key")
		s.mu.Lock()
		v, ok := s.data[k]
		s.mu.Unlock()
		if !ok || k == s.forget {
			http.Error(w, `{"error":"key not found"}`, http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"key":%q,"value":%q}`, k, v)
	default:
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
	}
}

func TestRunHTTP(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		server     func(*kvServer)
		wantMisses bool
		wantKinds  []string
	}{
		{name: "writes", cfg: Config{Keys: 1000}},
		{name: "reads preloaded, stale", cfg: Config{Keys: 200, ReadRatio: 0.9, Preload: true, Stale: true}},
		{name: "404 on a preloaded key is a miss", cfg: Config{Keys: 2, ReadRatio: 1, Preload: true},
			server: func(s *kvServer) { s.forget = Key(0) }, wantMisses: true},
		{name: "404 without preload is no miss", cfg: Config{Keys: 1000, ReadRatio: 1}},
		{name: "503 counted by status", cfg: Config{Keys: 1000},
			server: func(s *kvServer) { s.failSets = true }, wantKinds: []string{"http_503"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var servers [2]*kvServer
			var addrs []string
			for i := range servers {
				servers[i] = &kvServer{data: map[string]string{}}
				if tt.server != nil {
					tt.server(servers[i])
				}
				srv := httptest.NewServer(servers[i])
				t.Cleanup(srv.Close)
				addrs = append(addrs, strings.TrimPrefix(srv.URL, "http://"))
			}
			// The fake servers do not replicate: a preloaded key lives on
			// one of them, so reads of it must go where it was written.
			// One server is enough for read checks.
			if tt.cfg.Preload {
				addrs = addrs[:1]
			}
			c := tt.cfg
			c.Addrs, c.Concurrency, c.Duration, c.ValueSize, c.Timeout, c.Seed = addrs, 3, 200*time.Millisecond, 20, 5*time.Second, 7
			res, err := Run(context.Background(), c, nil)
			if err != nil {
				t.Fatal(err)
			}
			var sets, gets, stale int64
			for i := range addrs {
				s := servers[i]
				if v := s.badBody.Load(); v != nil {
					t.Fatalf("server got a bad set: %v", v)
				}
				if s.sets.Load()+s.gets.Load() == 0 {
					t.Errorf("server %d got no requests: no round robin", i)
				}
				sets, gets, stale = sets+s.sets.Load(), gets+s.gets.Load(), stale+s.stale.Load()
				for k, v := range s.data {
					if v != strings.Repeat("x", c.ValueSize) {
						t.Fatalf("%s = %q", k, v)
					}
				}
			}
			if res.Ops == 0 || res.Ops+int64(res.Preloaded) != sets+gets || res.Reads != gets {
				t.Errorf("result %+v; servers saw %d sets, %d gets", res, sets, gets)
			}
			if c.Stale && stale != gets || !c.Stale && stale != 0 {
				t.Errorf("%d of %d gets were stale, Stale=%v", stale, gets, c.Stale)
			}
			if (res.Misses > 0) != tt.wantMisses {
				t.Errorf("misses %d, want misses: %v", res.Misses, tt.wantMisses)
			}
			if len(res.ErrorKinds) != len(tt.wantKinds) {
				t.Errorf("error kinds %v, want %v", res.ErrorKinds, tt.wantKinds)
			}
			for _, k := range tt.wantKinds {
				if res.ErrorKinds[k] == 0 {
					t.Errorf("error kinds %v: no %s", res.ErrorKinds, k)
				}
			}
			if !(res.P50Ms <= res.P90Ms && res.P90Ms <= res.P99Ms && res.P99Ms <= res.P999Ms && res.P999Ms <= res.MaxMs) {
				t.Errorf("percentiles out of order: %+v", res)
			}
		})
	}
}

func TestHTTPTransportError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close() // nothing listens there now
	c := Config{Addrs: []string{addr}, Concurrency: 1, Timeout: time.Second}
	tg := NewHTTPTarget(c)
	defer tg.Close()
	err := tg.Set(context.Background(), 0, "k", []byte("v"))
	if ErrorKind(err) != "transport" || !strings.Contains(err.Error(), addr) {
		t.Fatalf("set to a closed port: %v (kind %q)", err, ErrorKind(err))
	}
	if _, err := tg.Get(context.Background(), 5, "k"); ErrorKind(err) != "transport" {
		t.Fatalf("get from worker past Concurrency: %v", err)
	}
}

// TestHTTPConnections: a worker keeps one connection per address and
// survives what servers do to keep-alive connections.
func TestHTTPConnections(t *testing.T) {
	tests := []struct {
		name string
		// handler answers request n (from 1); srv lets it act on the server.
		handler   func(srv *httptest.Server, n int64, w http.ResponseWriter, r *http.Request)
		timeout   time.Duration
		pause     time.Duration // before each request
		requests  int
		wantConns int64
		wantKind  string // of the last request's error; "" for none
	}{
		{name: "keeps one connection", requests: 20, wantConns: 1,
			handler: func(_ *httptest.Server, _ int64, w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write([]byte(`{"status":"success"}`))
			}},
		{name: "chunked answers are drained", requests: 5, wantConns: 1,
			handler: func(_ *httptest.Server, _ int64, w http.ResponseWriter, _ *http.Request) {
				for range 3 {
					_, _ = w.Write(bytes.Repeat([]byte("x"), 3000))
					w.(http.Flusher).Flush()
				}
			}},
		{name: "Connection: close answers", requests: 4, wantConns: 4,
			handler: func(_ *httptest.Server, _ int64, w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Connection", "close")
				_, _ = w.Write([]byte(`{}`))
			}},
		{name: "idle connection closed by the server is redialed", requests: 4, pause: 60 * time.Millisecond, wantConns: 4,
			handler: func(srv *httptest.Server, _ int64, w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write([]byte(`{}`))
				w.(http.Flusher).Flush()
				// Close it after the answer, as an idle timeout would.
				go func() { time.Sleep(20 * time.Millisecond); srv.CloseClientConnections() }()
			}},
		{name: "an error status is counted by status", requests: 1, wantConns: 1, wantKind: "http_503",
			handler: func(_ *httptest.Server, _ int64, w http.ResponseWriter, _ *http.Request) {
				http.Error(w, `{"error":"x"}`, http.StatusServiceUnavailable)
			}},
		{name: "a silent server times out", requests: 1, timeout: 200 * time.Millisecond, wantConns: 1, wantKind: "transport",
			handler: func(_ *httptest.Server, _ int64, _ http.ResponseWriter, r *http.Request) {
				// The server may not notice the client leaving while
				// the unread body is pending, so give up by itself.
				select {
				case <-r.Context().Done():
				case <-time.After(2 * time.Second):
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var n, conns atomic.Int64
			var srv *httptest.Server
			srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tt.handler(srv, n.Add(1), w, r)
			}))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}
			srv.Start()
			t.Cleanup(srv.Close)
			timeout := cmp.Or(tt.timeout, 5*time.Second)
			tg := NewHTTPTarget(Config{Addrs: []string{strings.TrimPrefix(srv.URL, "http://")}, Concurrency: 1, Timeout: timeout})
			defer tg.Close()
			var err error
			for i := range tt.requests {
				time.Sleep(tt.pause)
				if i%2 == 0 {
					err = tg.Set(context.Background(), 0, Key(i), []byte("v"))
				} else {
					_, err = tg.Get(context.Background(), 0, Key(i))
				}
				if i < tt.requests-1 && err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
			}
			if got := ErrorKind(err); got != tt.wantKind {
				t.Errorf("last request: %v (kind %q), want kind %q", err, got, tt.wantKind)
			}
			if got := n.Load(); got != int64(tt.requests) {
				t.Errorf("server answered %d requests, want %d (a retry sent one twice?)", got, tt.requests)
			}
			if got := conns.Load(); got != tt.wantConns {
				t.Errorf("%d connections, want %d", got, tt.wantConns)
			}
		})
	}
}

func TestMainJSON(t *testing.T) {
	s := &kvServer{data: map[string]string{}}
	srv := httptest.NewServer(s)
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	code := Main([]string{"-addrs", strings.TrimPrefix(srv.URL, "http://"), "-c", "2", "-d", "200ms", "-keys", "50",
		"-reads", "0.5", "-preload", "-json", "-quiet"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var res Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if res.Ops == 0 || res.Reads == 0 || res.Writes == 0 || res.Errors != 0 || res.Misses != 0 || res.Preloaded != 50 {
		t.Fatalf("result %+v", res)
	}
	if stderr.Len() != 0 {
		t.Errorf("-quiet wrote to stderr: %q", stderr.String())
	}
	if code := Main([]string{"-addrs", "", "-d", "1s"}, &stdout, &stderr); code != 2 {
		t.Errorf("empty -addrs: exit %d, want 2", code)
	}
}

// BenchmarkHTTPTarget reports the load tool's own cost per request (the
// in-process server's allocations are included).
func BenchmarkHTTPTarget(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"status":"success"}`))
	}))
	defer srv.Close()
	tg := NewHTTPTarget(Config{Addrs: []string{strings.TrimPrefix(srv.URL, "http://")}, Concurrency: 1, Timeout: 10 * time.Second})
	defer tg.Close()
	value := bytes.Repeat([]byte("x"), 100)
	ctx := context.Background()
	b.Run("set", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := tg.Set(ctx, 0, Key(i), value); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("get", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := tg.Get(ctx, 0, Key(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// syncWriter lets the progress goroutine and the test share a buffer.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestRouteByOwner: with -route-via every key goes to its partition's
// primary as the management API's /cluster names it, including a primary
// that is not among -addrs; the routing is checked by content, each server
// holding exactly the keys of its partitions.
func TestRouteByOwner(t *testing.T) {
	const parts = 8
	kvs := []*kvServer{{data: map[string]string{}}, {data: map[string]string{}}}
	var addrs []string
	for _, s := range kvs {
		srv := httptest.NewServer(s)
		t.Cleanup(srv.Close)
		addrs = append(addrs, strings.TrimPrefix(srv.URL, "http://"))
	}
	primaryOf := func(p int) int { return p % 3 % 2 } // uneven on purpose
	mgmt := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cluster" {
			http.NotFound(w, r)
			return
		}
		partitions := map[string]any{}
		for p := range parts {
			partitions[fmt.Sprintf("partition-%d", p)] = map[string]any{"primary_node": fmt.Sprintf("n%d", primaryOf(p))}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"cluster": map[string]any{
			"nodes":         []map[string]string{{"id": "n0", "kv_addr": addrs[0]}, {"id": "n1", "kv_addr": addrs[1]}},
			"partition_map": map[string]any{"partitions": partitions},
			"config":        map[string]any{"partition_count": parts},
		}})
	}))
	t.Cleanup(mgmt.Close)

	// -addrs names only the first server: the second is learnt from /cluster.
	c := Config{Addrs: addrs[:1], Concurrency: 4, Duration: 300 * time.Millisecond, Keys: 200, ValueSize: 8,
		Timeout: 5 * time.Second, Seed: 1, RouteVia: strings.TrimPrefix(mgmt.URL, "http://")}
	res, err := Run(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || res.Writes == 0 {
		t.Fatalf("run: %+v", res)
	}
	for i, s := range kvs {
		s.mu.Lock()
		n := len(s.data)
		for k := range s.data {
			if p := ring.PartitionOf(k, parts); primaryOf(p) != i {
				t.Errorf("key %s (partition %d) went to server %d, its primary is %d", k, p, i, primaryOf(p))
			}
		}
		s.mu.Unlock()
		if n == 0 {
			t.Errorf("server %d got no key", i)
		}
	}

	bad := Config{Addrs: addrs[:1], Concurrency: 1, Duration: time.Millisecond, Keys: 1, Timeout: time.Second, RouteVia: addrs[0]}
	if _, err := Run(context.Background(), bad, nil); err == nil {
		t.Error("-route-via at an address without /cluster was accepted")
	}
}

// TestHTTPTargetTLSAndToken: with TLS and a token, both request paths (a
// worker's lean connection and net/http for other callers) speak TLS to
// the server, whose certificate they check, and send the token.
func TestHTTPTargetTLSAndToken(t *testing.T) {
	t.Parallel()
	var seen, refused atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer ck_test-token-0123456789" {
			refused.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		seen.Add(1)
		w.Write([]byte(`{"key":"k","value":"v"}`))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	tlsCfg := srv.Client().Transport.(*http.Transport).TLSClientConfig
	tg := NewHTTPTarget(Config{Addrs: []string{addr}, Concurrency: 1, Timeout: 5 * time.Second, TLS: tlsCfg, Token: "ck_test-token-0123456789"})
	defer tg.Close()
	for _, worker := range []int{0, 7} { // 0: the lean path; 7: past Concurrency, net/http
		if err := tg.Set(context.Background(), worker, "k", []byte("v")); err != nil {
			t.Fatalf("worker %d set: %v", worker, err)
		}
		if found, err := tg.Get(context.Background(), worker, "k"); err != nil || !found {
			t.Fatalf("worker %d get: %v %v", worker, found, err)
		}
	}
	if seen.Load() != 4 || refused.Load() != 0 {
		t.Fatalf("server saw %d authorised and %d refused requests, want 4 and 0", seen.Load(), refused.Load())
	}
	// Without the server's CA the target refuses to talk.
	strict := NewHTTPTarget(Config{Addrs: []string{addr}, Concurrency: 1, Timeout: 5 * time.Second, TLS: &tls.Config{}})
	defer strict.Close()
	if err := strict.Set(context.Background(), 0, "k", []byte("v")); ErrorKind(err) != "tls" {
		t.Fatalf("set to an untrusted server: %v (kind %q), want kind tls", err, ErrorKind(err))
	}
}
