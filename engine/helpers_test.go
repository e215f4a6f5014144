package engine

// Test fixtures shared by the kvapi tests: an in-memory partition table that
// stands in for the Raft FSM (Router + Control), real storage in temp dirs,
// and real HTTP servers on loopback. Nothing here is package-level state:
// every test builds its own table, nodes and client.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/apitest"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/ring"
	"github.com/clusterkit/clusterkit/storage"
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
	// minCopies is the copy floor the table reports (1 unless a test
	// sets it, as in a cluster with MIN_INSYNC=1).
	minCopies int
	// stores is the data-directory identity recorded per node (none
	// unless a test sets one).
	stores map[string]string
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

func (v *tableView) PartitionOf(key string) int { return ring.PartitionOfTagged(key, v.f.parts) }

func (v *tableView) MinCopies() int {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	return max(1, v.f.minCopies)
}

func (v *tableView) ReplicationFactor() int { return 3 }

func (v *tableView) ClusterID() string { return "test-cluster" }

func (v *tableView) StoreOf(node string) string {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	return v.f.stores[node]
}

// setStore records id as node's data-directory identity, as applying a
// node's upsert does.
func (f *fakeTable) setStore(node, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stores == nil {
		f.stores = map[string]string{}
	}
	f.stores[node] = id
	f.notifyLocked()
}

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

// addr resolves a node's internal address, for its peer.Client.
func (f *fakeTable) addr(node string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.addrs[node]
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
	// lostAdds is how many additions to apply and then answer with an
	// unknown outcome, as when the answer is lost on the way back.
	lostAdds int
	// applied, if set, runs after a call that succeeded (a real Control
	// returns only once the caller's own table shows the change).
	applied func()
}

var _ Control = (*fakeControl)(nil)

func controlEvent(p int, node string, inSync bool) string {
	return fmt.Sprintf("control: partition %d node %s in_sync=%v", p, node, inSync)
}

func (c *fakeControl) SetInSync(ctx context.Context, p int, epoch uint64, node string, inSync bool) error {
	c.mu.Lock()
	delay, fail := c.delay, c.failRemove && !inSync
	lost := inSync && c.lostAdds > 0
	if lost {
		c.lostAdds--
	}
	applied := c.applied
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
	if err == nil && lost {
		return errcode.New(errcode.OutcomeUnknown, "fake control: the answer to the addition was lost")
	}
	if err == nil && applied != nil {
		applied()
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

// noControl is the control plane of an engine test: there is no Raft, so
// peers never ask this node for one.
type noControl struct{}

func (noControl) ServeApply(context.Context, []byte) (uint64, error) {
	return 0, errcode.New(errcode.NotLeader, "no raft in engine tests")
}
func (noControl) ServeDrain(context.Context, string, bool) error {
	return errcode.New(errcode.NotLeader, "no raft in engine tests")
}
func (noControl) ServeMembers(context.Context) ([]peer.Member, error) { return nil, nil }
func (noControl) ServeLeave(context.Context) error                    { return nil }
func (noControl) ServeKeyring(context.Context, peer.KeyringReq) (peer.KeyringStatus, error) {
	return peer.KeyringStatus{}, nil
}

func testLogger(tb testing.TB) *slog.Logger {
	if _, ok := tb.(*testing.B); ok {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// Warnings (replica dropped, catch-up failed) explain most failures;
	// they are shown only for failing tests or with -v.
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// internalCall is one request a node served to a peer.
type internalCall struct {
	Kind   string // "forward", "read", "replicate", ... (peer.KindName)
	Stale  bool   // a read with consistency=stale
	Status int    // the HTTP status its answer maps to
}

// callRecorder records every request a node serves to its peers, and its
// answer, so tests can see which node served what.
type callRecorder struct {
	mu    sync.Mutex
	calls []internalCall
	stall map[string]bool // kinds that hang until the caller gives up
}

// setStall makes requests of the kind hang until the caller gives up: a
// node that is up but not answering.
func (c *callRecorder) setStall(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stall == nil {
		c.stall = map[string]bool{}
	}
	c.stall[kind] = true
}

// intercept is the node's peer.Intercept.
func (c *callRecorder) intercept(ctx context.Context, kind string, req any, serve func(context.Context) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	stalled := c.stall[kind]
	c.mu.Unlock()
	if stalled {
		// The request's deadline is the caller's; answer well after
		// it, as a peer that is up but stuck would.
		<-ctx.Done()
		time.Sleep(time.Second)
		return nil, errcode.New(errcode.Unavailable, "stalled by the test")
	}
	body, err := serve(ctx)
	status := http.StatusOK
	if err != nil {
		status = httpapi.Status(errcode.Of(err))
	}
	r, _ := req.(peer.ReadReq)
	c.mu.Lock()
	c.calls = append(c.calls, internalCall{Kind: kind, Stale: r.Stale, Status: status})
	c.mu.Unlock()
	return body, err
}

// matching returns the recorded calls of a kind (e.g. "forward").
func (c *callRecorder) matching(kind string) []internalCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []internalCall
	for _, x := range c.calls {
		if x.Kind == kind {
			out = append(out, x)
		}
	}
	return out
}

// testNode is one node's data plane: real storage, and a real internal
// port on loopback with the real node-to-node protocol.
type testNode struct {
	id     string
	srv    *Engine
	db     *storage.DB
	ln     *peer.Listener
	client *peer.Client
	rec    *callRecorder
	stop   func() // stops Run and waits for it
}

// addr is the node's internal host:port.
func (n *testNode) addr() string { return n.ln.Addr().String() }

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
	// stores is the data-directory identity the table records per node
	// from the start (see fakeTable.stores).
	stores map[string]string
}

// cluster is a set of nodes sharing one table and one Control.
type cluster struct {
	table  *fakeTable
	ctl    *fakeControl
	events *eventLog
	nodes  map[string]*testNode
}

func newCluster(tb testing.TB, cfg clusterConfig) *cluster {
	tb.Helper()
	events := &eventLog{}
	table := newFakeTable(cfg.parts, cfg.row)
	table.stores = cfg.stores
	c := &cluster{
		table:  table,
		ctl:    &fakeControl{table: table, events: events},
		events: events,
		nodes:  map[string]*testNode{},
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
		raw, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("listen for %s: %v", id, err)
		}
		pcfg := peer.Config{Self: id, ClusterName: "test", Logger: log.With("node", id)}
		rec := &callRecorder{}
		ln := peer.NewListener(raw, pcfg)
		ln.Intercept = rec.intercept
		client := peer.NewClient(pcfg, table.addr)
		srv, err := New(Options{
			Router: table.view(id), Control: c.ctl, Storage: db, Transport: client,
			Logger: log.With("node", id), ReplicationTimeout: cfg.replTimeout,
			RequestTimeout: cfg.requestTimeout,
		})
		if err != nil {
			_ = db.Close()
			tb.Fatalf("new server %s: %v", id, err)
		}
		h := peer.Handlers{Data: srv, Control: noControl{}}
		ln.SetHandlers(h)
		client.SetLocal(h)
		n := &testNode{id: id, srv: srv, db: db, ln: ln, client: client, rec: rec, stop: func() {}}
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
		// Nodes without a Run still serve and hold connections.
		for _, n := range c.nodes {
			n.ln.StopServing()
			n.client.Close()
			_ = n.ln.Close()
		}
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

// apiResp is a raw HTTP answer.

// object decodes the body as a JSON object.

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
	return apiResp{Status: res.StatusCode, CType: res.Header.Get("Content-Type"), Body: w.Body.Bytes()}
}

// kvSet writes through n, as a client's set sent to n would.
func kvSet(tb testing.TB, n *testNode, key, value string) apiResp {
	tb.Helper()
	_, err := n.srv.Write(context.Background(), Op{Key: key, Value: value}, 0)
	return answer(err, map[string]string{"key": key, "status": "success"})
}

// kvGet reads through n, as a client's get sent to n would.
func kvGet(tb testing.TB, n *testNode, key, consistency string) apiResp {
	tb.Helper()
	v, err := n.srv.Read(context.Background(), key, consistency == "stale")
	return answer(err, map[string]string{"key": key, "value": v.Value})
}

// kvDelete deletes through n, as a client's delete sent to n would.
func kvDelete(tb testing.TB, n *testNode, key string) apiResp {
	tb.Helper()
	_, err := n.srv.Write(context.Background(), Op{Delete: true, Key: key}, 0)
	return answer(err, map[string]string{"key": key, "status": "deleted"})
}

// mustValue asserts a get answered 200 with value.

// checkError asserts the contract's error shape: JSON content type and a
// body {"error": non-empty, "code": non-empty}.

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
		r, err := storage.DecodeRecord(v)
		d.Pairs[string(k)] = string(r.Value)
		return err
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

// apiResp is an answer as the KV API gives it.
type apiResp = apitest.Resp
