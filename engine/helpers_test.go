package engine

// Test fixtures shared by the kvapi tests: an in-memory partition table that
// stands in for the Raft FSM (Router + Control), real storage in temp dirs,
// and real HTTP servers on loopback. Nothing here is package-level state:
// every test builds its own table, nodes and client.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/ring"
	"github.com/clusterkit/clusterkit/storage"
	"github.com/go-chi/chi/v5"
)

// fakeTable is the cluster's partition table as every node sees it. It is
// shared by all the nodes of a test; a node can be made to lag (freeze) so
// it keeps seeing an old copy, which is how a node cut off from the Raft
// leader behaves.
type fakeTable struct {
	mu       sync.Mutex
	parts    int
	routes   []Route
	addrs    map[string]string
	alive    map[string]bool
	frozen   map[string]frozenTable // node → the stale table it still sees
	watchers []chan struct{}
	version  uint64
}

func newFakeTable(parts int, row func(p int) Route) *fakeTable {
	f := &fakeTable{
		parts:  parts,
		routes: make([]Route, parts),
		addrs:  map[string]string{},
		alive:  map[string]bool{},
		frozen: map[string]frozenTable{},
	}
	for p := range parts {
		r := row(p)
		r.Partition = p
		f.routes[p] = cloneRoute(r)
	}
	return f
}

func cloneRoute(r Route) Route {
	r.Replicas = slices.Clone(r.Replicas)
	r.InSync = slices.Clone(r.InSync)
	return r
}

func cloneRoutes(rs []Route) []Route {
	out := make([]Route, len(rs))
	for i, r := range rs {
		out[i] = cloneRoute(r)
	}
	return out
}

// notifyLocked wakes every watcher, never blocking (the FSM's semantics).
func (f *fakeTable) notifyLocked() {
	f.version++
	for _, ch := range f.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// update changes rows under the lock and tells the watchers, like an
// applied Raft entry.
func (f *fakeTable) update(fn func(rows []Route)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.routes)
	f.notifyLocked()
}

// updateAll applies fn to every row.
func (f *fakeTable) updateAll(fn func(r *Route)) {
	f.update(func(rows []Route) {
		for i := range rows {
			fn(&rows[i])
		}
	})
}

// bumpVersion advances the table's version by n without changing a row,
// as unrelated Raft entries (node health, say) do.
func (f *fakeTable) bumpVersion(n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.version += n - 1
	f.notifyLocked()
}

// route returns the current (unfrozen) row of p.
func (f *fakeTable) route(p int) Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	return cloneRoute(f.routes[p])
}

func (f *fakeTable) setAlive(node string, alive bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.alive[node] = alive
	f.notifyLocked()
}

// frozenTable is an old copy of the table, as a lagging node sees it.
type frozenTable struct {
	routes  []Route
	version uint64
}

// freeze makes node keep seeing the table as it is now.
func (f *fakeTable) freeze(node string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen[node] = frozenTable{routes: cloneRoutes(f.routes), version: f.version}
}

// unfreeze lets node see the current table again.
func (f *fakeTable) unfreeze(node string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.frozen, node)
	f.notifyLocked()
}

// setInSync is what the FSM does for CmdShrinkInSync/CmdExpandInSync:
// refuse a command for another epoch, refuse to add a non-replica.
func (f *fakeTable) setInSync(p int, epoch uint64, node string, inSync bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p < 0 || p >= f.parts {
		return fmt.Errorf("fake table: no partition %d", p)
	}
	r := &f.routes[p]
	if r.Epoch != epoch {
		return fmt.Errorf("fake table: partition %d is at epoch %d, command is for %d", p, r.Epoch, epoch)
	}
	if inSync {
		if !slices.Contains(r.Replicas, node) {
			return fmt.Errorf("fake table: %s is not a replica of partition %d", node, p)
		}
		if !slices.Contains(r.InSync, node) {
			r.InSync = append(r.InSync, node)
		}
	} else {
		r.InSync = slices.DeleteFunc(r.InSync, func(n string) bool { return n == node })
	}
	f.notifyLocked()
	return nil
}

// view is node self's Router.
func (f *fakeTable) view(self string) Router { return &tableView{f: f, self: self} }

type tableView struct {
	f    *fakeTable
	self string
}

var _ Router = (*tableView)(nil)

func (v *tableView) Self() string    { return v.self }
func (v *tableView) Partitions() int { return v.f.parts }

func (v *tableView) PartitionOf(key string) int { return ring.PartitionOf(key, v.f.parts) }

func (v *tableView) Route(p int) (Route, bool) {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	rows := v.f.routes
	if fr, ok := v.f.frozen[v.self]; ok {
		rows = fr.routes
	}
	if p < 0 || p >= len(rows) {
		return Route{}, false
	}
	return cloneRoute(rows[p]), true
}

func (v *tableView) KVAddr(node string) (string, bool) {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	a, ok := v.f.addrs[node]
	return a, ok
}

func (v *tableView) Alive(node string) bool {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	return v.f.alive[node]
}

func (v *tableView) Version() uint64 {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	if fr, ok := v.f.frozen[v.self]; ok {
		return fr.version
	}
	return v.f.version
}

func (v *tableView) Changed() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	v.f.mu.Lock()
	v.f.watchers = append(v.f.watchers, ch)
	v.f.mu.Unlock()
	return ch, func() {
		v.f.mu.Lock()
		defer v.f.mu.Unlock()
		v.f.watchers = slices.DeleteFunc(v.f.watchers, func(c chan struct{}) bool { return c == ch })
	}
}

// eventLog records what happened, in order, across goroutines, so a test
// can assert that one thing happened before another.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fmt.Sprintf(format, args...))
}

// index returns the position of the first event equal to e, or -1.
func (l *eventLog) index(e string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Index(l.events, e)
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.events, "\n")
}

// inSyncCall is one recorded Control.SetInSync call.
type inSyncCall struct {
	Partition int
	Epoch     uint64
	Node      string
	InSync    bool
	Err       error
}

// fakeControl applies SetInSync to the shared table (so, like the real one,
// it returns once the table shows the change), records every call, and can
// be told to be slow or to refuse removals.
type fakeControl struct {
	table  *fakeTable
	events *eventLog

	mu         sync.Mutex
	calls      []inSyncCall
	failRemove bool
	delay      time.Duration
}

var _ Control = (*fakeControl)(nil)

func controlEvent(p int, node string, inSync bool) string {
	return fmt.Sprintf("control: partition %d node %s in_sync=%v", p, node, inSync)
}

func (c *fakeControl) SetInSync(ctx context.Context, p int, epoch uint64, node string, inSync bool) error {
	c.mu.Lock()
	delay, fail := c.delay, c.failRemove && !inSync
	c.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var err error
	if fail {
		err = errors.New("fake control: configured to refuse removals")
	} else {
		err = c.table.setInSync(p, epoch, node, inSync)
	}
	c.mu.Lock()
	c.calls = append(c.calls, inSyncCall{Partition: p, Epoch: epoch, Node: node, InSync: inSync, Err: err})
	c.mu.Unlock()
	if err == nil && c.events != nil {
		c.events.add("%s", controlEvent(p, node, inSync))
	}
	return err
}

func (c *fakeControl) setFailRemove(v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failRemove = v
}

func (c *fakeControl) setDelay(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.delay = d
}

func (c *fakeControl) recorded() []inSyncCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func testLogger(tb testing.TB) *slog.Logger {
	if _, ok := tb.(*testing.B); ok {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// Warnings (replica dropped, catch-up failed) explain most failures;
	// they are shown only for failing tests or with -v.
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// internalCall is one request a node's internal routes answered.
type internalCall struct {
	Method, Path, Query string
	Status              int
}

// callRecorder wraps a node's handler and records every /internal/v1 call
// and its status, so tests can see which node served what.
type callRecorder struct {
	mu    sync.Mutex
	calls []internalCall
	stall map[string]bool // internal paths that hang until the caller gives up
}

// setStall makes requests to the internal path hang until the caller gives
// up: a node that is up but not answering.
func (c *callRecorder) setStall(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stall == nil {
		c.stall = map[string]bool{}
	}
	c.stall[path] = true
}

func (c *callRecorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, InternalPrefix) {
			h.ServeHTTP(w, r)
			return
		}
		path := strings.TrimPrefix(r.URL.Path, InternalPrefix)
		c.mu.Lock()
		stalled := c.stall[path]
		c.mu.Unlock()
		if stalled {
			// The server notices the caller hanging up only once the body
			// has been read; the timer is a backstop so Close never hangs.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		rw := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rw, r)
		c.mu.Lock()
		c.calls = append(c.calls, internalCall{Method: r.Method, Path: path, Query: r.URL.RawQuery, Status: rw.status})
		c.mu.Unlock()
	})
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

// Unwrap lets http.ResponseController reach the connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// intercept is the RPC counterpart of wrap: Engine.intercept runs it for
// every request served over a node-to-node connection.
func (c *callRecorder) intercept(ctx context.Context, path string, req any, h rpcHandler) ([]byte, error) {
	c.mu.Lock()
	stalled := c.stall[path]
	c.mu.Unlock()
	if stalled {
		// The request's deadline is the caller's; answer well after
		// it, as a peer that is up but stuck would.
		<-ctx.Done()
		time.Sleep(time.Second)
		return nil, errcode.New(errcode.Unavailable, "stalled by the test")
	}
	body, err := h(ctx)
	status := http.StatusOK
	if err != nil {
		status = httpapi.Status(errcode.Of(err))
	}
	c.mu.Lock()
	query := ""
	if r, ok := req.(readReq); ok && r.Stale {
		query = "consistency=stale"
	}
	c.calls = append(c.calls, internalCall{Method: "RPC", Path: path, Query: query, Status: status})
	c.mu.Unlock()
	return body, err
}

// matching returns the recorded calls to path (e.g. "/write").
func (c *callRecorder) matching(path string) []internalCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []internalCall
	for _, x := range c.calls {
		if x.Path == path {
			out = append(out, x)
		}
	}
	return out
}

// testNode is one kvapi node: real storage, real HTTP server on loopback.
type testNode struct {
	id   string
	srv  *Engine
	db   *storage.DB
	ts   *httptest.Server
	rec  *callRecorder
	url  string
	stop func() // stops Run and waits for it
}

// addr is the node's KV listener host:port.
func (n *testNode) addr() string { return n.ts.Listener.Addr().String() }

type clusterConfig struct {
	parts int
	ids   []string
	row   func(p int) Route
	// notAlive nodes start marked down in the table, which keeps a primary
	// from catching them up until the test says so.
	notAlive []string
	// noRun nodes do not start the sync loop.
	noRun          []string
	replTimeout    time.Duration
	requestTimeout time.Duration
	// prepare runs on a node's fresh store before its Engine is built,
	// to simulate what an earlier run left on disk.
	prepare func(id string, db *storage.DB)
}

// cluster is a set of nodes sharing one table and one Control.
type cluster struct {
	table  *fakeTable
	ctl    *fakeControl
	events *eventLog
	nodes  map[string]*testNode
	client *http.Client
}

func newCluster(tb testing.TB, cfg clusterConfig) *cluster {
	tb.Helper()
	events := &eventLog{}
	table := newFakeTable(cfg.parts, cfg.row)
	c := &cluster{
		table:  table,
		ctl:    &fakeControl{table: table, events: events},
		events: events,
		nodes:  map[string]*testNode{},
		client: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 128},
		},
	}
	log := testLogger(tb)
	for _, id := range cfg.ids {
		db, err := storage.Open(tb.TempDir(), storage.Options{Logger: log})
		if err != nil {
			tb.Fatalf("open storage for %s: %v", id, err)
		}
		if cfg.prepare != nil {
			cfg.prepare(id, db)
		}
		srv, err := New(Options{
			Router: table.view(id), Control: c.ctl, Storage: db,
			Logger: log.With("node", id), ReplicationTimeout: cfg.replTimeout,
			RequestTimeout: cfg.requestTimeout,
		})
		if err != nil {
			_ = db.Close()
			tb.Fatalf("new server %s: %v", id, err)
		}
		rec := &callRecorder{}
		srv.intercept = rec.intercept
		mux := chi.NewRouter()
		mux.Mount(InternalPrefix, srv.InternalHandler())
		ts := httptest.NewServer(rec.wrap(mux))
		n := &testNode{id: id, srv: srv, db: db, ts: ts, rec: rec, url: ts.URL, stop: func() {}}
		c.nodes[id] = n
		table.mu.Lock()
		table.addrs[id] = n.addr()
		table.alive[id] = !slices.Contains(cfg.notAlive, id)
		table.mu.Unlock()
	}
	// Runs start only once every address is known, so the first sync pass
	// can reach every replica.
	for _, id := range cfg.ids {
		if slices.Contains(cfg.noRun, id) {
			continue
		}
		n := c.nodes[id]
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			n.srv.Run(ctx)
		}()
		n.stop = sync.OnceFunc(func() {
			cancel()
			<-done
		})
	}
	// Shutdown order matters: stop every sync loop, then every listener
	// (Close waits for handlers), then storage, so nothing touches a closed
	// store.
	tb.Cleanup(func() {
		for _, n := range c.nodes {
			n.stop()
		}
		// Nodes without a Run still serve and hold RPC connections.
		for _, n := range c.nodes {
			n.srv.peers.close()
			n.srv.stopRPC()
		}
		for _, n := range c.nodes {
			n.ts.Close()
		}
		c.client.CloseIdleConnections()
		for _, n := range c.nodes {
			if err := n.db.Close(); err != nil {
				tb.Errorf("close storage of %s: %v", n.id, err)
			}
		}
	})
	return c
}

// waitReady waits until every partition's primary has reconciled its copy
// for the table's epoch (the sync loop's first job).
func (c *cluster) waitReady(tb testing.TB) {
	tb.Helper()
	waitFor(tb, 10*time.Second, "every primary reconciled for its epoch", func() bool {
		for p := range c.table.parts {
			rt := c.table.route(p)
			n, ok := c.nodes[rt.Primary]
			if !ok {
				continue
			}
			m, err := n.db.Meta(p)
			if err != nil || m.Epoch != rt.Epoch {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// singleNode is one node that is the primary of every partition, with no
// replicas, ready to serve.
func singleNode(tb testing.TB, parts int) (*testNode, *http.Client) {
	tb.Helper()
	c := newCluster(tb, clusterConfig{
		parts: parts,
		ids:   []string{"n1"},
		row:   func(int) Route { return Route{Primary: "n1", Epoch: 1} },
	})
	c.waitReady(tb)
	return c.nodes["n1"], c.client
}

// apiResp is a raw HTTP answer.
type apiResp struct {
	status int
	ctype  string
	body   []byte
}

// object decodes the body as a JSON object.
func (r apiResp) object(tb testing.TB) map[string]any {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		tb.Fatalf("body %q is not a JSON object: %v", r.body, err)
	}
	return m
}

func (r apiResp) String() string {
	return fmt.Sprintf("%d %s %s", r.status, r.ctype, bytes.TrimSpace(r.body))
}

func doReq(tb testing.TB, c *http.Client, method, u string, body []byte) apiResp {
	tb.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		tb.Fatalf("build %s %s: %v", method, u, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("read answer of %s %s: %v", method, u, err)
	}
	return apiResp{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), body: b}
}

// answer records what the KV API answers for err (nil: ok with body), in
// the one mapping the API uses, so tests of the data plane read like the
// client sees it.
func answer(err error, body any) apiResp {
	w := httptest.NewRecorder()
	if err != nil {
		httpapi.WriteError(w, err)
	} else {
		httpapi.WriteJSON(w, http.StatusOK, body)
	}
	res := w.Result()
	return apiResp{status: res.StatusCode, ctype: res.Header.Get("Content-Type"), body: w.Body.Bytes()}
}

// kvSet writes through n, as a client's set sent to n would.
func kvSet(tb testing.TB, n *testNode, key, value string) apiResp {
	tb.Helper()
	err := n.srv.Write(context.Background(), Op{Key: key, Value: value})
	return answer(err, map[string]string{"key": key, "status": "success"})
}

// kvGet reads through n, as a client's get sent to n would.
func kvGet(tb testing.TB, n *testNode, key, consistency string) apiResp {
	tb.Helper()
	v, err := n.srv.Read(context.Background(), key, consistency == "stale")
	return answer(err, map[string]string{"key": key, "value": v})
}

// kvDelete deletes through n, as a client's delete sent to n would.
func kvDelete(tb testing.TB, n *testNode, key string) apiResp {
	tb.Helper()
	err := n.srv.Write(context.Background(), Op{Delete: true, Key: key})
	return answer(err, map[string]string{"key": key, "status": "deleted"})
}

// mustValue asserts a get answered 200 with value.
func mustValue(tb testing.TB, r apiResp, key, want string) {
	tb.Helper()
	if r.status != http.StatusOK {
		tb.Fatalf("get %q: got %s, want 200", key, r)
	}
	m := r.object(tb)
	if m["key"] != key || m["value"] != want {
		tb.Fatalf("get %q: got %v, want key=%q value=%q", key, m, key, want)
	}
}

// checkError asserts the contract's error shape: JSON content type and a
// body {"error": non-empty, "code": non-empty}.
func checkError(tb testing.TB, r apiResp, wantStatus int, wantCode string) {
	tb.Helper()
	if r.status != wantStatus {
		tb.Errorf("status: got %s, want %d %s", r, wantStatus, wantCode)
	}
	if !strings.HasPrefix(r.ctype, "application/json") {
		tb.Errorf("Content-Type = %q, want application/json (body %q)", r.ctype, r.body)
	}
	var e struct {
		Error *string `json:"error"`
		Code  *string `json:"code"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil {
		tb.Fatalf("error body %q is not JSON: %v", r.body, err)
	}
	if e.Error == nil || *e.Error == "" || e.Code == nil || *e.Code == "" {
		tb.Errorf("error body %q lacks a non-empty error and code", r.body)
		return
	}
	if wantCode != "" && *e.Code != wantCode {
		tb.Errorf("code = %q, want %q (body %q)", *e.Code, wantCode, r.body)
	}
}

// partitionData is one partition's copy: its metadata and all its pairs.
type partitionData struct {
	Meta  storage.Meta
	Pairs map[string]string
}

func dumpPartition(tb testing.TB, db *storage.DB, p int) partitionData {
	tb.Helper()
	d := partitionData{Pairs: map[string]string{}}
	err := db.Snapshot(p, func(m storage.Meta) error {
		d.Meta = m
		return nil
	}, func(k, v []byte) error {
		d.Pairs[string(k)] = string(v)
		return nil
	})
	if err != nil {
		tb.Fatalf("snapshot partition %d: %v", p, err)
	}
	return d
}

// keyIn returns a key with the given prefix that lands in partition p.
func keyIn(tb testing.TB, prefix string, p, parts int) string {
	tb.Helper()
	for i := range 100000 {
		k := fmt.Sprintf("%s-%d", prefix, i)
		if ring.PartitionOf(k, parts) == p {
			return k
		}
	}
	tb.Fatalf("no key with prefix %q in partition %d", prefix, p)
	return ""
}
