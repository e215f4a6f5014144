package peer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
)

// recordingHandler is the far side of the connection under test: it
// records what it is asked and answers in a fixed way. The system under
// test here is the transport, not what a node does with the calls.
type recordingHandler struct {
	mu       sync.Mutex
	forwards []ForwardReq
	stallFor time.Duration // reads wait this long before answering, whatever the deadline
	installs [][]byte
}

func (h *recordingHandler) ServeForward(ctx context.Context, req ForwardReq) (ForwardResp, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forwards = append(h.forwards, req)
	out := ForwardResp{}
	for i := range req.Ops {
		out.Results = append(out.Results, Result{Revision: uint64(100 + i)})
	}
	return out, nil
}

func (h *recordingHandler) ServeRead(ctx context.Context, req ReadReq) (ReadResp, error) {
	h.mu.Lock()
	d := h.stallFor
	h.mu.Unlock()
	if d > 0 {
		// A stuck peer: it answers long after the caller's deadline.
		time.Sleep(d)
	}
	if req.Key == "missing" {
		return ReadResp{}, errcode.ErrKeyNotFound
	}
	return ReadResp{Value: "value-of-" + req.Key, Revision: 9, Applied: 12}, nil
}

func (h *recordingHandler) ServeReplicate(context.Context, ReplicateReq) error { return nil }

func (h *recordingHandler) ServeLease(_ context.Context, req LeaseReq) (LeaseResp, error) {
	var out LeaseResp
	for _, p := range req.Partitions {
		out.Granted = append(out.Granted, p.Partition)
	}
	return out, nil
}

func (h *recordingHandler) ServeInstall(_ context.Context, req InstallReq, accept func() (io.Reader, error)) error {
	if req.From != "primary" {
		return errcode.New(errcode.EpochMismatch, "%s is not the primary", req.From)
	}
	r, err := accept()
	if err != nil {
		return err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.installs = append(h.installs, b)
	h.mu.Unlock()
	return nil
}

// ServeLog echoes the request in its answer: Position is After+1 and one
// entry carries the prefix as its key, so a test sees both directions.
func (h *recordingHandler) ServeLog(_ context.Context, req LogReq) (LogResp, error) {
	return LogResp{Position: req.After + 1, Floor: uint64(req.Limit), Compacted: req.Exact,
		Entries: []LogEntry{{Seq: req.After + 1, Entry: Entry{Key: req.Prefix, Value: "v", ExpiresAt: req.WaitMillis, Expired: req.Now, Delete: req.Now}}}}, nil
}

func (h *recordingHandler) ServeScan(_ context.Context, req ScanReq) (ScanResp, error) {
	return ScanResp{More: req.Values, Position: uint64(req.MaxBytes), Items: []ScanItem{{Key: req.Start, Value: req.End, Revision: uint64(req.Limit)}}}, nil
}

func (h *recordingHandler) ServeCopyInfo(_ context.Context, req CopyInfoReq) (CopyInfo, error) {
	return CopyInfo{Epoch: uint64(req.Partition), Seq: 7}, nil
}

func (h *recordingHandler) ServeDigest(context.Context) ([]Digest, error) {
	return []Digest{{Partition: 3, Role: "primary", SHA256: "abc"}}, nil
}

func (h *recordingHandler) ServeApply(context.Context, []byte) (uint64, error) { return 42, nil }
func (h *recordingHandler) ServeDrain(context.Context, string, bool) error     { return nil }
func (h *recordingHandler) ServeLeave(context.Context) error                   { return nil }
func (h *recordingHandler) ServeKeyring(_ context.Context, req KeyringReq) (KeyringStatus, error) {
	return KeyringStatus{Node: "server", Primary: "sha256:" + req.Op}, nil
}
func (h *recordingHandler) ServeMembers(context.Context) ([]Member, error) {
	return []Member{{ID: "n1", GossipAddr: "127.0.0.1:1", State: "alive"}}, nil
}

// logBuffer collects a component's log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// serve starts a listener on loopback with cfg and h.
func serve(t *testing.T, cfg Config, h *recordingHandler) *Listener {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(raw, cfg)
	l.SetHandlers(Handlers{Data: h, Control: h})
	t.Cleanup(func() {
		l.StopServing()
		_ = l.Close()
	})
	return l
}

func newTestClient(t *testing.T, cfg Config) *Client {
	c := NewClient(cfg, ByAddress)
	t.Cleanup(c.Close)
	return c
}

// TestCalls: every kind of call reaches the handler and its answer (or
// error code) comes back.
func TestCalls(t *testing.T) {
	h := &recordingHandler{}
	l := serve(t, Config{Self: "server", ClusterName: "c"}, h)
	c := newTestClient(t, Config{Self: "client", ClusterName: "c"})
	addr := l.Addr().String()
	ctx := context.Background()

	if _, err := c.Forward(ctx, addr, ForwardReq{Partition: 1, Epoch: 2, Ops: []Op{{Key: "k", Value: "v"}}}); err != nil {
		t.Fatalf("forward: %v", err)
	}
	if v, err := c.Read(ctx, addr, ReadReq{Key: "k"}); err != nil || v.Value != "value-of-k" {
		t.Fatalf("read = %+v, %v", v, err)
	}
	if _, err := c.Read(ctx, addr, ReadReq{Key: "missing"}); !errors.Is(err, errcode.ErrKeyNotFound) {
		t.Fatalf("read of a missing key: %v, want key_not_found", err)
	}
	if resp, err := c.Lease(ctx, addr, LeaseReq{From: "p", Partitions: []LeasePart{{Partition: 4, Epoch: 1}}}); err != nil || len(resp.Granted) != 1 || resp.Granted[0] != 4 {
		t.Fatalf("lease = %+v, %v", resp, err)
	}
	if ds, err := c.Digest(ctx, addr); err != nil || len(ds) != 1 || ds[0].SHA256 != "abc" {
		t.Fatalf("digest = %+v, %v", ds, err)
	}
	if idx, err := c.Apply(ctx, addr, []byte{5, '{', '}'}); err != nil || idx != 42 {
		t.Fatalf("apply = %d, %v", idx, err)
	}
	if ms, err := c.MembersAt(ctx, addr); err != nil || len(ms) != 1 || ms[0].ID != "n1" {
		t.Fatalf("members = %+v, %v", ms, err)
	}
	if err := c.Leave(ctx, addr); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if st, err := c.Keyring(ctx, addr, KeyringReq{Op: "list"}); err != nil || st.Primary != "sha256:list" {
		t.Fatalf("keyring = %+v, %v", st, err)
	}
	if lr, err := c.Log(ctx, addr, LogReq{Partition: 1, After: 41, Limit: 5, Prefix: "p/", WaitMillis: 9}); err != nil ||
		lr.Position != 42 || lr.Floor != 5 || len(lr.Entries) != 1 || lr.Entries[0].Key != "p/" || lr.Entries[0].ExpiresAt != 9 {
		t.Fatalf("log = %+v, %v", lr, err)
	}
	if sr, err := c.Scan(ctx, addr, ScanReq{Start: "a", End: "b", Limit: 3, MaxBytes: 77, Values: true}); err != nil ||
		!sr.More || sr.Position != 77 || len(sr.Items) != 1 || sr.Items[0] != (ScanItem{Key: "a", Value: "b", Revision: 3}) {
		t.Fatalf("scan = %+v, %v", sr, err)
	}
	if ci, err := c.CopyInfo(ctx, addr, CopyInfoReq{Partition: 6}); err != nil || ci != (CopyInfo{Epoch: 6, Seq: 7}) {
		t.Fatalf("copy info = %+v, %v", ci, err)
	}
	stream := []byte("a partition copy")
	if err := c.Install(ctx, addr, InstallReq{Partition: 1, From: "primary"}, func(w io.Writer) error {
		_, err := w.Write(stream)
		return err
	}); err != nil {
		t.Fatalf("install: %v", err)
	}
	sent := false
	err := c.Install(ctx, addr, InstallReq{Partition: 1, From: "rogue"}, func(w io.Writer) error {
		sent = true
		return nil
	})
	if errcode.Of(err) != errcode.EpochMismatch || sent {
		t.Fatalf("refused install: %v (stream sent: %v), want epoch_mismatch before anything is sent", err, sent)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.forwards) != 1 || h.forwards[0].Ops[0].Value != "v" {
		t.Errorf("handler saw forwards %+v", h.forwards)
	}
	if len(h.installs) != 1 || !bytes.Equal(h.installs[0], stream) {
		t.Errorf("handler received installs %q", h.installs)
	}
}

// TestLocalShortCircuit: a call addressed to this node is served by the
// local handlers, without a connection.
func TestLocalShortCircuit(t *testing.T) {
	h := &recordingHandler{}
	c := NewClient(Config{Self: "me", ClusterName: "c"}, func(string) (string, bool) { return "", false })
	defer c.Close()
	c.SetLocal(Handlers{Data: h, Control: h})
	if _, err := c.Forward(context.Background(), "me", ForwardReq{Ops: []Op{{Key: "x"}}}); err != nil {
		t.Fatalf("local forward: %v", err)
	}
	if _, err := c.Read(context.Background(), "other", ReadReq{Key: "x"}); errcode.Of(err) != errcode.Unavailable {
		t.Fatalf("read from a node without an address: %v, want unavailable", err)
	}
	if len(h.forwards) != 1 {
		t.Fatalf("local handler saw %d forwards", len(h.forwards))
	}
}

// TestRedialsAfterPeerClosed: a pooled connection that the peer closed (a
// restart, say) is not an error for the next call: the caller notices the
// close and dials again.
func TestRedialsAfterPeerClosed(t *testing.T) {
	h := &recordingHandler{}
	l := serve(t, Config{Self: "server", ClusterName: "c"}, h)
	c := newTestClient(t, Config{Self: "client", ClusterName: "c"})
	addr := l.Addr().String()
	for i := range 3 {
		if _, err := c.Forward(context.Background(), addr, ForwardReq{Ops: []Op{{Key: "k"}}}); err != nil {
			t.Fatalf("forward %d: %v", i, err)
		}
		// The server drops every connection it serves, as a restarted
		// node would have none; wait until the client has noticed.
		l.mu.Lock()
		served := make([]io.Closer, 0, len(l.served))
		for s := range l.served {
			served = append(served, s)
		}
		l.mu.Unlock()
		if len(served) == 0 {
			t.Fatal("the server serves no connection after a call")
		}
		for _, s := range served {
			_ = s.Close()
		}
		c.mu.Lock()
		p := c.peers[addr]
		c.mu.Unlock()
		deadline := time.Now().Add(5 * time.Second)
		for {
			p.mu.Lock()
			gone := p.conn == nil || p.conn.closed()
			p.mu.Unlock()
			if gone {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the client did not notice the closed connection")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if _, err := c.Forward(context.Background(), addr, ForwardReq{Ops: []Op{{Key: "k"}}}); err != nil {
		t.Fatalf("forward after the last close: %v", err)
	}
}

// TestSilentPeerIsDropped: a call that times out on a connection that has
// delivered nothing since closes it, so the next call dials afresh rather
// than queueing behind a peer that is cut off.
func TestSilentPeerIsDropped(t *testing.T) {
	h := &recordingHandler{stallFor: 2 * time.Second}
	l := serve(t, Config{Self: "server", ClusterName: "c"}, h)
	c := newTestClient(t, Config{Self: "client", ClusterName: "c"})
	addr := l.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	first, err := c.conn(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = c.Read(ctx, addr, ReadReq{Key: "k"}); !errors.Is(err, errcode.ErrOutcomeUnknown) {
		t.Fatalf("read from a stalled peer: %v, want outcome_unknown", err)
	}
	if !first.closed() {
		t.Fatal("the silent connection was kept")
	}
}

// TestWrongClusterRefused: both sides refuse a peer of another cluster
// name, and both say why in the log.
func TestWrongClusterRefused(t *testing.T) {
	var serverLog, clientLog logBuffer
	h := &recordingHandler{}
	l := serve(t, Config{Self: "node-1", ClusterName: "prod", Logger: serverLog.logger()}, h)
	c := newTestClient(t, Config{Self: "stranger", ClusterName: "staging", Logger: clientLog.logger()})
	_, err := c.Forward(context.Background(), l.Addr().String(), ForwardReq{Ops: []Op{{Key: "k"}}})
	if errcode.Of(err) != errcode.Unavailable || !strings.Contains(err.Error(), `cluster "prod"`) {
		t.Fatalf("forward across clusters: %v", err)
	}
	if len(h.forwards) != 0 {
		t.Fatalf("the handler was called: %+v", h.forwards)
	}
	if s := serverLog.String(); !strings.Contains(s, "refused an internal connection") || !strings.Contains(s, `cluster \"staging\"`) {
		t.Errorf("server log lacks the refusal:\n%s", s)
	}
	if s := clientLog.String(); !strings.Contains(s, "refused this node's internal connection") || !strings.Contains(s, "CLUSTER_NAME") {
		t.Errorf("client log lacks the refusal:\n%s", s)
	}
}

// TestHandshakeBounds: a connection that says nothing is closed after the
// handshake timeout, and garbage instead of a hello is closed at once;
// neither reaches the handler.
func TestHandshakeBounds(t *testing.T) {
	h := &recordingHandler{}
	l := serve(t, Config{Self: "server", ClusterName: "c", HandshakeTimeout: 300 * time.Millisecond}, h)
	addr := l.Addr().String()
	tests := []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"unknown selector", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"hello with a huge cluster name", append([]byte{selRPC, protoVersion, 0xff, 0xff, 0x03}, make([]byte, 64)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if len(tt.send) > 0 {
				if _, err := nc.Write(tt.send); err != nil {
					t.Fatal(err)
				}
			}
			_ = nc.SetReadDeadline(time.Now().Add(3 * time.Second))
			start := time.Now()
			b, err := io.ReadAll(bufio.NewReader(nc))
			if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("read: %v (after %s)", err, time.Since(start))
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("the connection stayed open %s", time.Since(start))
			}
			if len(b) > 0 && b[0] == helloOK {
				t.Fatalf("the server accepted the handshake: %q", b)
			}
		})
	}
	if len(h.forwards) != 0 {
		t.Fatalf("the handler was called")
	}
}

// TestHandshakeCap: connections beyond maxHandshakes that are still in
// their handshake are closed at once, and the port keeps serving.
func TestHandshakeCap(t *testing.T) {
	h := &recordingHandler{}
	l := serve(t, Config{Self: "server", ClusterName: "c", HandshakeTimeout: 3 * time.Second}, h)
	addr := l.Addr().String()
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range maxHandshakes {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, nc)
	}
	var closedAtOnce atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, nc)
		wg.Go(func() {
			_ = nc.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := nc.Read(make([]byte, 1)); err != nil && !isNetTimeout(err) {
				closedAtOnce.Add(1)
			}
		})
	}
	wg.Wait()
	if closedAtOnce.Load() == 0 {
		t.Fatal("no connection over the cap was closed")
	}
	for _, c := range idle[:maxHandshakes] {
		c.Close()
	}
	c := newTestClient(t, Config{Self: "client", ClusterName: "c"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Forward(context.Background(), addr, ForwardReq{Ops: []Op{{Key: "k"}}})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the port does not serve after the flood: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
