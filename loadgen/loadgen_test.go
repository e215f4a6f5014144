package loadgen

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
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
		{Concurrency: 1, Duration: time.Second, Keys: 1, Workload: "cass"},
		{Concurrency: 1, Duration: time.Second, Keys: 1, Batch: -1},
		{Concurrency: 1, Duration: time.Second, Keys: 1, Batch: MaxBatch + 1},
		{Concurrency: 1, Duration: time.Second, Keys: 1, Batch: 2, Workload: WorkloadCAS},
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

// TestRunTargetUnsupported: a workload that needs a method the target
// lacks (the fake has neither conditional sets nor batches, like the etcd
// target of bench/compare) fails before it sends anything.
func TestRunTargetUnsupported(t *testing.T) {
	base := Config{Concurrency: 1, Duration: time.Second, Keys: 1}
	for _, tt := range []struct {
		name    string
		cfg     func(*Config)
		wantErr string
	}{
		{"cas", func(c *Config) { c.Workload = WorkloadCAS }, "-workload cas: the target (*loadgen.fakeTarget) has no conditional sets"},
		{"batch", func(c *Config) { c.Batch = 3 }, "-batch 3: the target (*loadgen.fakeTarget) has no batch requests"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.cfg(&c)
			f := newFake()
			if _, err := RunTarget(context.Background(), c, f, nil); err == nil || err.Error() != tt.wantErr {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
			if f.calls.Load() != 0 {
				t.Errorf("the target got %d calls", f.calls.Load())
			}
		})
	}
	// Batch 1 and the set workload need nothing more than a Target.
	for _, c := range []Config{{Batch: 1}, {Workload: WorkloadSet}} {
		c.Concurrency, c.Duration, c.Keys = 1, 10*time.Millisecond, 1
		if _, err := RunTarget(context.Background(), c, newFake(), nil); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
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

// kvServer is a minimal ClusterKit KV API: POST /kv/set (with if_revision),
// GET /kv/get (with the key's revision) and POST /kv/batch of sets.
type kvServer struct {
	mu       sync.Mutex
	data     map[string]string
	revs     map[string]uint64 // by key; made on first use
	rev      uint64            // the last revision given
	sets     atomic.Int64      // /kv/set requests
	condSets atomic.Int64      // those with if_revision
	conflict atomic.Int64      // answered 409 condition_failed
	gets     atomic.Int64
	stale    atomic.Int64
	batches  atomic.Int64 // /kv/batch requests
	batchOps atomic.Int64 // their ops
	failedOp atomic.Int64 // batch results answered 503
	forget   string       // answer 404 for this key
	failSets bool         // answer 503 to every other set (or batch) after the first ten
	failOps  bool         // answer 503 to every third op of a batch
	// owns, if set, is whether the server is the primary of a key: a
	// batch whose first key it does not own is answered 421.
	owns    func(key string) bool
	badBody atomic.Value
	// onApply, if set, is called under the lock with each write.
	onApply func(key, value string, rev uint64)
}

// apply writes key=value under the lock if the key's revision is rev (any
// revision when rev is nil) and returns the key's revision after it, and
// whether it wrote; a key that does not exist has revision 0.
func (s *kvServer) apply(key, value string, rev *uint64) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revs == nil {
		s.revs = map[string]uint64{}
	}
	cur := s.revs[key]
	if rev != nil && *rev != cur {
		return cur, false
	}
	s.rev++
	s.data[key], s.revs[key] = value, s.rev
	if s.onApply != nil {
		s.onApply(key, value, s.rev)
	}
	return s.rev, true
}

func (s *kvServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	bad := func(format string, args ...any) {
		s.badBody.Store(fmt.Sprintf(format, args...))
		http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
	}
	switch {
	case r.URL.Path == "/kv/set" && r.Method == http.MethodPost:
		n := s.sets.Add(1)
		var body struct {
			Key, Value string
			IfRevision *uint64 `json:"if_revision"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || r.Header.Get("Content-Type") != "application/json" || !strings.HasPrefix(body.Key, "bench:") {
			bad("%v %q %+v", err, r.Header.Get("Content-Type"), body)
			return
		}
		if body.IfRevision != nil {
			s.condSets.Add(1)
		}
		if s.failSets && n > 10 && n%2 == 0 {
			http.Error(w, `{"error":"unavailable","code":"unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		rev, ok := s.apply(body.Key, body.Value, body.IfRevision)
		if !ok {
			s.conflict.Add(1)
			w.WriteHeader(http.StatusConflict)
			fmt.Fprintf(w, `{"code":"condition_failed","current_revision":%d,"error":"the condition does not hold","exists":%v}`, rev, rev != 0)
			return
		}
		fmt.Fprintf(w, `{"key":%q,"revision":%d,"status":"success"}`, body.Key, rev)
	case r.URL.Path == "/kv/get" && r.Method == http.MethodGet:
		s.gets.Add(1)
		if r.URL.Query().Get("consistency") == "stale" {
			s.stale.Add(1)
		}
		k := r.URL.Query().Get("key")
		s.mu.Lock()
		v, ok := s.data[k]
		rev := s.revs[k]
		s.mu.Unlock()
		if !ok || k == s.forget {
			http.Error(w, `{"error":"key not found","code":"key_not_found"}`, http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"key":%q,"value":%q,"revision":%d}`, k, v, rev)
	case r.URL.Path == "/kv/batch" && r.Method == http.MethodPost:
		n := s.batches.Add(1)
		var body struct {
			Ops []struct{ Op, Key, Value string }
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || r.Header.Get("Content-Type") != "application/json" || len(body.Ops) == 0 {
			bad("batch: %v %q %+v", err, r.Header.Get("Content-Type"), body)
			return
		}
		s.batchOps.Add(int64(len(body.Ops)))
		if s.failSets && n > 10 && n%2 == 0 {
			http.Error(w, `{"error":"unavailable","code":"unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		if s.owns != nil && !s.owns(body.Ops[0].Key) {
			http.Error(w, `{"error":"not mine","code":"host_not_allowed"}`, http.StatusMisdirectedRequest)
			return
		}
		results := make([]map[string]any, len(body.Ops))
		for i, op := range body.Ops {
			if op.Op != "set" || !strings.HasPrefix(op.Key, "bench:") {
				bad("batch op %d: %+v", i, op)
				return
			}
			if s.failOps && i%3 == 2 {
				s.failedOp.Add(1)
				results[i] = map[string]any{"status": 503, "op": "set", "key": op.Key, "code": "unavailable", "error": "unavailable"}
				continue
			}
			rev, _ := s.apply(op.Key, op.Value, nil)
			results[i] = map[string]any{"status": 200, "op": "set", "key": op.Key, "revision": rev}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"results": results, "count": len(results)})
	default:
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
	}
}

func TestRunHTTP(t *testing.T) {
	tests := []struct {
		name          string
		cfg           Config
		server        func(*kvServer)
		wantMisses    bool
		wantConflicts bool // some, and for a set workload none
		wantKinds     []string
	}{
		{name: "writes", cfg: Config{Keys: 1000}},
		{name: "reads preloaded, stale", cfg: Config{Keys: 200, ReadRatio: 0.9, Preload: true, Stale: true}},
		{name: "404 on a preloaded key is a miss", cfg: Config{Keys: 2, ReadRatio: 1, Preload: true},
			server: func(s *kvServer) { s.forget = Key(0) }, wantMisses: true},
		{name: "404 without preload is no miss", cfg: Config{Keys: 1000, ReadRatio: 1}},
		{name: "503 counted by status", cfg: Config{Keys: 1000},
			server: func(s *kvServer) { s.failSets = true }, wantKinds: []string{"http_503"}},

		// CAS: two workers on one key must lose races to each other, and
		// a lost race is a conflict, not an error.
		{name: "cas, two workers on one key", cfg: Config{Keys: 1, Concurrency: 2, Workload: WorkloadCAS}, wantConflicts: true},
		{name: "cas without preload creates the keys", cfg: Config{Keys: 1000, Workload: WorkloadCAS}},
		{name: "cas with reads, preloaded, stale", cfg: Config{Keys: 500, ReadRatio: 0.5, Preload: true, Stale: true, Workload: WorkloadCAS}},
		{name: "cas, 404 on a preloaded key is a miss", cfg: Config{Keys: 2, Preload: true, Workload: WorkloadCAS},
			server: func(s *kvServer) { s.forget = Key(0) }, wantMisses: true, wantConflicts: true},
		{name: "cas, 503 is an error, not a conflict", cfg: Config{Keys: 1000, Workload: WorkloadCAS},
			server: func(s *kvServer) { s.failSets = true }, wantKinds: []string{"http_503"}},

		// Batches: keys/s is the batch size times ops/s.
		{name: "batch", cfg: Config{Keys: 1000, Batch: 10}},
		{name: "largest batch", cfg: Config{Keys: 1000, Batch: MaxBatch}},
		{name: "batch with reads", cfg: Config{Keys: 1000, Batch: 7, ReadRatio: 0.3}},
		{name: "batch results that fail count by status", cfg: Config{Keys: 1000, Batch: 6},
			server: func(s *kvServer) { s.failOps = true }, wantKinds: []string{"http_503"}},
		{name: "a failed batch request counts each key", cfg: Config{Keys: 1000, Batch: 4},
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
			// one of them, so reads of it must go where it was written,
			// and so must a CAS's set after its get. One server is enough
			// for those checks.
			cas := tt.cfg.Workload == WorkloadCAS
			if tt.cfg.Preload || cas {
				addrs = addrs[:1]
			}
			c := tt.cfg
			c.Addrs, c.Duration, c.ValueSize, c.Timeout, c.Seed = addrs, 200*time.Millisecond, 20, 5*time.Second, 7
			c.Concurrency = cmp.Or(c.Concurrency, 3)
			res, err := Run(context.Background(), c, nil)
			if err != nil {
				t.Fatal(err)
			}
			var sets, condSets, conflicts, gets, stale, batches, batchOps, failedOps int64
			for i := range addrs {
				s := servers[i]
				if v := s.badBody.Load(); v != nil {
					t.Fatalf("server got a bad request: %v", v)
				}
				if s.sets.Load()+s.gets.Load()+s.batches.Load() == 0 {
					t.Errorf("server %d got no requests: no round robin", i)
				}
				sets, condSets, conflicts = sets+s.sets.Load(), condSets+s.condSets.Load(), conflicts+s.conflict.Load()
				gets, stale = gets+s.gets.Load(), stale+s.stale.Load()
				batches, batchOps, failedOps = batches+s.batches.Load(), batchOps+s.batchOps.Load(), failedOps+s.failedOp.Load()
				for k, v := range s.data {
					if v != strings.Repeat("x", c.ValueSize) {
						t.Fatalf("%s = %q", k, v)
					}
				}
			}
			// Each op is one request, but a CAS op is a get and a set.
			casGets, batch := int64(0), int64(max(c.Batch, 1))
			if cas {
				casGets = res.Writes
			}
			if res.Ops == 0 || res.Ops+casGets+int64(res.Preloaded) != sets+gets+batches || res.Reads+casGets != gets {
				t.Errorf("result %+v; servers saw %d sets, %d gets, %d batches", res, sets, gets, batches)
			}
			if cas && condSets != res.Writes || !cas && condSets != 0 {
				t.Errorf("%d conditional sets for %d writes, workload %q", condSets, res.Writes, c.Workload)
			}
			if batch > 1 && (batches != res.Writes || batchOps != batch*res.Writes) {
				t.Errorf("%d batches of %d ops in all for %d writes of %d keys", batches, batchOps, res.Writes, batch)
			}
			if want := res.Reads + batch*res.Writes; res.Keys != want {
				t.Errorf("keys %d, want %d (%d reads, %d writes of %d)", res.Keys, want, res.Reads, res.Writes, batch)
			}
			if !nearly(res.KeysPerSec, float64(res.Keys)/res.Seconds) || res.Reads == 0 && !nearly(res.KeysPerSec, float64(batch)*res.OpsPerSec) {
				t.Errorf("keys/s %.1f, ops/s %.1f, batch %d, keys %d in %.3fs", res.KeysPerSec, res.OpsPerSec, batch, res.Keys, res.Seconds)
			}
			if c.Stale && !cas && stale != gets || c.Stale && cas && stale != res.Reads || !c.Stale && stale != 0 {
				t.Errorf("%d of %d gets were stale, Stale=%v, %d reads: a CAS's get must not be", stale, gets, c.Stale, res.Reads)
			}
			if res.Conflicts != conflicts {
				t.Errorf("conflicts %d, servers answered %d", res.Conflicts, conflicts)
			}
			if tt.wantConflicts && res.Conflicts == 0 || !cas && res.Conflicts != 0 {
				t.Errorf("conflicts %d of %d writes, want some: %v", res.Conflicts, res.Writes, tt.wantConflicts)
			}
			if (res.Misses > 0) != tt.wantMisses {
				t.Errorf("misses %d, want misses: %v", res.Misses, tt.wantMisses)
			}
			if len(res.ErrorKinds) != len(tt.wantKinds) || len(tt.wantKinds) == 0 && res.Errors != 0 {
				t.Errorf("errors %d, kinds %v, want %v", res.Errors, res.ErrorKinds, tt.wantKinds)
			}
			for _, k := range tt.wantKinds {
				if res.ErrorKinds[k] == 0 {
					t.Errorf("error kinds %v: no %s", res.ErrorKinds, k)
				}
			}
			var kindSum int64
			for _, v := range res.ErrorKinds {
				kindSum += v
			}
			if kindSum != res.Errors {
				t.Errorf("error kinds %v add up to %d, errors %d", res.ErrorKinds, kindSum, res.Errors)
			}
			if failedOps > 0 && res.Errors != failedOps {
				t.Errorf("errors %d, servers failed %d results", res.Errors, failedOps)
			}
			if batch > 1 && res.Errors%batch != 0 && failedOps == 0 {
				t.Errorf("errors %d: a failed batch of %d counts every key", res.Errors, batch)
			}
			if !(res.P50Ms <= res.P90Ms && res.P90Ms <= res.P99Ms && res.P99Ms <= res.P999Ms && res.P999Ms <= res.MaxMs) {
				t.Errorf("percentiles out of order: %+v", res)
			}
			s := res.String(c)
			if !strings.Contains(s, fmt.Sprintf("%.0f keys/s", res.KeysPerSec)) ||
				cas != strings.Contains(s, fmt.Sprintf("conflicts    %d", res.Conflicts)) {
				t.Errorf("summary lacks keys/s or conflicts:\n%s", s)
			}
		})
	}
}

// nearly is a == b but for rounding.
func nearly(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

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

// TestMainWorkloadFlags: -workload and -batch from the command line, the
// values refused with exit 2 and a message, and the JSON fields of the
// runs they make.
func TestMainWorkloadFlags(t *testing.T) {
	s := &kvServer{data: map[string]string{}}
	srv := httptest.NewServer(s)
	defer srv.Close()
	for _, tt := range []struct {
		args     []string
		wantCode int
		wantErr  string // in stderr
		check    func(Result) bool
	}{
		{args: []string{"-workload", "rmw"}, wantCode: 2, wantErr: `-workload must be set or cas, not "rmw"`},
		{args: []string{"-batch", "501"}, wantCode: 2, wantErr: "-batch must be from 1 to 500"},
		{args: []string{"-batch", "-2"}, wantCode: 2, wantErr: "-batch must be from 1 to 500"},
		{args: []string{"-batch", "ten"}, wantCode: 2, wantErr: `invalid value "ten" for flag -batch`},
		{args: []string{"-workload", "cas", "-batch", "2"}, wantCode: 2, wantErr: "-batch applies to -workload set only, not cas"},
		{args: []string{"-workload", "set"}, check: func(r Result) bool { return r.Writes > 0 && r.Keys == r.Ops && r.Conflicts == 0 }},
		{args: []string{"-workload", "cas", "-keys", "1"}, check: func(r Result) bool { return r.Writes > 0 && r.Keys == r.Ops && r.Conflicts > 0 }},
		{args: []string{"-batch", "500"}, check: func(r Result) bool { return r.Writes > 0 && r.Keys == 500*r.Ops }},
		{args: []string{"-batch", "1"}, check: func(r Result) bool { return r.Writes > 0 && r.Keys == r.Ops }},
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
			var fields map[string]any
			_ = json.Unmarshal(stdout.Bytes(), &fields)
			for _, f := range []string{"keys", "keys_per_sec", "conflicts"} {
				if _, ok := fields[f]; !ok {
					t.Errorf("JSON lacks %q: %s", f, stdout.String())
				}
			}
			if res.Errors != 0 || !tt.check(res) {
				t.Errorf("result %+v", res)
			}
		})
	}
}

// BenchmarkHTTPTarget reports the load tool's own cost per request (the
// in-process server's allocations are included).
func BenchmarkHTTPTarget(b *testing.B) {
	batch := []byte(`{"results":[` + strings.Repeat(`{"status":200,"op":"set","key":"bench:00000000","revision":9},`, 9) +
		`{"status":200,"op":"set","key":"bench:00000000","revision":9}],"count":10}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/kv/batch" {
			_, _ = w.Write(batch)
			return
		}
		_, _ = w.Write([]byte(`{"key":"bench:00000000","value":"x","revision":9,"status":"success"}`))
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
	b.Run("cas", func(b *testing.B) { // a get of the revision and a conditional set
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, _, err := casOnce(ctx, tg, 0, Key(i), value); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("batch10", func(b *testing.B) {
		keys := make([]string, 10)
		for i := range keys {
			keys[i] = Key(i)
		}
		b.ReportAllocs()
		for b.Loop() {
			if failed, err := tg.SetBatch(ctx, 0, keys, value); err != nil || failed != nil {
				b.Fatal(failed, err)
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
	var hashTags atomic.Bool
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
		}, "hash_config": map[string]any{"hash_tags": hashTags.Load(), "modulo": parts}})
	}))
	t.Cleanup(mgmt.Close)

	// -addrs names only the first server: the second is learnt from /cluster.
	c := Config{Addrs: addrs[:1], Concurrency: 4, Duration: 300 * time.Millisecond, Keys: 200, ValueSize: 8,
		Timeout: 5 * time.Second, Seed: 1, RouteVia: strings.TrimPrefix(mgmt.URL, "http://")}
	// A batch goes to the primary of its first key, which a server that
	// does not own it refuses (421); run them first, as the other keys of
	// a batch land on that server, which the check below would refuse.
	for i, s := range kvs {
		s.owns = func(k string) bool { return primaryOf(ring.PartitionOf(k, parts)) == i }
	}
	batched := c
	batched.Batch = 5
	res, err := Run(context.Background(), batched, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || res.Writes == 0 || res.Keys != 5*res.Writes {
		t.Fatalf("batched run: %+v", res)
	}
	for i, s := range kvs {
		if s.batches.Load() == 0 {
			t.Errorf("server %d got no batch", i)
		}
		s.mu.Lock()
		clear(s.data)
		s.mu.Unlock()
	}

	// Keys are placed by their hash tag when the cluster says so: with
	// the tag {t} in the prefix, every key on one server.
	for _, tt := range []struct {
		tags   bool
		prefix string
	}{{false, ""}, {true, ""}, {false, "bench:{t}:"}, {true, "bench:{t}:"}} {
		hashTags.Store(tt.tags)
		c := c
		c.KeyPrefix = tt.prefix
		place := ring.PartitionOf
		if tt.tags {
			place = ring.PartitionOfTagged
		}
		res, err = Run(context.Background(), c, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Errors != 0 || res.Writes == 0 {
			t.Fatalf("hash tags %v, prefix %q: run: %+v", tt.tags, tt.prefix, res)
		}
		for i, s := range kvs {
			s.mu.Lock()
			n := len(s.data)
			for k := range s.data {
				if p := place(k, parts); primaryOf(p) != i {
					t.Errorf("hash tags %v: key %s (partition %d) went to server %d, its primary is %d", tt.tags, k, p, i, primaryOf(p))
				}
			}
			clear(s.data)
			s.mu.Unlock()
			if want := tt.prefix == "" || !tt.tags || primaryOf(ring.PartitionOf("t", parts)) == i; want != (n > 0) {
				t.Errorf("hash tags %v, prefix %q: server %d got %d keys", tt.tags, tt.prefix, i, n)
			}
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
		if r.URL.Path == "/kv/batch" {
			w.Write([]byte(`{"results":[{"status":200,"op":"set","key":"k","revision":4}],"count":1}`))
			return
		}
		w.Write([]byte(`{"key":"k","value":"v","revision":3}`))
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
		if rev, found, err := tg.GetRevision(context.Background(), worker, "k"); err != nil || !found || rev != 3 {
			t.Fatalf("worker %d get revision: %d %v %v", worker, rev, found, err)
		}
		if conflict, err := tg.SetIf(context.Background(), worker, "k", []byte("v"), 3); err != nil || conflict {
			t.Fatalf("worker %d set if: %v %v", worker, conflict, err)
		}
		if failed, err := tg.SetBatch(context.Background(), worker, []string{"k"}, []byte("v")); err != nil || failed != nil {
			t.Fatalf("worker %d batch: %v %v", worker, failed, err)
		}
	}
	if seen.Load() != 10 || refused.Load() != 0 {
		t.Fatalf("server saw %d authorised and %d refused requests, want 10 and 0", seen.Load(), refused.Load())
	}
	// Without the server's CA the target refuses to talk.
	strict := NewHTTPTarget(Config{Addrs: []string{addr}, Concurrency: 1, Timeout: 5 * time.Second, TLS: &tls.Config{}})
	defer strict.Close()
	if err := strict.Set(context.Background(), 0, "k", []byte("v")); ErrorKind(err) != "tls" {
		t.Fatalf("set to an untrusted server: %v (kind %q), want kind tls", err, ErrorKind(err))
	}
}

// TestHTTPTargetAnswers: the CAS and batch requests the HTTP target sends,
// and how it reads each kind of answer, on both request paths.
func TestHTTPTargetAnswers(t *testing.T) {
	type call struct {
		rev      uint64 // GetRevision's
		found    bool   // GetRevision's
		conflict bool   // SetIf's
		failed   []string
		errKind  string
	}
	tests := []struct {
		name     string
		status   int
		answer   string
		do       string // "rev", "setif" or "batch"
		wantPath string // and query, or body
		wantBody string // JSON, compared by value
		want     call
	}{
		{name: "revision", do: "rev", status: 200, answer: `{"key":"k","value":"v \"revision\":9 {[","revision":7,"expires_at":"2030-01-01T00:00:00.000Z","ttl_ms":5}`,
			wantPath: "/kv/get?key=k", want: call{rev: 7, found: true}},
		{name: "revision first", do: "rev", status: 200, answer: "{ \"revision\" : 12 ,\n\"key\":\"k\",\"value\":\"\"}", wantPath: "/kv/get?key=k", want: call{rev: 12, found: true}},
		{name: "a get's 404 is not found", do: "rev", status: 404, answer: `{"code":"key_not_found","error":"key not found"}`, wantPath: "/kv/get?key=k"},
		{name: "an answer without a revision is bad", do: "rev", status: 200, answer: `{"key":"k","value":"v"}`, want: call{errKind: "bad_answer"}},
		{name: "a quoted revision is bad", do: "rev", status: 200, answer: `{"key":"k","revision":"7"}`, want: call{errKind: "bad_answer"}},
		{name: "a get's 503", do: "rev", status: 503, answer: `{"code":"unavailable"}`, want: call{errKind: "http_503"}},
		{name: "conditional set", do: "setif", status: 200, answer: `{"key":"k","status":"success","revision":5}`,
			wantPath: "/kv/set", wantBody: `{"key":"k","value":"v","if_revision":4}`},
		{name: "conditional set lost", do: "setif", status: 409, answer: `{"code":"condition_failed","current_revision":6,"error":"the condition does not hold","exists":true}`,
			want: call{conflict: true}},
		{name: "another 409 is an error", do: "setif", status: 409, answer: `{"code":"epoch_mismatch","error":"x","detail":{"code":"condition_failed"}}`,
			want: call{errKind: "http_409"}},
		{name: "a conditional set's 503", do: "setif", status: 503, answer: `{"code":"condition_failed"}`, want: call{errKind: "http_503"}},
		{name: "batch", do: "batch", status: 200, answer: `{"results":[{"status":200,"op":"set","key":"a","revision":1},{"status":200,"op":"set","key":"b","revision":2},{"status":200,"op":"set","key":"c","revision":3}],"count":3}`,
			wantPath: "/kv/batch", wantBody: `{"ops":[{"op":"set","key":"a","value":"v"},{"op":"set","key":"b","value":"v"},{"op":"set","key":"c","value":"v"}]}`},
		{name: "batch results that failed", do: "batch", status: 200,
			answer: `{"results":[{"status":503,"op":"set","key":"a","code":"unavailable"},{"status":200,"op":"set","key":"b","revision":2,"prev":{"value":"x","revision":1,"status":1}},{"status":413,"op":"set","key":"c"}],"count":3}`,
			want:   call{failed: []string{"http_503", "http_413"}}},
		{name: "too few batch results", do: "batch", status: 200, answer: `{"results":[{"status":200}],"count":1}`, want: call{errKind: "bad_answer"}},
		{name: "a batch answer that is no JSON", do: "batch", status: 200, answer: `{"results":[{"status":200},{"status":200},{"status":200}`, want: call{errKind: "bad_answer"}},
		{name: "a failed batch", do: "batch", status: 413, answer: `{"code":"too_many_ops"}`, want: call{errKind: "http_413"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var gotPath, gotBody []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				gotPath, gotBody = append(gotPath, r.URL.RequestURI()), append(gotBody, string(b))
				mu.Unlock()
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.answer))
			}))
			defer srv.Close()
			// Stale is set: a CAS's get must not use it.
			tg := NewHTTPTarget(Config{Addrs: []string{strings.TrimPrefix(srv.URL, "http://")}, Concurrency: 1, Timeout: 5 * time.Second, Stale: true})
			defer tg.Close()
			for _, worker := range []int{0, 0, 3} { // the lean path twice (its buffers reused), then net/http
				var got call
				var err error
				switch tt.do {
				case "rev":
					got.rev, got.found, err = tg.GetRevision(context.Background(), worker, "k")
				case "setif":
					got.conflict, err = tg.SetIf(context.Background(), worker, "k", []byte("v"), 4)
				case "batch":
					var failed []error
					failed, err = tg.SetBatch(context.Background(), worker, []string{"a", "b", "c"}, []byte("v"))
					for _, f := range failed {
						got.failed = append(got.failed, ErrorKind(f))
					}
				}
				got.errKind = ErrorKind(err)
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Errorf("worker %d: got %+v (err %v), want %+v", worker, got, err, tt.want)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range gotPath {
				if tt.wantPath != "" && gotPath[i] != tt.wantPath {
					t.Errorf("request %d to %s, want %s", i, gotPath[i], tt.wantPath)
				}
				if tt.wantBody != "" {
					var got, want any
					if err := json.Unmarshal([]byte(gotBody[i]), &got); err != nil || json.Unmarshal([]byte(tt.wantBody), &want) != nil || !reflect.DeepEqual(got, want) {
						t.Errorf("request %d body %s, want %s", i, gotBody[i], tt.wantBody)
					}
				}
			}
		})
	}
}

// TestScanJSON: the scan that reads the answers' fields agrees with
// encoding/json on answers that could trip it.
func TestScanJSON(t *testing.T) {
	for _, tt := range []struct {
		doc      string
		rev      string // topUint(doc, "revision"); "" for none
		failed   bool   // topIs(doc, "code", "condition_failed")
		statuses string // batchStatuses, joined by commas; "-" if it fails
	}{
		{doc: `{"revision":12}`, rev: "12", statuses: "-"},
		{doc: `{"a":{"revision":5},"revision":6}`, rev: "6", statuses: "-"},
		{doc: `{"a":{"revision":5}}`, statuses: "-"},
		{doc: `{"a":[{"revision":5}],"v":"\"revision\":5"}`, statuses: "-"},
		{doc: `{"v":"x\\","revision":3}`, rev: "3", statuses: "-"},
		{doc: `{"revision":-1}`, statuses: "-"},
		{doc: `{"revision":1.5}`, statuses: "-"},
		{doc: `{"revision":1e3}`, statuses: "-"},
		{doc: `{"revision":18446744073709551615}`, rev: "18446744073709551615", statuses: "-"},
		{doc: `{"revision":18446744073709551616}`, statuses: "-"},
		{doc: `{"revision":null,"code":"condition_failed"}`, failed: true, statuses: "-"},
		{doc: `{"code":"condition_failed_x","x":{"code":"condition_failed"}}`, statuses: "-"},
		{doc: `{"error":"code \"condition_failed\"","code":"key_not_found"}`, statuses: "-"},
		{doc: `{"results":[],"count":0}`},
		{doc: `{"results":[{"status":200,"prev":{"status":7}},{"key":"status","status":503}],"count":2}`, statuses: "200,503"},
		{doc: `{"count":1,"results":[ {"op":"set", "status" : 409 } ],"committed":false}`, statuses: "409"},
		{doc: `{"results":[{"status":200}]`, statuses: "-"},
		{doc: `{"results":[{"status":200}]]]`, statuses: "-"},
	} {
		// The expectations hold for valid JSON as encoding/json reads it.
		var m map[string]any
		d := json.NewDecoder(strings.NewReader(tt.doc))
		d.UseNumber()
		if err := d.Decode(&m); err == nil && !d.More() {
			want := ""
			if n, ok := m["revision"].(json.Number); ok {
				if _, err := strconv.ParseUint(n.String(), 10, 64); err == nil {
					want = n.String()
				}
			}
			if want != tt.rev {
				t.Errorf("%s: the test wants revision %q, encoding/json reads %q", tt.doc, tt.rev, want)
			}
			if (m["code"] == "condition_failed") != tt.failed {
				t.Errorf("%s: the test wants condition_failed %v, encoding/json reads code %v", tt.doc, tt.failed, m["code"])
			}
		}
		rev, ok := topUint([]byte(tt.doc), "revision")
		if got := fmt.Sprint(rev); !ok && tt.rev != "" || ok && got != tt.rev {
			t.Errorf("%s: revision %s %v, want %q", tt.doc, got, ok, tt.rev)
		}
		if got := topIs([]byte(tt.doc), "code", "condition_failed"); got != tt.failed {
			t.Errorf("%s: condition failed %v, want %v", tt.doc, got, tt.failed)
		}
		var st []string
		if !batchStatuses([]byte(tt.doc), func(s []byte) { st = append(st, string(s)) }) {
			st = []string{"-"}
		}
		if got := strings.Join(st, ","); got != tt.statuses {
			t.Errorf("%s: statuses %q, want %q", tt.doc, got, tt.statuses)
		}
	}
}

func TestSetBodiesCarryTTL(t *testing.T) {
	extra := ttlField(90 * time.Second)
	tests := []struct{ got, want string }{
		{string(appendSetBody(nil, "k", []byte("v"), extra)), `{"key":"k","value":"v","ttl":"1m30s"}`},
		{string(appendSetIfBody(nil, "k", []byte("v"), extra, 7)), `{"key":"k","value":"v","ttl":"1m30s","if_revision":7}`},
		{string(appendBatchBody(nil, []string{"a", "b"}, []byte("v"), extra)), `{"ops":[{"op":"set","key":"a","value":"v","ttl":"1m30s"},{"op":"set","key":"b","value":"v","ttl":"1m30s"}]}`},
		{string(appendSetBody(nil, "k", []byte("v"), ttlField(0))), `{"key":"k","value":"v"}`},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("body = %s, want %s", tt.got, tt.want)
		}
	}
}
