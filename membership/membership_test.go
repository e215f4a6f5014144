package membership

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/clusterkit/clusterkit/internal/logbridge"
)

// Failure-detection timings used by the tests that run real memberlist
// instances. They are short enough to detect a death in about a second but
// leave enough slack on a loaded machine (-race, 2 CPUs) not to cause false
// suspicions of healthy nodes on loopback.
const (
	testProbeInterval = 400 * time.Millisecond
	testProbeTimeout  = 200 * time.Millisecond
	testSuspicionMult = 2

	// convergeTimeout bounds every "eventually" wait on gossip.
	convergeTimeout = 10 * time.Second
)

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// logBuffer is a goroutine-safe sink for a slog JSON handler.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// records returns every log record written so far, decoded.
func (b *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// find returns the records with the given message whose attributes include
// every key/value in attrs.
func (b *logBuffer) find(t *testing.T, msg string, attrs map[string]string) []map[string]any {
	t.Helper()
	var out []map[string]any
next:
	for _, rec := range b.records(t) {
		if rec["msg"] != msg {
			continue
		}
		for k, v := range attrs {
			if fmt.Sprint(rec[k]) != v {
				continue next
			}
		}
		out = append(out, rec)
	}
	return out
}

func newTestLogger() (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// eventRecorder drains a Membership's event channel into a slice.
type eventRecorder struct {
	mu     sync.Mutex
	events []Event
}

func recordEvents(t *testing.T, m *Membership) *eventRecorder {
	t.Helper()
	r := &eventRecorder{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case ev := <-m.Events():
				r.mu.Lock()
				r.events = append(r.events, ev)
				r.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return r
}

// forNode returns the events recorded so far about node id, in order.
func (r *eventRecorder) forNode(id string) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, ev := range r.events {
		if ev.Member.Meta.ID == id {
			out = append(out, ev)
		}
	}
	return out
}

type testNode struct {
	id     string
	m      *Membership
	logs   *logBuffer
	events *eventRecorder // nil when the test does not read Events()
}

// baseMeta is the metadata node id is started with (GossipAddr is filled
// in by New when binding to port 0).
func baseMeta(id string) Meta {
	n := strings.TrimPrefix(id, "node-")
	return Meta{
		ID:       id,
		Name:     "name-" + n,
		MgmtAddr: "127.0.0.1:81" + n,
		KVAddr:   "127.0.0.1:82" + n,
		RaftAddr: "127.0.0.1:83" + n,
	}
}

// wantMeta is the metadata every member should see for n.
func (n *testNode) wantMeta() Meta {
	meta := baseMeta(n.id)
	meta.GossipAddr = n.m.LocalAddr()
	return meta
}

func testConfig(id, bind string, logger *slog.Logger) Config {
	return Config{
		Meta:          baseMeta(id),
		Bind:          bind,
		AdvertiseHost: "127.0.0.1",
		Logger:        logger,
		ProbeInterval: testProbeInterval,
		ProbeTimeout:  testProbeTimeout,
		SuspicionMult: testSuspicionMult,
	}
}

// startNode starts a gossip node on 127.0.0.1 (port 0 unless bind says
// otherwise) and shuts it down when the test ends.
func startNode(t *testing.T, id string, record bool) *testNode {
	t.Helper()
	return startNodeOn(t, id, "127.0.0.1:0", record)
}

func startNodeOn(t *testing.T, id, bind string, record bool) *testNode {
	t.Helper()
	logger, logs := newTestLogger()
	cfg := testConfig(id, bind, logger)
	if !strings.HasSuffix(bind, ":0") {
		cfg.Meta.GossipAddr = bind
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	n := &testNode{id: id, m: m, logs: logs}
	if record {
		n.events = recordEvents(t, m)
	}
	return n
}

// startCluster starts n nodes (node-1 … node-n) and joins every node to the
// ones started before it.
func startCluster(t *testing.T, n int, record bool) []*testNode {
	t.Helper()
	nodes := make([]*testNode, n)
	for i := range nodes {
		nodes[i] = startNode(t, "node-"+strconv.Itoa(i+1), record)
	}
	for i := 1; i < n; i++ {
		var seeds []string
		for _, s := range nodes[:i] {
			seeds = append(seeds, s.m.LocalAddr())
		}
		ctx, cancel := context.WithTimeout(context.Background(), convergeTimeout)
		err := nodes[i].m.Join(ctx, seeds, nil)
		cancel()
		if err != nil {
			t.Fatalf("%s: Join(%v): %v", nodes[i].id, seeds, err)
		}
	}
	return nodes
}

// waitFor polls cond until it returns "" (success) or timeout passes, then
// fails with cond's last complaint.
func waitFor(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %s", timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func member(m *Membership, id string) (Member, bool) {
	for _, mem := range m.Members() {
		if mem.Meta.ID == id {
			return mem, true
		}
	}
	return Member{}, false
}

// converged reports why nodes do not all see each other alive with the
// right metadata ("" when they do).
func converged(nodes []*testNode) string {
	for _, n := range nodes {
		mems := n.m.Members()
		if len(mems) != len(nodes) {
			return fmt.Sprintf("%s sees %d members, want %d: %+v", n.id, len(mems), len(nodes), mems)
		}
		for i, peer := range nodes {
			got := mems[i] // Members is sorted by ID; node-1 … node-9 sort as started
			if got.State != Alive || got.Meta != peer.wantMeta() {
				return fmt.Sprintf("%s sees %s as %s %+v, want alive %+v", n.id, peer.id, got.State, got.Meta, peer.wantMeta())
			}
		}
	}
	return ""
}

func waitState(t *testing.T, observer *testNode, id string, want State) Member {
	t.Helper()
	var got Member
	waitFor(t, convergeTimeout, func() string {
		mem, ok := member(observer.m, id)
		if !ok {
			return fmt.Sprintf("%s does not know %s", observer.id, id)
		}
		got = mem
		if mem.State != want {
			return fmt.Sprintf("%s sees %s as %s, want %s", observer.id, id, mem.State, want)
		}
		return ""
	})
	return got
}

// since returns the events recorded so far about node id for changes this
// node saw at or after t0.
func (r *eventRecorder) since(id string, t0 time.Time) []Event {
	var out []Event
	for _, ev := range r.forNode(id) {
		if !ev.Member.Since.Before(t0) {
			out = append(out, ev)
		}
	}
	return out
}

func states(evs []Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = string(ev.Previous) + "->" + string(ev.Member.State)
	}
	return out
}

// freePort returns a loopback port that is free for both TCP and UDP right
// now (nothing listens on it when this returns).
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		_ = l.Close()
		if err != nil {
			continue
		}
		_ = pc.Close()
		return port
	}
	t.Fatal("no free TCP+UDP port")
	return 0
}

// bareMembership is a Membership without a memberlist instance, for
// exercising the state machine and the delegates directly.
func bareMembership(self string) (*Membership, *logBuffer) {
	logger, logs := newTestLogger()
	return &Membership{
		log:     logger,
		self:    self,
		events:  make(chan Event, 1024),
		members: map[string]*Member{},
		leaving: map[string]time.Time{},
	}, logs
}

func drain(m *Membership) []Event {
	var out []Event
	for {
		select {
		case ev := <-m.events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

func mlNode(meta Meta) *memberlist.Node {
	b, err := json.Marshal(meta)
	if err != nil {
		panic(err)
	}
	return &memberlist.Node{Name: meta.ID, Addr: net.IPv4(127, 0, 0, 1), Port: 7946, Meta: b}
}

func suspectLine(id string) string {
	return "Suspect " + id + " has failed, no acks received"
}

// ---------------------------------------------------------------------------
// Unit tests (no network)
// ---------------------------------------------------------------------------

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"bind without port", func(c *Config) { c.Bind = "127.0.0.1" }, "gossip bind address"},
		{"non-numeric port", func(c *Config) { c.Bind = "127.0.0.1:gossip" }, "gossip bind port"},
		{"meta over memberlist limit", func(c *Config) { c.Meta.Name = strings.Repeat("x", memberlist.MetaMaxSize) }, "node meta is"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig("node-1", "127.0.0.1:0", slog.New(slog.NewTextHandler(io.Discard, nil)))
			tt.mutate(&cfg)
			m, err := New(cfg)
			if err == nil {
				_ = m.Shutdown()
				t.Fatalf("New succeeded, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestResolveIP(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"10.1.2.3", "10.1.2.3"},
		{"::1", "::1"},
		{"localhost", "127.0.0.1"},
	}
	for _, tt := range tests {
		got, err := resolveIP(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("resolveIP(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestTransitionEventsAndLogs(t *testing.T) {
	t.Parallel()
	peer := Meta{ID: "node-2", Name: "n2", GossipAddr: "127.0.0.1:7946"}
	peerMoved := peer
	peerMoved.KVAddr = "127.0.0.1:9000"
	type step struct {
		meta Meta
		st   State
	}
	type wantLog struct{ msg, level, previous string }
	tests := []struct {
		name       string
		self       string
		steps      []step
		wantEvents []string // Previous->State
		wantLogs   []wantLog
	}{
		{
			name:       "new member",
			steps:      []step{{peer, Alive}},
			wantEvents: []string{"->alive"},
			wantLogs:   []wantLog{{"member joined", "INFO", ""}},
		},
		{
			name:       "repeated alive is not an event",
			steps:      []step{{peer, Alive}, {peer, Alive}},
			wantEvents: []string{"->alive"},
			wantLogs:   []wantLog{{"member joined", "INFO", ""}},
		},
		{
			name:       "metadata update is an event but not a transition",
			steps:      []step{{peer, Alive}, {peerMoved, Alive}},
			wantEvents: []string{"->alive", "alive->alive"},
			wantLogs:   []wantLog{{"member joined", "INFO", ""}},
		},
		{
			name:       "suspect then alive again",
			steps:      []step{{peer, Alive}, {peer, Suspect}, {peer, Alive}},
			wantEvents: []string{"->alive", "alive->suspect", "suspect->alive"},
			wantLogs:   []wantLog{{"member joined", "INFO", ""}, {"member suspect", "WARN", "alive"}, {"member alive", "INFO", "suspect"}},
		},
		{
			name:       "death and rejoin",
			steps:      []step{{peer, Alive}, {peer, Suspect}, {peer, Dead}, {peer, Alive}},
			wantEvents: []string{"->alive", "alive->suspect", "suspect->dead", "dead->alive"},
			wantLogs: []wantLog{
				{"member joined", "INFO", ""}, {"member suspect", "WARN", "alive"},
				{"member dead", "WARN", "suspect"}, {"member alive", "INFO", "dead"},
			},
		},
		{
			name:       "graceful leave",
			steps:      []step{{peer, Alive}, {peer, Left}},
			wantEvents: []string{"->alive", "alive->left"},
			wantLogs:   []wantLog{{"member joined", "INFO", ""}, {"member left", "INFO", "alive"}},
		},
		{
			name:       "own transitions are events but not logged",
			self:       "node-2",
			steps:      []step{{peer, Alive}, {peerMoved, Alive}, {peer, Dead}},
			wantEvents: []string{"->alive", "alive->alive", "alive->dead"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			self := tt.self
			if self == "" {
				self = "node-1"
			}
			m, logs := bareMembership(self)
			for _, s := range tt.steps {
				m.transition(s.meta, s.st)
			}
			evs := drain(m)
			if got := states(evs); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events = %v, want %v", got, tt.wantEvents)
			}
			last := tt.steps[len(tt.steps)-1]
			if len(evs) > 0 && evs[len(evs)-1].Member.Meta != last.meta {
				t.Errorf("last event meta = %+v, want %+v", evs[len(evs)-1].Member.Meta, last.meta)
			}
			if mem, _ := member(m, "node-2"); mem.State != last.st || mem.Meta != last.meta {
				t.Errorf("Members() has %s %+v, want %s %+v", mem.State, mem.Meta, last.st, last.meta)
			}
			var gotLogs []wantLog
			for _, rec := range logs.records(t) {
				if rec["node"] != "node-2" || rec["name"] != "n2" {
					t.Errorf("log record without node/name: %v", rec)
				}
				if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["at"])); err != nil {
					t.Errorf("log record %v: bad at: %v", rec, err)
				}
				prev, _ := rec["previous"].(string)
				if prev != "" {
					if _, err := time.ParseDuration(fmt.Sprint(rec["previous_for"])); err != nil {
						t.Errorf("log record %v: bad previous_for: %v", rec, err)
					}
				}
				gotLogs = append(gotLogs, wantLog{fmt.Sprint(rec["msg"]), fmt.Sprint(rec["level"]), prev})
			}
			if !slices.Equal(gotLogs, tt.wantLogs) {
				t.Errorf("logs = %v, want %v", gotLogs, tt.wantLogs)
			}
		})
	}
}

func TestTransitionKeepsLastAckAndLogsAfter(t *testing.T) {
	t.Parallel()
	m, logs := bareMembership("node-1")
	peer := Meta{ID: "node-2", Name: "n2"}
	m.transition(peer, Alive)
	// No probe answered yet: no "after" on suspicion.
	m.transition(peer, Suspect)
	m.transition(peer, Alive)
	ack := time.Now().Add(-1500 * time.Millisecond)
	m.mu.Lock()
	m.members["node-2"].LastAck = ack
	m.mu.Unlock()
	m.transition(peer, Dead)

	mem, _ := member(m, "node-2")
	if !mem.LastAck.Equal(ack) {
		t.Errorf("LastAck = %v after transition, want it kept (%v)", mem.LastAck, ack)
	}
	if mem.Since.Before(ack.Add(1500 * time.Millisecond)) {
		t.Errorf("Since = %v, want the time of the transition", mem.Since)
	}
	if recs := logs.find(t, "member suspect", nil); len(recs) != 1 || recs[0]["after"] != nil {
		t.Errorf("suspect log = %v, want one record without after (never acked)", recs)
	}
	recs := logs.find(t, "member dead", nil)
	if len(recs) != 1 {
		t.Fatalf("dead logs = %v, want one", recs)
	}
	after, err := time.ParseDuration(fmt.Sprint(recs[0]["after"]))
	if err != nil || after < 1500*time.Millisecond || after > 5*time.Second {
		t.Errorf("dead log after = %v (%v), want ≈1.5s since the last ack", recs[0]["after"], err)
	}
	if want := mem.Since.Sub(ack).Round(time.Millisecond); after != want {
		t.Errorf("after = %v, want Since-LastAck = %v", after, want)
	}
}

func TestObserveLogLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		initial   State // "" = unknown member
		line      string
		wantState State
		wantEvent bool
	}{
		{"alive member becomes suspect", Alive, suspectLine("node-2"), Suspect, true},
		{"with memberlist prefix", Alive, "memberlist: " + suspectLine("node-2"), Suspect, true},
		{"already suspect", Suspect, suspectLine("node-2"), Suspect, false},
		{"dead stays dead", Dead, suspectLine("node-2"), Dead, false},
		{"left stays left", Left, suspectLine("node-2"), Left, false},
		{"unknown member ignored", "", suspectLine("node-2"), "", false},
		{"other node", Alive, suspectLine("node-3"), Alive, false},
		{"node name is a prefix of another", Alive, suspectLine("node-22"), Alive, false},
		{"unrelated line", Alive, "Marking node-2 as failed, suspect timeout reached (0 peer confirmations)", Alive, false},
		{"truncated line", Alive, "Suspect node-2 has failed", Alive, false},
		{"failed ping is not a suspicion", Alive, "Failed UDP ping: node-2 (timeout reached)", Alive, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, _ := bareMembership("node-1")
			meta := Meta{ID: "node-2", Name: "n2"}
			if tt.initial != "" {
				m.transition(meta, tt.initial)
				drain(m)
			}
			m.observeLogLine(tt.line)
			mem, _ := member(m, "node-2")
			if mem.State != tt.wantState {
				t.Errorf("state = %q, want %q", mem.State, tt.wantState)
			}
			evs := drain(m)
			if got := len(evs) > 0; got != tt.wantEvent {
				t.Fatalf("events = %v, want event: %v", states(evs), tt.wantEvent)
			}
			if tt.wantEvent && (evs[0].Previous != tt.initial || evs[0].Member.Meta != meta) {
				t.Errorf("event = %+v, want previous %s and meta %+v", evs[0], tt.initial, meta)
			}
		})
	}
}

func TestPingCompleteRecordsAckAndClearsSuspicion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		initial   State
		wantState State
		wantEvent string
	}{
		{"alive stays alive", Alive, Alive, ""},
		{"suspect becomes alive", Suspect, Alive, "suspect->alive"},
		{"dead is not revived by a stale ack", Dead, Dead, ""},
		{"left is not revived", Left, Left, ""},
		{"unknown member ignored", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, logs := bareMembership("node-1")
			meta := Meta{ID: "node-2", Name: "n2"}
			if tt.initial != "" {
				m.transition(meta, tt.initial)
				drain(m)
			}
			before := time.Now()
			(&pingDelegate{m: m}).NotifyPingComplete(&memberlist.Node{Name: "node-2"}, time.Millisecond, nil)
			mem, known := member(m, "node-2")
			if mem.State != tt.wantState {
				t.Errorf("state = %q, want %q", mem.State, tt.wantState)
			}
			if known && mem.LastAck.Before(before) {
				t.Errorf("LastAck = %v, want ≥ %v", mem.LastAck, before)
			}
			evs := drain(m)
			if got := strings.Join(states(evs), ","); got != tt.wantEvent {
				t.Errorf("events = %q, want %q", got, tt.wantEvent)
			}
			if tt.wantEvent != "" && len(logs.find(t, "member alive", map[string]string{"node": "node-2", "previous": "suspect"})) != 1 {
				t.Errorf("no \"member alive\" log with previous=suspect:\n%s", logs)
			}
		})
	}
}

// eventually polls member id of m until it is in state want, for up to a
// few seconds (a departure may be classified a little after memberlist
// reports it, while a leave intent can still arrive).
func eventually(t *testing.T, m *Membership, id string, want State) {
	t.Helper()
	waitFor(t, 3*time.Second, func() string {
		if mem, _ := member(m, id); mem.State != want {
			return fmt.Sprintf("%s is %q, want %q", id, mem.State, want)
		}
		return ""
	})
}

func TestNotifyLeaveDistinguishesLeftFromDead(t *testing.T) {
	t.Parallel()
	intent := func(id string) func(*Membership) {
		return func(m *Membership) { (&delegate{m: m}).NotifyMsg([]byte(leaveIntentPrefix + id)) }
	}
	nothing := func(*Membership) {}
	tests := []struct {
		name          string
		before, after func(m *Membership) // what the node hears around memberlist's leave notification
		want          State
	}{
		{"no intent: death", nothing, nothing, Dead},
		{"leave intent: graceful", intent("node-2"), nothing, Left},
		// The intent is a TCP stream of its own and the dead message is
		// gossiped over UDP: the receiver may process them in either order.
		{"leave intent processed just after the dead message", nothing, intent("node-2"), Left},
		{"intent of another node", intent("node-3"), intent("node-3"), Dead},
		{"stale intent", func(m *Membership) {
			m.mu.Lock()
			m.leaving["node-2"] = time.Now().Add(-2 * time.Minute)
			m.mu.Unlock()
		}, nothing, Dead},
		{"other user message", func(m *Membership) {
			(&delegate{m: m}).NotifyMsg([]byte("hello node-2"))
		}, nothing, Dead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, _ := bareMembership("node-1")
			ed := &eventDelegate{m: m}
			meta := Meta{ID: "node-2", Name: "n2"}
			ed.NotifyJoin(mlNode(meta))
			tt.before(m)
			ed.NotifyLeave(mlNode(meta))
			tt.after(m)
			eventually(t, m, "node-2", tt.want)
			// A leave is never also reported as a death, nor the reverse.
			want := []string{"->alive", "alive->" + string(tt.want)}
			if got := states(drain(m)); !slices.Equal(got, want) {
				t.Fatalf("events = %v, want %v", got, want)
			}

			// The intent is used up: the same node rejoining and then
			// dying is a death.
			ed.NotifyJoin(mlNode(meta))
			eventually(t, m, "node-2", Alive)
			ed.NotifyLeave(mlNode(meta))
			eventually(t, m, "node-2", Dead)
		})
	}
}

func TestEventDelegateMeta(t *testing.T) {
	t.Parallel()
	m, logs := bareMembership("node-1")
	ed := &eventDelegate{m: m}

	// Meta without an ID falls back to the memberlist node name.
	ed.NotifyJoin(&memberlist.Node{Name: "node-2", Meta: []byte(`{"name":"n2","kv":"10.0.0.2:8080"}`)})
	if mem, ok := member(m, "node-2"); !ok || mem.Meta.Name != "n2" || mem.Meta.KVAddr != "10.0.0.2:8080" || mem.State != Alive {
		t.Errorf("member from meta without id = %+v, %v", mem, ok)
	}
	// Metadata changes arrive as updates.
	ed.NotifyUpdate(&memberlist.Node{Name: "node-2", Meta: []byte(`{"id":"node-2","name":"n2","kv":"10.0.0.2:9090"}`)})
	if mem, _ := member(m, "node-2"); mem.Meta.KVAddr != "10.0.0.2:9090" {
		t.Errorf("meta after update = %+v", mem.Meta)
	}
	// Unreadable metadata is logged and ignored.
	ed.NotifyJoin(&memberlist.Node{Name: "node-3", Meta: []byte("not json")})
	if _, ok := member(m, "node-3"); ok {
		t.Error("member with unreadable meta was recorded")
	}
	if len(logs.find(t, "ignoring member with unreadable metadata", map[string]string{"node": "node-3"})) != 1 {
		t.Errorf("no warning for unreadable meta:\n%s", logs)
	}
	if got := states(drain(m)); !slices.Equal(got, []string{"->alive", "alive->alive"}) {
		t.Errorf("events = %v", got)
	}
}

func TestMembersSortedCopies(t *testing.T) {
	t.Parallel()
	m, _ := bareMembership("node-1")
	for _, id := range []string{"node-c", "node-a", "node-b"} {
		m.transition(Meta{ID: id}, Alive)
	}
	m.transition(Meta{ID: "node-a"}, Dead)
	got := m.Members()
	var ids []string
	for _, mem := range got {
		ids = append(ids, mem.Meta.ID)
	}
	if !slices.Equal(ids, []string{"node-a", "node-b", "node-c"}) {
		t.Fatalf("Members() IDs = %v, want sorted, dead included", ids)
	}
	got[0].State = Alive
	if mem, _ := member(m, "node-a"); mem.State != Dead {
		t.Error("Members() returned a view into internal state")
	}
}

func TestEmitDropsWhenFull(t *testing.T) {
	t.Parallel()
	m, logs := bareMembership("node-1")
	m.events = make(chan Event, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 5 {
			m.transition(Meta{ID: fmt.Sprintf("node-%d", i+2)}, Alive)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("transition blocked on a full event channel")
	}
	if n := len(drain(m)); n != 2 {
		t.Errorf("%d events buffered, want 2", n)
	}
	if got := len(logs.find(t, "membership event dropped: consumer is behind", nil)); got != 3 {
		t.Errorf("%d drop warnings, want 3:\n%s", got, logs)
	}
	if n := len(m.Members()); n != 5 {
		t.Errorf("Members() has %d entries, want 5: state must not depend on the consumer", n)
	}
}

// TestConcurrentCallbacksNeverRegress checks that the state machine is
// atomic: memberlist calls the log hook, the ping delegate and the event
// delegate from different goroutines, and a check made by one of them must
// still hold when it writes. Racing a suspicion (or a probe answer) against
// a death must always end in Dead: a node memberlist declared dead gets no
// further callbacks, so any other end state sticks forever.
//
// Not parallel: under -race a data race fails every test running at the
// same time, which would hide which test exposes it.
func TestConcurrentCallbacksNeverRegress(t *testing.T) {
	tests := []struct {
		name    string
		initial State
		racer   func(m *Membership)
	}{
		{"suspicion vs death", Alive, func(m *Membership) { m.observeLogLine(suspectLine("node-2")) }},
		{"probe answer vs death", Suspect, func(m *Membership) {
			(&pingDelegate{m: m}).NotifyPingComplete(&memberlist.Node{Name: "node-2"}, time.Millisecond, nil)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The window is a few instructions wide: race many rounds,
			// within a time budget, with two long-lived goroutines
			// released together each round.
			const budget, maxRounds = time.Second, 50000
			meta := Meta{ID: "node-2", Name: "n2"}
			m, _ := bareMembership("node-1")
			m.log = slog.New(slog.DiscardHandler)
			var goA, goB [2]chan struct{}
			for i := range goA {
				goA[i], goB[i] = make(chan struct{}), make(chan struct{})
			}
			var wg sync.WaitGroup
			done := make(chan struct{}, 2)
			worker := func(start [2]chan struct{}, f func()) {
				for {
					select {
					case <-start[0]:
					case <-start[1]:
						return
					}
					f()
					done <- struct{}{}
				}
			}
			wg.Go(func() { worker(goA, func() { tt.racer(m) }) })
			// memberlist declaring the node dead (what NotifyLeave records).
			wg.Go(func() { worker(goB, func() { m.transition(meta, Dead) }) })
			defer func() { close(goA[1]); close(goB[1]); wg.Wait() }()

			deadline := time.Now().Add(budget)
			rounds := 0
			for ; rounds < maxRounds && time.Now().Before(deadline); rounds++ {
				m.mu.Lock()
				m.members = map[string]*Member{meta.ID: {Meta: meta, State: tt.initial, Since: time.Now()}}
				m.mu.Unlock()
				drain(m)
				goA[0] <- struct{}{}
				goB[0] <- struct{}{}
				<-done
				<-done
				if mem, _ := member(m, "node-2"); mem.State != Dead {
					t.Fatalf("round %d: %s ended as %q after memberlist declared it dead (events %v)",
						rounds, meta.ID, mem.State, states(drain(m)))
				}
			}
			t.Logf("%d rounds", rounds)
		})
	}
}

// TestPingAckDuringTransitionIsRaceFree: memberlist's probe goroutine
// records acks (NotifyPingComplete) while its packet handlers report joins,
// updates and deaths. Run with -race. Not parallel, for the reason above.
func TestPingAckDuringTransitionIsRaceFree(t *testing.T) {
	m, _ := bareMembership("node-1")
	m.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	meta := Meta{ID: "node-2", Name: "n2"}
	m.transition(meta, Alive)
	pd := &pingDelegate{m: m}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				pd.NotifyPingComplete(&memberlist.Node{Name: "node-2"}, time.Millisecond, nil)
			}
		}
	})
	cycle := []State{Suspect, Dead, Alive}
	for i := range 3000 {
		m.transition(meta, cycle[i%len(cycle)])
		for _, ev := range drain(m) {
			if ev.Member.Meta != meta {
				t.Fatalf("event with meta %+v", ev.Member.Meta)
			}
		}
	}
	close(stop)
	wg.Wait()
}

// ---------------------------------------------------------------------------
// Integration tests: real memberlist instances on loopback
// ---------------------------------------------------------------------------

func TestThreeNodesJoin(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, true)
	waitFor(t, convergeTimeout, func() string { return converged(nodes) })

	for _, n := range nodes {
		// The advertised gossip address is the real, kernel-picked port.
		local := n.m.LocalAddr()
		_, port, err := net.SplitHostPort(local)
		if err != nil || port == "0" {
			t.Fatalf("%s LocalAddr = %q (%v): want a real port", n.id, local, err)
		}
		for _, obs := range nodes {
			mem, _ := member(obs.m, n.id)
			_, gport, err := net.SplitHostPort(mem.Meta.GossipAddr)
			if err != nil || gport != port {
				t.Errorf("%s sees %s GossipAddr %q, want port %s (LocalAddr %s)", obs.id, n.id, mem.Meta.GossipAddr, port, local)
			}
			if mem.Since.IsZero() {
				t.Errorf("%s sees %s with zero Since", obs.id, n.id)
			}
		}
		if got := n.m.NumAlive(); got != 3 {
			t.Errorf("%s NumAlive = %d, want 3", n.id, got)
		}
	}

	// Every node got a join event for each peer, with the final metadata.
	for _, obs := range nodes {
		for _, peer := range nodes {
			if peer == obs {
				continue
			}
			waitFor(t, convergeTimeout, func() string {
				evs := obs.events.forNode(peer.id)
				for _, ev := range evs {
					if ev.Previous == "" && ev.Member.State == Alive {
						if ev.Member.Meta != peer.wantMeta() {
							return fmt.Sprintf("%s: join event for %s has meta %+v, want %+v", obs.id, peer.id, ev.Member.Meta, peer.wantMeta())
						}
						return ""
					}
				}
				return fmt.Sprintf("%s: no join event for %s (got %v)", obs.id, peer.id, states(evs))
			})
			if len(obs.logs.find(t, "member joined", map[string]string{"node": peer.id, "name": peer.wantMeta().Name})) != 1 {
				t.Errorf("%s: want exactly one \"member joined\" log for %s:\n%s", obs.id, peer.id, obs.logs)
			}
		}
	}
}

func TestGracefulLeaveIsLeftNotDead(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, true)
	leaver, observers := nodes[2], nodes[:2]
	waitFor(t, convergeTimeout, func() string { return converged(nodes) })
	// Judge only what happens from the leave on.
	left := time.Now()

	if err := leaver.m.Leave(2 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	for _, obs := range observers {
		mem := waitState(t, obs, leaver.id, Left)
		if mem.Meta != leaver.wantMeta() {
			t.Errorf("%s: left member meta = %+v, want %+v", obs.id, mem.Meta, leaver.wantMeta())
		}
		if mem.Since.Before(left) {
			t.Errorf("%s: Since = %v, before the leave at %v", obs.id, mem.Since, left)
		}
		waitFor(t, convergeTimeout, func() string {
			got := states(obs.events.since(leaver.id, left))
			if !slices.Equal(got, []string{"alive->left"}) {
				return fmt.Sprintf("%s: events for %s since the leave = %v, want [alive->left]", obs.id, leaver.id, got)
			}
			return ""
		})
		if got := obs.logs.find(t, "member left", map[string]string{"node": leaver.id, "previous": "alive", "level": "INFO"}); len(got) != 1 {
			t.Errorf("%s: want one \"member left\" log for %s:\n%s", obs.id, leaver.id, obs.logs)
		}
		if got := logsSince(t, obs.logs.find(t, "member dead", map[string]string{"node": leaver.id}), left); len(got) != 0 {
			t.Errorf("%s: graceful leave logged as death: %v", obs.id, got)
		}
		// Left members stay listed.
		if n := len(obs.m.Members()); n != 3 {
			t.Errorf("%s: Members() has %d entries, want 3 (left included)", obs.id, n)
		}
		waitFor(t, convergeTimeout, func() string {
			if n := obs.m.NumAlive(); n != 2 {
				return fmt.Sprintf("%s NumAlive = %d, want 2", obs.id, n)
			}
			return ""
		})
	}
}

// logsSince keeps the records whose "at" is not before t0.
func logsSince(t *testing.T, recs []map[string]any, t0 time.Time) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, rec := range recs {
		at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["at"]))
		if err != nil {
			t.Fatalf("record %v: bad at: %v", rec, err)
		}
		if !at.Before(t0) {
			out = append(out, rec)
		}
	}
	return out
}

func TestAbruptDeathIsDead(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, true)
	victim, observers := nodes[2], nodes[:2]

	// Let every observer probe the victim at least once, so that failure
	// detection can be timed from the last answer, and kill it while every
	// node sees every other alive.
	waitFor(t, convergeTimeout, func() string {
		for _, obs := range observers {
			if mem, _ := member(obs.m, victim.id); mem.LastAck.IsZero() {
				return obs.id + " never got an ack from " + victim.id
			}
		}
		return converged(nodes)
	})
	killed := time.Now()
	if err := victim.m.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	sawSuspect := false
	for _, obs := range observers {
		mem := waitState(t, obs, victim.id, Dead)
		// Since is when this node saw the death: after the kill, and no
		// sooner than failure detection allows.
		if mem.Since.Before(killed.Add(testProbeTimeout)) || mem.Since.After(time.Now()) {
			t.Errorf("%s: Since = %v, want between kill+%v (%v) and now", obs.id, mem.Since, testProbeTimeout, killed)
		}
		// The last ack came before the victim stopped answering.
		if mem.LastAck.IsZero() || mem.LastAck.After(killed.Add(100*time.Millisecond)) {
			t.Errorf("%s: LastAck = %v, want shortly before the kill at %v", obs.id, mem.LastAck, killed)
		}
		if !mem.LastAck.Before(mem.Since) {
			t.Errorf("%s: LastAck %v not before Since %v", obs.id, mem.LastAck, mem.Since)
		}

		// Alive → (Suspect) → Dead, in that order, never Left.
		var evs []Event
		waitFor(t, convergeTimeout, func() string {
			evs = obs.events.since(victim.id, killed)
			if len(evs) == 0 || evs[len(evs)-1].Member.State != Dead {
				return fmt.Sprintf("%s: events for %s since the kill = %v, want last to be dead", obs.id, victim.id, states(evs))
			}
			return ""
		})
		got := states(evs)
		if !slices.Equal(got, []string{"alive->dead"}) && !slices.Equal(got, []string{"alive->suspect", "suspect->dead"}) {
			t.Errorf("%s: events for %s since the kill = %v, want alive → (suspect) → dead", obs.id, victim.id, got)
		}
		if len(evs) == 2 {
			sawSuspect = true
			if len(logsSince(t, obs.logs.find(t, "member suspect", map[string]string{"node": victim.id, "level": "WARN", "previous": "alive"}), killed)) != 1 {
				t.Errorf("%s: suspect event without a \"member suspect\" log:\n%s", obs.id, obs.logs)
			}
		}

		recs := logsSince(t, obs.logs.find(t, "member dead", map[string]string{"node": victim.id, "level": "WARN"}), killed)
		if len(recs) != 1 {
			t.Fatalf("%s: want one \"member dead\" log for %s, got %v:\n%s", obs.id, victim.id, recs, obs.logs)
		}
		after, err := time.ParseDuration(fmt.Sprint(recs[0]["after"]))
		if err != nil {
			t.Fatalf("%s: \"member dead\" log has bad after=%v: %v", obs.id, recs[0]["after"], err)
		}
		if want := mem.Since.Sub(mem.LastAck).Round(time.Millisecond); after != want {
			t.Errorf("%s: after = %v, want Since-LastAck = %v", obs.id, after, want)
		}
		if after < testProbeTimeout || after > convergeTimeout {
			t.Errorf("%s: after = %v, want a plausible detection time", obs.id, after)
		}
	}
	// The first node to suspect the victim does so from its own failed
	// probe, which is what the log-line hook detects.
	if !sawSuspect {
		t.Error("no observer saw the victim as suspect before dead: suspicion detection from memberlist's log line is not working")
	}
}

// TestProbeClearsSuspicion: a suspect member that answers this node's next
// probe is alive again (pingDelegate, with real memberlist probes).
func TestProbeClearsSuspicion(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 2, true)
	waitFor(t, convergeTimeout, func() string { return converged(nodes) })
	obs, peer := nodes[0], nodes[1]
	waitFor(t, convergeTimeout, func() string {
		if mem, _ := member(obs.m, peer.id); mem.LastAck.IsZero() {
			return "no ack yet"
		}
		return ""
	})

	// Feed the line memberlist prints after a failed probe through the same
	// bridge New installs as memberlist's logger.
	logbridge.StdLogHook(obs.m.log, obs.m.observeLogLine).Printf("[INFO] memberlist: %s", suspectLine(peer.id))
	if mem, _ := member(obs.m, peer.id); mem.State != Suspect {
		t.Fatalf("after the suspicion line %s is %s, want suspect", peer.id, mem.State)
	}
	waitState(t, obs, peer.id, Alive)
	waitFor(t, convergeTimeout, func() string {
		got := states(obs.events.forNode(peer.id))
		if !slices.Equal(got, []string{"->alive", "alive->suspect", "suspect->alive"}) {
			return fmt.Sprintf("events = %v", got)
		}
		return ""
	})
	if len(obs.logs.find(t, "member alive", map[string]string{"node": peer.id, "previous": "suspect"})) != 1 {
		t.Errorf("no \"member alive\" log after suspicion cleared:\n%s", obs.logs)
	}
	recs := obs.logs.find(t, "member suspect", map[string]string{"node": peer.id})
	if len(recs) != 1 {
		t.Fatalf("want one \"member suspect\" log, got %v", recs)
	}
	if _, err := time.ParseDuration(fmt.Sprint(recs[0]["after"])); err != nil {
		t.Errorf("suspect log after=%v: %v", recs[0]["after"], err)
	}
}

func TestJoinRetriesUntilSeedIsUp(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	seedAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	joiner := startNode(t, "node-2", false)

	ctx, cancel := context.WithTimeout(context.Background(), convergeTimeout)
	defer cancel()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- joiner.m.Join(ctx, []string{seedAddr}, nil) }()

	const seedDelay = 500 * time.Millisecond
	time.Sleep(seedDelay)
	select {
	case err := <-errc:
		t.Fatalf("Join returned %v before the seed was up", err)
	default:
	}
	seed := startNodeOn(t, "node-1", seedAddr, false)

	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Join: %v", err)
		}
	case <-time.After(convergeTimeout):
		t.Fatalf("Join did not succeed within %v of the seed starting", convergeTimeout)
	}
	if took := time.Since(start); took < seedDelay || took > seedDelay+6*time.Second {
		t.Errorf("Join took %v, want a little over %v", took, seedDelay)
	}
	if len(joiner.logs.find(t, "join failed, retrying", map[string]string{"attempt": "1"})) != 1 {
		t.Errorf("no retry logged:\n%s", joiner.logs)
	}
	joined := joiner.logs.find(t, "joined cluster", nil)
	if len(joined) != 1 {
		t.Fatalf("want one \"joined cluster\" log, got %v", joined)
	}
	if a, _ := joined[0]["attempt"].(float64); a < 2 {
		t.Errorf("joined at attempt %v, want a retry", joined[0]["attempt"])
	}
	nodes := []*testNode{seed, joiner}
	waitFor(t, convergeTimeout, func() string { return converged(nodes) })
}

func TestJoinStopsWhenContextEnds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		resolve bool     // use a resolver
		resErr  error    // what the resolver returns
		resOut  []string // … and the addresses
		want    error    // context error expected
		check   func(t *testing.T, resolverCalls int)
	}{
		{
			name: "deadline, seed never up",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 700*time.Millisecond)
			},
			want: context.DeadlineExceeded,
		},
		{
			name: "cancelled, seed never up",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(400*time.Millisecond, cancel)
				return ctx, cancel
			},
			want: context.Canceled,
		},
		{
			name: "resolver keeps failing",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 700*time.Millisecond)
			},
			resolve: true,
			resErr:  errors.New("no management address answered"),
			want:    context.DeadlineExceeded,
			check: func(t *testing.T, calls int) {
				if calls < 2 {
					t.Errorf("resolver called %d times, want a retry", calls)
				}
			},
		},
		{
			name: "resolver finds no gossip address",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 700*time.Millisecond)
			},
			resolve: true,
			resOut:  nil,
			want:    context.DeadlineExceeded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := startNode(t, "node-1", false)
			dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
			seeds := []string{dead}
			var calls atomic.Int32
			var resolve func(context.Context, []string) ([]string, error)
			if tt.resolve {
				resolve = func(ctx context.Context, in []string) ([]string, error) {
					calls.Add(1)
					if !slices.Equal(in, seeds) {
						t.Errorf("resolver got %v, want %v", in, seeds)
					}
					if ctx == nil {
						t.Error("resolver got a nil context")
					}
					return tt.resOut, tt.resErr
				}
			}
			ctx, cancel := tt.ctx()
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- n.m.Join(ctx, seeds, resolve) }()
			var err error
			select {
			case err = <-errc:
			case <-time.After(700*time.Millisecond + 2*time.Second):
				t.Fatal("Join did not return after its context ended")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Join = %v, want %v", err, tt.want)
			}
			if len(n.logs.find(t, "join failed, retrying", nil)) < 2 {
				t.Errorf("want retries logged:\n%s", n.logs)
			}
			if len(n.logs.find(t, "joined cluster", nil)) != 0 {
				t.Error("\"joined cluster\" logged although no seed answered")
			}
			if tt.check != nil {
				tt.check(t, int(calls.Load()))
			}
		})
	}
}

// TestUnreadEventsNeverBlockGossip: nobody reads Events(). Join, update
// and leave must still complete, with the channel merely buffered or (when
// full) dropping events with a warning, and Members() must stay right.
func TestUnreadEventsNeverBlockGossip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		prefill  bool // fill the channel to capacity before gossip starts
		wantDrop bool
	}{
		{"buffer has room", false, false},
		{"buffer full", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			nodes := make([]*testNode, 3)
			for i := range nodes {
				nodes[i] = startNode(t, "node-"+strconv.Itoa(i+1), false)
				if tt.prefill {
				fill:
					for {
						select {
						case nodes[i].m.events <- Event{}:
						default:
							break fill
						}
					}
				}
			}
			done := make(chan string, 1)
			go func() {
				done <- func() string {
					ctx, cancel := context.WithTimeout(context.Background(), convergeTimeout)
					defer cancel()
					for i := 1; i < 3; i++ {
						if err := nodes[i].m.Join(ctx, []string{nodes[i-1].m.LocalAddr()}, nil); err != nil {
							return "join: " + err.Error()
						}
					}
					for converged(nodes) != "" {
						if ctx.Err() != nil {
							return "no convergence: " + converged(nodes)
						}
						time.Sleep(20 * time.Millisecond)
					}
					if err := nodes[2].m.Leave(2 * time.Second); err != nil {
						return "leave: " + err.Error()
					}
					for _, obs := range nodes[:2] {
						for {
							mem, _ := member(obs.m, nodes[2].id)
							if mem.State == Left {
								break
							}
							if ctx.Err() != nil {
								return fmt.Sprintf("%s never saw the leave: sees %s as %s", obs.id, nodes[2].id, mem.State)
							}
							time.Sleep(20 * time.Millisecond)
						}
					}
					if err := nodes[2].m.Shutdown(); err != nil {
						return "shutdown: " + err.Error()
					}
					return ""
				}()
			}()
			select {
			case msg := <-done:
				if msg != "" {
					t.Fatal(msg)
				}
			case <-time.After(2 * convergeTimeout):
				t.Fatal("gossip operations did not complete while Events() was not read: deadlock")
			}
			for _, n := range nodes[:2] {
				drops := n.logs.find(t, "membership event dropped: consumer is behind", nil)
				if got := len(drops) > 0; got != tt.wantDrop {
					t.Errorf("%s: %d drop warnings, want drops: %v", n.id, len(drops), tt.wantDrop)
				}
				if !tt.wantDrop && len(n.m.Events()) == 0 {
					t.Errorf("%s: no events buffered", n.id)
				}
				if tt.wantDrop && len(n.logs.find(t, "membership event dropped: consumer is behind", map[string]string{"node": "node-3", "state": "left"})) == 0 {
					t.Errorf("%s: the dropped leave event was not logged:\n%v", n.id, drops)
				}
			}
		})
	}
}

// startSecured starts a gossip node with a label and gossip keys.
func startSecured(t *testing.T, id, label string, keys ...[]byte) *testNode {
	t.Helper()
	logger, logs := newTestLogger()
	cfg := testConfig(id, "127.0.0.1:0", logger)
	cfg.Label, cfg.GossipKeys = label, keys
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return &testNode{id: id, m: m, logs: logs}
}

func gossipKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// TestGossipRefusesStrangers: a node of another cluster name, or without the
// cluster's gossip key, never becomes a member, and the member logs why in
// one line per sender (not one per packet).
func TestGossipRefusesStrangers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		strangerLb string
		strangerK  [][]byte
		wantReason string
	}{
		{"another cluster name", "other-cluster", [][]byte{gossipKey(1)}, `gossips for cluster "other-cluster"`},
		{"another key", "prod", [][]byte{gossipKey(2)}, "not encrypted with a key of this node's keyring"},
		{"no key", "prod", nil, "CLUSTER_KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m1 := startSecured(t, "node-1", "prod", gossipKey(1))
			stranger := startSecured(t, "stranger", tt.strangerLb, tt.strangerK...)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = stranger.m.Join(ctx, []string{m1.m.LocalAddr()}, nil)
			time.Sleep(500 * time.Millisecond)
			if _, ok := member(m1.m, "stranger"); ok {
				t.Fatalf("the stranger became a member: %+v", m1.m.Members())
			}
			if _, ok := member(stranger.m, "node-1"); ok {
				t.Fatalf("the stranger sees the member")
			}
			lines := m1.logs.find(t, "refused gossip", nil)
			if len(lines) == 0 {
				t.Fatalf("no refusal logged:\n%s", m1.logs)
			}
			if len(lines) > 2 {
				t.Errorf("%d refusal lines for one stranger; want at most one per reason and minute", len(lines))
			}
			if !strings.Contains(fmt.Sprint(lines), tt.wantReason) {
				t.Errorf("refusal %v does not say %q", lines, tt.wantReason)
			}
		})
	}
}

// TestGossipKeyRotation: members with the same keys form a cluster, and a
// rotation (install, use, remove) on every member keeps it together.
func TestGossipKeyRotation(t *testing.T) {
	t.Parallel()
	a := startSecured(t, "node-1", "prod", gossipKey(1))
	b := startSecured(t, "node-2", "prod", gossipKey(1))
	ctx, cancel := context.WithTimeout(context.Background(), convergeTimeout)
	defer cancel()
	if err := b.m.Join(ctx, []string{a.m.LocalAddr()}, nil); err != nil {
		t.Fatal(err)
	}
	nodes := []*testNode{a, b}
	waitFor(t, convergeTimeout, func() string { return converged(nodes) })
	steps := [][][]byte{
		{gossipKey(1), gossipKey(9)}, // install
		{gossipKey(9), gossipKey(1)}, // use
		{gossipKey(9)},               // remove
	}
	for _, keys := range steps {
		for _, n := range nodes {
			if err := n.m.SetGossipKeys(keys); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A node that only has the old key can no longer join.
	late := startSecured(t, "node-3", "prod", gossipKey(1))
	jctx, jcancel := context.WithTimeout(context.Background(), time.Second)
	defer jcancel()
	_ = late.m.Join(jctx, []string{a.m.LocalAddr()}, nil)
	time.Sleep(300 * time.Millisecond)
	if _, ok := member(a.m, "node-3"); ok {
		t.Fatal("a node with the removed key joined")
	}
	// The rotated members still see each other alive.
	waitFor(t, convergeTimeout, func() string { return converged(nodes) })
	if err := startNode(t, "plain", false).m.SetGossipKeys([][]byte{gossipKey(1)}); err == nil {
		t.Error("a node without encryption accepted a gossip keyring")
	}
}
