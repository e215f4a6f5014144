package consensus

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Short Raft timeouts keep elections well under a second on loopback.
const (
	testHeartbeat = 300 * time.Millisecond
	testElection  = 300 * time.Millisecond
	testLease     = 150 * time.Millisecond
	// leaderWait bounds every wait for an election.
	leaderWait = 10 * time.Second
)

// recordingHandler keeps every log message (any level) so a test can assert
// on what the store decided, and forwards warnings and errors to next.
type recordingHandler struct {
	next slog.Handler
	mu   *sync.Mutex
	msgs *[]string
}

func newRecordingHandler(next slog.Handler) *recordingHandler {
	return &recordingHandler{next: next, mu: &sync.Mutex{}, msgs: new([]string)}
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	*h.msgs = append(*h.msgs, r.Message)
	h.mu.Unlock()
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *recordingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	return &c
}

func (h *recordingHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}

func (h *recordingHandler) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.msgs)
}

// testLogger writes warnings and errors to the test's output, so they show
// up only for failing tests (or with -v).
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	return ln
}

// testStore is a Store plus what a test needs to restart or address it.
type testStore struct {
	*Store
	id, dir, addr string
}

func openStore(t *testing.T, id, dir string, ln net.Listener, bootstrap bool, logger *slog.Logger, opts ...func(*Options)) *testStore {
	t.Helper()
	if logger == nil {
		logger = testLogger(t)
	}
	o := Options{
		NodeID: id, Stream: TCPStream(ln), Advertise: ln.Addr().String(), DataDir: dir,
		Bootstrap: bootstrap, Logger: logger,
		HeartbeatTimeout: testHeartbeat, ElectionTimeout: testElection, LeaderLease: testLease,
	}
	for _, f := range opts {
		f(&o)
	}
	s, err := Open(o)
	if err != nil {
		_ = ln.Close()
		t.Fatalf("Open %s: %v", id, err)
	}
	ts := &testStore{Store: s, id: id, dir: dir, addr: ln.Addr().String()}
	// Tests may close explicitly; Store.Close is idempotent, so closing
	// again here is fine (and exercises that).
	t.Cleanup(func() {
		if err := ts.Close(); err != nil {
			t.Errorf("close %s: %v", id, err)
		}
	})
	return ts
}

// waitLeader polls until one of stores is leader and returns it.
func waitLeader(t *testing.T, stores ...*testStore) *testStore {
	t.Helper()
	deadline := time.Now().Add(leaderWait)
	for time.Now().Before(deadline) {
		for _, s := range stores {
			if s.IsLeader() {
				return s
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no leader among %d stores within %v", len(stores), leaderWait)
	return nil
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func applyOK(t *testing.T, s *testStore, c Command) uint64 {
	t.Helper()
	idx, err := s.Apply(ctxT(t, 5*time.Second), c)
	if err != nil {
		t.Fatalf("Apply(%s) on %s: %v", CommandType(c[0]), s.id, err)
	}
	if idx == 0 {
		t.Fatalf("Apply(%s) returned index 0", CommandType(c[0]))
	}
	return idx
}

// statsAt returns s.Stats() once its applied index has reached idx. Raft
// updates that counter on its own goroutine, independently of the Apply
// future and of the FSM, so a read right after Apply may see it one behind.
func statsAt(t *testing.T, s *testStore, idx uint64) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := s.Stats()
		if st.AppliedIndex >= idx {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: raft applied index stuck below %d: %+v", s.id, idx, st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var testConfig = ClusterConfig{ID: "c1", Name: "test", Partitions: 8, ReplicationFactor: 3}

func TestStoreSingleNode(t *testing.T) {
	t.Parallel()
	ln := listen(t, "127.0.0.1:0")
	s := openStore(t, "n1", t.TempDir(), ln, true, nil)
	waitLeader(t, s)

	// The leader must have been announced on NotifyCh (node's reconcile
	// loop starts from it).
	select {
	case v := <-s.LeaderNotify():
		if !v {
			t.Fatal("LeaderNotify delivered false first")
		}
	case <-time.After(leaderWait):
		t.Fatal("LeaderNotify never fired")
	}
	if err := s.Barrier(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}

	idx1 := applyOK(t, s, mustEncode(t, CmdInit, InitCmd{Config: testConfig}))
	st := s.State()
	if st.Config != testConfig || len(st.Partitions) != testConfig.Partitions || st.Version != 1 {
		t.Fatalf("state after init: config %+v, %d partitions, version %d", st.Config, len(st.Partitions), st.Version)
	}

	// An FSM refusal comes back as the Apply error, with the entry's index
	// (it was committed, just not accepted).
	idx2, err := s.Apply(ctxT(t, 5*time.Second), mustEncode(t, CmdInit, InitCmd{Config: testConfig}))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("second init: err = %v, want ErrInvalid", err)
	}
	if idx2 <= idx1 {
		t.Fatalf("refused entry index %d, want > %d", idx2, idx1)
	}
	if s.State().Version != 1 {
		t.Fatal("refused command changed the version")
	}

	idx3 := applyOK(t, s, upsertCmd(t, node("n1", StatusAlive)))
	if got := s.State().Nodes["n1"]; !reflect.DeepEqual(got, node("n1", StatusAlive)) {
		t.Fatalf("node n1 = %+v", got)
	}
	if s.FSMUpdated().IsZero() || s.FSM() == nil || s.FSM().State() != s.State() {
		t.Fatal("FSM accessors inconsistent")
	}

	if id, addr := s.Leader(); id != "n1" || addr != s.addr {
		t.Fatalf("Leader() = %q %q, want n1 %q", id, addr, s.addr)
	}
	if got := s.RaftState(); got != "Leader" {
		t.Fatalf("RaftState = %q", got)
	}
	st2 := statsAt(t, s, idx3)
	if st2.State != "Leader" || st2.Term < 1 || st2.NumPeers != 0 || st2.LeaderID != "n1" {
		t.Fatalf("Stats = %+v", st2)
	}
	if st2.AppliedIndex < idx3 || st2.CommitIndex < idx3 || st2.LastLogIndex < st2.CommitIndex {
		t.Fatalf("Stats indexes inconsistent with applied entry %d: %+v", idx3, st2)
	}
	if ls := s.LeaderSince(); ls.IsZero() || ls.After(time.Now()) {
		t.Fatalf("LeaderSince = %v", ls)
	}
	if srv, err := s.Servers(); err != nil || len(srv) != 1 || srv[0] != (Server{ID: "n1", Address: s.addr, Voter: true}) {
		t.Fatalf("Servers = %+v, %v", srv, err)
	}

	t.Run("non-leader refuses Apply", func(t *testing.T) {
		// A store with no Raft state and no bootstrap waits to be added: it
		// never becomes leader and must not accept proposals.
		f := openStore(t, "n2", t.TempDir(), listen(t, "127.0.0.1:0"), false, nil)
		if f.IsLeader() {
			t.Fatal("unbootstrapped store is leader")
		}
		_, err := f.Apply(ctxT(t, time.Second), upsertCmd(t, node("n2", StatusAlive)))
		if !errors.Is(err, ErrNotLeader) {
			t.Fatalf("err = %v, want ErrNotLeader", err)
		}
		if id, addr := f.Leader(); id != "" || addr != "" {
			t.Fatalf("Leader() = %q %q, want empty", id, addr)
		}
		if f.State().Initialized() {
			t.Fatal("unbootstrapped store has state")
		}
	})
}

func TestStoreRestartResumes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// snapshot forces a Raft snapshot before the last entry, so the
		// restart goes through Restore plus a log tail, not only replay.
		snapshot bool
	}{
		{"log replay", false},
		{"snapshot plus tail", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			ln := listen(t, "127.0.0.1:0")
			addr := ln.Addr().String()
			s := openStore(t, "n1", dir, ln, true, nil)
			waitLeader(t, s)
			applyOK(t, s, mustEncode(t, CmdInit, InitCmd{Config: testConfig}))
			applyOK(t, s, upsertCmd(t, node("n1", StatusAlive)))
			if c.snapshot {
				if err := s.raft.Snapshot().Error(); err != nil {
					t.Fatalf("snapshot: %v", err)
				}
			}
			lastIdx := applyOK(t, s, upsertCmd(t, node("n2", StatusSuspect)))
			want := stateJSON(t, s.State())
			term := s.Stats().Term
			if err := s.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}

			// Same address: the Raft configuration on disk names it.
			rec := newRecordingHandler(testLogger(t).Handler())
			s2 := openStore(t, "n1", dir, listen(t, addr), true, slog.New(rec))
			msgs := rec.messages()
			if slices.Contains(msgs, "bootstrapping a new cluster") || !slices.Contains(msgs, "raft state found, resuming") {
				t.Fatalf("restart with Bootstrap=true must resume, not bootstrap; logged %q", msgs)
			}
			waitLeader(t, s2)
			if err := s2.Barrier(ctxT(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
			if got := stateJSON(t, s2.State()); got != want {
				t.Fatalf("state after restart:\nwant %s\ngot  %s", want, got)
			}
			st := s2.State()
			if st.Config != testConfig || st.Nodes["n2"].Status != StatusSuspect {
				t.Fatalf("config %+v / n2 %+v lost", st.Config, st.Nodes["n2"])
			}
			stats := statsAt(t, s2, lastIdx)
			if stats.Term <= term {
				t.Fatalf("term %d after restart, want > %d (a new election)", stats.Term, term)
			}
			if srv, err := s2.Servers(); err != nil || len(srv) != 1 || srv[0].ID != "n1" {
				t.Fatalf("Servers after restart = %+v, %v", srv, err)
			}
			// Still writable, and versions keep counting from where they were.
			applyOK(t, s2, removeCmd(t, "n2"))
			if got := s2.State().Version; got != st.Version+1 {
				t.Fatalf("version %d after restart+apply, want %d", got, st.Version+1)
			}
		})
	}
}

// multiNodeTimeouts are used where more than one voter exists. A single
// voter can never lose its quorum, but three voters on a shared, loaded CI
// machine under -race can miss a 150ms lease and re-elect mid-test, which
// would test the machine rather than the code.
func multiNodeTimeouts(o *Options) {
	o.HeartbeatTimeout, o.ElectionTimeout, o.LeaderLease = time.Second, time.Second, 500*time.Millisecond
}

// propose applies build(state) on whichever store leads, retrying across
// leadership changes. done reports whether the change is already in the
// state (a proposal can be committed even though its leader lost leadership
// before answering), so a retry never applies it twice. It returns the
// leader and an index at or after the change.
func propose(t *testing.T, stores []*testStore, done func(*State) bool, build func(*State) Command) (*testStore, uint64) {
	t.Helper()
	deadline := time.Now().Add(leaderWait)
	for {
		leader := waitLeader(t, stores...)
		if err := leader.Barrier(ctxT(t, 5*time.Second)); err == nil {
			if done(leader.State()) {
				return leader, leader.Stats().CommitIndex
			}
			idx, err := leader.Apply(ctxT(t, 5*time.Second), build(leader.State()))
			if err == nil {
				return leader, idx
			}
			if !errors.Is(err, ErrNotLeader) {
				t.Fatalf("Apply on %s: %v", leader.id, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not apply within %v", leaderWait)
		}
		t.Logf("leadership changed while proposing; retrying")
		time.Sleep(50 * time.Millisecond)
	}
}

// retryOnLeader runs op on the current leader until it succeeds, for
// idempotent membership changes.
func retryOnLeader(t *testing.T, stores []*testStore, what string, op func(*testStore) error) {
	t.Helper()
	deadline := time.Now().Add(leaderWait)
	for {
		leader := waitLeader(t, stores...)
		err := op(leader)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s on %s: %v; retrying", what, leader.id, err)
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStoreThreeNodes(t *testing.T) {
	t.Parallel()
	ids := []string{"n1", "n2", "n3"}
	stores := make([]*testStore, len(ids))
	for i, id := range ids {
		stores[i] = openStore(t, id, t.TempDir(), listen(t, "127.0.0.1:0"), i == 0, nil, multiNodeTimeouts)
	}
	waitLeader(t, stores[0])
	for _, s := range stores[1:] {
		retryOnLeader(t, stores, "add "+s.id, func(l *testStore) error {
			return l.AddServer(ctxT(t, 10*time.Second), s.id, s.addr, true)
		})
	}

	_, _ = propose(t, stores, (*State).Initialized, func(*State) Command {
		return mustEncode(t, CmdInit, InitCmd{Config: testConfig})
	})
	for _, id := range ids {
		propose(t, stores, func(s *State) bool { _, ok := s.Nodes[id]; return ok },
			func(*State) Command { return upsertCmd(t, node(id, StatusAlive)) })
	}
	// The in-sync set only grows through expand-in-sync: assign the row,
	// then bring each replica into sync at the row's epoch.
	row := Partition{ID: 0, Primary: "n1", Replicas: []string{"n2", "n3"}, InSync: []string{"n2", "n3"}, Epoch: 1}
	leader, idx := propose(t, stores, func(s *State) bool { return s.Partitions[0].Epoch == row.Epoch },
		func(s *State) Command { return legalRows(t, s.Version, row)[0] })
	for _, n := range row.InSync {
		leader, idx = propose(t, stores, func(s *State) bool { return s.Partitions[0].IsInSync(n) },
			func(*State) Command { return expandCmd(t, row.ID, row.Epoch, n) })
	}
	if got := leader.State().Partitions[0]; !reflect.DeepEqual(got, row) {
		t.Fatalf("p0 on leader = %+v, want %+v", got, row)
	}
	want := stateJSON(t, leader.State())
	// WaitApplied promises the FSM has applied idx, so the state must match
	// right away, with no polling. (This failed intermittently while
	// WaitApplied trusted raft.AppliedIndex; see TestWaitAppliedWaitsForFSM.)
	for _, s := range stores {
		if err := s.WaitApplied(ctxT(t, 5*time.Second), idx); err != nil {
			t.Fatalf("%s: %v", s.id, err)
		}
		if got := stateJSON(t, s.State()); got != want {
			t.Fatalf("%s state differs from leader's:\nwant %s\ngot  %s", s.id, want, got)
		}
	}

	srv, err := leader.Servers()
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []string
	for _, sv := range srv {
		if !sv.Voter {
			t.Errorf("%s is not a voter", sv.ID)
		}
		gotIDs = append(gotIDs, sv.ID)
		for _, s := range stores {
			if s.id == sv.ID && s.addr != sv.Address {
				t.Errorf("%s address %q, want %q", sv.ID, sv.Address, s.addr)
			}
		}
	}
	slices.Sort(gotIDs)
	if !slices.Equal(gotIDs, ids) {
		t.Fatalf("Servers = %v, want %v", gotIDs, ids)
	}

	ls := statsAt(t, leader, idx)
	if ls.State != "Leader" || ls.Term < 1 || ls.NumPeers != 2 || ls.LeaderID != leader.id || ls.LeaderAddress != leader.addr {
		t.Fatalf("leader Stats = %+v", ls)
	}
	if ls.AppliedIndex < idx || ls.CommitIndex < idx || ls.LastLogIndex < ls.CommitIndex {
		t.Fatalf("leader Stats indexes inconsistent with applied entry %d: %+v", idx, ls)
	}
	for _, s := range stores {
		if s == leader {
			continue
		}
		// A follower must refuse proposals and know who leads.
		if _, err := s.Apply(ctxT(t, time.Second), removeCmd(t, "n1")); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("Apply on follower %s: err = %v, want ErrNotLeader", s.id, err)
		}
		st := statsAt(t, s, idx)
		if st.State != "Follower" || st.Term < ls.Term || st.LeaderID == "" {
			t.Fatalf("follower %s Stats = %+v (leader term %d)", s.id, st, ls.Term)
		}
	}
	for _, s := range stores {
		if l := s.LeaderSince(); l.IsZero() || l.After(time.Now()) {
			t.Fatalf("%s LeaderSince = %v", s.id, l)
		}
	}

	// Remove a follower; the remaining two still form a quorum and commit.
	victim := stores[0]
	for _, s := range stores {
		if !s.IsLeader() {
			victim = s
			break
		}
	}
	retryOnLeader(t, stores, "remove "+victim.id, func(l *testStore) error {
		return l.RemoveServer(ctxT(t, 10*time.Second), victim.id)
	})
	remaining := slices.DeleteFunc(slices.Clone(stores), func(s *testStore) bool { return s == victim })
	leader = waitLeader(t, remaining...)
	srv, err = leader.Servers()
	if err != nil {
		t.Fatal(err)
	}
	if len(srv) != 2 || slices.ContainsFunc(srv, func(s Server) bool { return s.ID == victim.id }) {
		t.Fatalf("Servers after removing %s = %+v", victim.id, srv)
	}
	_, idx = propose(t, remaining, func(s *State) bool { _, ok := s.Nodes["n4"]; return ok },
		func(*State) Command { return upsertCmd(t, node("n4", StatusAlive)) })
	for _, s := range remaining {
		if err := s.WaitApplied(ctxT(t, 5*time.Second), idx); err != nil {
			t.Fatalf("%s after removal: %v", s.id, err)
		}
		if _, ok := s.State().Nodes["n4"]; !ok {
			t.Fatalf("%s missing n4 after WaitApplied (see TestWaitAppliedWaitsForFSM)", s.id)
		}
	}
}

// TestWaitAppliedHonoursContext checks that WaitApplied gives up when its
// context ends instead of spinning forever on an index that never comes.
func TestWaitAppliedHonoursContext(t *testing.T) {
	t.Parallel()
	s := openStore(t, "n1", t.TempDir(), listen(t, "127.0.0.1:0"), false, nil)
	err := s.WaitApplied(ctxT(t, 50*time.Millisecond), 1<<40)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "wait for raft index") {
		t.Fatalf("err = %v, want a wrapped DeadlineExceeded", err)
	}
}

// TestWaitAppliedWaitsForFSM pins down WaitApplied's contract: when it
// returns, this node's FSM has applied idx, so State() reflects the entry.
// node.raftControl.SetInSync relies on that after asking the leader to shrink
// an in-sync set.
func TestWaitAppliedWaitsForFSM(t *testing.T) {
	t.Parallel()
	s := openStore(t, "n1", t.TempDir(), listen(t, "127.0.0.1:0"), true, nil)
	waitLeader(t, s)
	applyOK(t, s, mustEncode(t, CmdInit, InitCmd{Config: testConfig}))
	base := s.State().Version

	// Park the FSM goroutine: ApplyCommand publishes the new state and then
	// takes f.mu in notify(), so holding f.mu stops it right after the first
	// of the two entries below while Raft keeps committing and dispatching.
	s.fsm.mu.Lock()
	var once sync.Once
	unlock := func() { once.Do(s.fsm.mu.Unlock) }
	defer unlock()

	target := s.raft.LastIndex() + 2
	fa := s.raft.Apply(upsertCmd(t, node("n1", StatusAlive)), 5*time.Second)
	fb := s.raft.Apply(upsertCmd(t, node("n2", StatusAlive)), 5*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().CommitIndex < target {
		if time.Now().After(deadline) {
			t.Fatalf("entries not committed: %+v", s.Stats())
		}
		time.Sleep(2 * time.Millisecond)
	}

	res := make(chan error, 1)
	go func() { res <- s.WaitApplied(ctxT(t, 5*time.Second), target) }()
	select {
	case err := <-res:
		// Returning while the FSM is parked is only right if the FSM really
		// holds entry target already. Read the state without f.mu.
		if v := s.fsm.state.Load().Version; err == nil && v < base+2 {
			t.Errorf("WaitApplied(%d) returned while the FSM has applied only up to version %d (want %d): "+
				"raft.AppliedIndex counts entries handed to the FSM goroutine, not entries it has applied", target, v, base+2)
		}
		res <- err
	case <-time.After(300 * time.Millisecond):
		// Still waiting for the parked FSM, as it should.
	}
	unlock()
	if err := fa.Error(); err != nil {
		t.Fatal(err)
	}
	if err := fb.Error(); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("WaitApplied after the FSM resumed: %v", err)
	}
	if v := s.State().Version; v != base+2 {
		t.Fatalf("version %d, want %d", v, base+2)
	}
}

// TestStoreApplyRefusesInvalidCommands checks that a command no FSM could
// apply (every replica would panic on it) is refused before it is proposed:
// nothing reaches the log, on a leader or not, and the store keeps working.
func TestStoreApplyRefusesInvalidCommands(t *testing.T) {
	t.Parallel()
	bad := []struct {
		name string
		cmd  Command
	}{
		{"nil", nil},
		{"empty", Command{}},
		{"type 0", Command{0, '{', '}'}},
		{"type after last", Command{byte(lastCommand) + 1, '{', '}'}},
		{"type 255", Command{255}},
	}
	refuseAll := func(t *testing.T, s *testStore) {
		t.Helper()
		before, lastLog, lastIdx := s.State(), s.Stats().LastLogIndex, s.raft.LastIndex()
		for _, c := range bad {
			idx, err := s.Apply(ctxT(t, time.Second), c.cmd)
			if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotLeader) {
				t.Fatalf("%s: Apply(%s) err = %v, want ErrInvalid", s.id, c.name, err)
			}
			if idx != 0 {
				t.Fatalf("%s: Apply(%s) index = %d, want 0 (never proposed)", s.id, c.name, idx)
			}
		}
		if got := s.Stats().LastLogIndex; got != lastLog {
			t.Fatalf("%s: LastLogIndex %d -> %d: a refused command reached the log", s.id, lastLog, got)
		}
		if got := s.raft.LastIndex(); got != lastIdx {
			t.Fatalf("%s: raft last index %d -> %d: a refused command reached the log", s.id, lastIdx, got)
		}
		if s.State() != before {
			t.Fatalf("%s: a refused command changed the state", s.id)
		}
	}

	s := openStore(t, "n1", t.TempDir(), listen(t, "127.0.0.1:0"), true, nil)
	waitLeader(t, s)
	applyOK(t, s, mustEncode(t, CmdInit, InitCmd{Config: testConfig}))
	if err := s.Barrier(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	refuseAll(t, s)

	// The leader is unharmed and the next valid entry follows directly.
	last := s.raft.LastIndex()
	if idx := applyOK(t, s, upsertCmd(t, node("n1", StatusAlive))); idx != last+1 {
		t.Fatalf("next valid entry at index %d, want %d", idx, last+1)
	}

	// The check comes before the leadership check: a follower (here one
	// that never joined) answers ErrInvalid too, not ErrNotLeader.
	f := openStore(t, "n2", t.TempDir(), listen(t, "127.0.0.1:0"), false, nil)
	refuseAll(t, f)
}

// TestStoreCloseTwice checks that Close may be called more than once, on a
// leader and on a store that never joined, and answers the same each time.
func TestStoreCloseTwice(t *testing.T) {
	t.Parallel()
	leader := openStore(t, "n1", t.TempDir(), listen(t, "127.0.0.1:0"), true, nil)
	waitLeader(t, leader)
	applyOK(t, leader, mustEncode(t, CmdInit, InitCmd{Config: testConfig}))
	idle := openStore(t, "n2", t.TempDir(), listen(t, "127.0.0.1:0"), false, nil)
	for _, s := range []*testStore{leader, idle} {
		for i := range 2 {
			if err := s.Close(); err != nil {
				t.Fatalf("%s: Close #%d: %v", s.id, i+1, err)
			}
		}
		if got := s.RaftState(); got != "Shutdown" {
			t.Fatalf("%s: RaftState after Close = %q, want Shutdown", s.id, got)
		}
		// t.Cleanup closes each store a third time.
	}
	// Concurrent closes must not race either (run with -race).
	s := openStore(t, "n3", t.TempDir(), listen(t, "127.0.0.1:0"), true, nil)
	waitLeader(t, s)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = s.Close() })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Close #%d: %v", i, err)
		}
	}
}
