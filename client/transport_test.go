package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/node"
)

// testServer is a real net/http server on loopback that counts the
// connections it accepted and the requests it served.
type testServer struct {
	*httptest.Server
	conns atomic.Int32
	reqs  atomic.Int32
	// dropNext makes the server close, without answering, the next
	// request that arrives on a connection that already served one.
	dropNext atomic.Bool
	release  chan struct{} // /block waits for it
}

type connReqsKey struct{}

func newTestServer(t *testing.T, useTLS bool) *testServer {
	t.Helper()
	s := &testServer{release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n := r.Context().Value(connReqsKey{}).(*atomic.Int32).Add(1)
		if n > 1 && s.dropNext.CompareAndSwap(true, false) {
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.Close()
			}
			return
		}
		s.reqs.Add(1)
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/big":
			w.Write(bytes.Repeat([]byte("x"), 256<<10))
		case "/close":
			w.Header().Set("Connection", "close")
			fmt.Fprint(w, "bye")
		case "/block":
			select {
			case <-s.release:
			case <-r.Context().Done():
			}
		default:
			fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), b)
		}
	})
	s.Server = httptest.NewUnstartedServer(mux)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, connReqsKey{}, new(atomic.Int32))
	}
	if useTLS {
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(func() {
		close(s.release)
		s.Close()
	})
	return s
}

func (s *testServer) addr() string { return s.Listener.Addr().String() }

// send runs one request through tr and reads its answer; reused is what
// GotConn said.
func send(ctx context.Context, tr *transport, method, url, body string) (status int, answer string, reused bool, err error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, url, rd)
	if err != nil {
		return 0, "", false, err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, "", reused, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), reused, err
}

// idleConns is how many connections tr holds idle for addr.
func (tr *transport) idleConns(addr string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for k, l := range tr.idle {
		if k.addr == addr {
			n += len(l)
		}
	}
	return n
}

func TestTransportPool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name string
		tls  bool
		// path of the request after the first; wantConns is the
		// connections the server sees for three such requests.
		path      string
		readBytes int // read only this much of the body (0: all)
		wantConns int32
	}{
		{name: "reuse", path: "/a?b=c", wantConns: 1},
		{name: "reuse over tls", tls: true, path: "/a", wantConns: 1},
		{name: "body closed early", path: "/big", readBytes: 1, wantConns: 3},
		{name: "connection close", path: "/close", wantConns: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newTestServer(t, tt.tls)
			var cfg *tls.Config
			if tt.tls {
				cfg = &tls.Config{RootCAs: s.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
			}
			tr := newTransport(cfg, 4)
			defer tr.Close()
			for i := range 3 {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+tt.path, nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if tt.readBytes > 0 {
					_, err = io.ReadFull(resp.Body, make([]byte, tt.readBytes))
				} else {
					var b []byte
					b, err = io.ReadAll(resp.Body)
					if tt.path == "/a?b=c" && string(b) != "GET /a?b=c " {
						t.Errorf("answer %q", b)
					}
				}
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("request %d: %d %v", i, resp.StatusCode, err)
				}
			}
			if got := s.conns.Load(); got != tt.wantConns {
				t.Errorf("the server saw %d connections, want %d", got, tt.wantConns)
			}
		})
	}

	t.Run("post body and idle bound", func(t *testing.T) {
		t.Parallel()
		s := newTestServer(t, false)
		tr := newTransport(nil, 2)
		defer tr.Close()
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() {
				st, got, _, err := send(ctx, tr, http.MethodPost, s.URL+"/set", `{"k":"v"}`)
				if err != nil || st != 200 || got != `POST /set {"k":"v"}` {
					t.Errorf("post: %d %q %v", st, got, err)
				}
			})
		}
		wg.Wait()
		if n := tr.idleConns(s.addr()); n != 2 {
			t.Errorf("%d idle connections, want MaxConnsPerNode = 2", n)
		}
		// An idle connection older than idleMax is not used.
		tr.idleMax = 50 * time.Millisecond
		time.Sleep(100 * time.Millisecond)
		before := s.conns.Load()
		if _, _, reused, err := send(ctx, tr, http.MethodGet, s.URL+"/x", ""); err != nil || reused {
			t.Errorf("after idleMax: reused %v, %v; want a new connection", reused, err)
		}
		if s.conns.Load() != before+1 {
			t.Errorf("the server saw %d new connections, want 1", s.conns.Load()-before)
		}
		if n := tr.idleConns(s.addr()); n != 1 {
			t.Errorf("%d idle connections, want 1 (the expired ones closed)", n)
		}
		tr.Close()
		if n := tr.idleConns(s.addr()); n != 0 {
			t.Errorf("after Close: %d idle connections", n)
		}
	})
}

// testCallClient is a Client with no table, for once() against a plain
// server.
func testCallClient(tr *transport) *Client {
	return &Client{cfg: Config{RequestTimeout: 5 * time.Second}, log: slog.New(slog.DiscardHandler), lean: tr, scheme: "http"}
}

func TestTransportFailures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ctx ends while waiting for the answer", func(t *testing.T) {
		t.Parallel()
		s := newTestServer(t, false)
		tr := newTransport(nil, 4)
		defer tr.Close()
		c := testCallClient(tr)
		tests := []struct {
			name string
			ctx  func() (context.Context, context.CancelFunc)
			want error
		}{
			{"cancel", func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(ctx)
				time.AfterFunc(200*time.Millisecond, cancel)
				return ctx, cancel
			}, context.Canceled},
			{"deadline", func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(ctx, 200*time.Millisecond)
			}, context.DeadlineExceeded},
		}
		for _, tt := range tests {
			for _, write := range []bool{false, true} {
				cctx, cancel := tt.ctx()
				start := time.Now()
				res := c.once(cctx, s.addr(), &request{method: http.MethodPost, path: "/block", body: []byte("{}"), write: write})
				took := time.Since(start)
				cancel()
				want := "unavailable"
				if write {
					want = "outcome_unknown"
				}
				if res.err == nil || res.err.Code != want || !errors.Is(res.err, tt.want) {
					t.Errorf("%s (write %v): %v, want %s wrapping %v", tt.name, write, res.err, want, tt.want)
				}
				if took > time.Second {
					t.Errorf("%s: returned after %v", tt.name, took)
				}
			}
		}
	})

	t.Run("server drops a pooled connection", func(t *testing.T) {
		t.Parallel()
		s := newTestServer(t, false)
		tr := newTransport(nil, 4)
		defer tr.Close()
		c := testCallClient(tr)
		get := &request{method: http.MethodGet, path: "/get"}
		set := &request{method: http.MethodPost, path: "/set", body: []byte(`{"v":1}`), write: true}
		for _, r := range []*request{get, set} {
			if res := c.once(ctx, s.addr(), r); res.err != nil {
				t.Fatal(res.err)
			}
		}
		// The read goes out on the pooled connection, which the server
		// closes unanswered: sent again on a new connection.
		s.dropNext.Store(true)
		before := s.reqs.Load()
		if res := c.once(ctx, s.addr(), get); res.err != nil || string(res.body) != "GET /get " {
			t.Errorf("read on a dropped connection: %v %q, want it retried", res.err, res.body)
		}
		if s.dropNext.Load() || s.reqs.Load() != before+1 {
			t.Errorf("the drop did not happen (%v) or the read was not served once (%d)", s.dropNext.Load(), s.reqs.Load()-before)
		}
		// A set that was written and dropped is outcome_unknown, and not
		// sent again.
		if res := c.once(ctx, s.addr(), set); res.err != nil {
			t.Fatal(res.err)
		}
		s.dropNext.Store(true)
		before = s.reqs.Load()
		res := c.once(ctx, s.addr(), set)
		if res.err == nil || res.err.Code != "outcome_unknown" || s.dropNext.Load() {
			t.Errorf("set on a dropped connection: %v, want outcome_unknown", res.err)
		}
		time.Sleep(50 * time.Millisecond)
		if n := s.reqs.Load() - before; n != 0 {
			t.Errorf("the dropped set was sent again: the server served %d more", n)
		}
	})

	t.Run("refused is unavailable", func(t *testing.T) {
		t.Parallel()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		tr := newTransport(nil, 4)
		defer tr.Close()
		res := testCallClient(tr).once(ctx, addr, &request{method: http.MethodPost, path: "/set", body: []byte("{}"), write: true})
		if res.err == nil || res.err.Code != "unavailable" || !res.connFailed {
			t.Errorf("refused connection: %v, want unavailable", res.err)
		}
	})
}

// TestTransportServerIdleClose runs a node whose server closes idle
// connections after a second: reads and writes after a pause find the
// pooled connections closed (the probe sees it) and go out on new ones,
// without an error and, for the write, applied once.
func TestTransportServerIdleClose(t *testing.T) {
	t.Parallel()
	cfg := node.DefaultConfig("node-idle")
	cfg.HTTPAddr, cfg.KVAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Bootstrap = true
	cfg.DataDir = t.TempDir()
	cfg.StatusInterval = 0
	cfg.IdleTimeout = time.Second
	ck, err := node.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := ck.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = ck.Shutdown(sctx)
	})
	// The node serves writes a moment after it starts.
	var cl *Client
	var w0 *WriteResult
	deadline := time.Now().Add(20 * time.Second)
	for {
		if cl == nil {
			cl, err = New(ctx, Config{Addrs: []string{ck.MgmtAddr()}, RequestTimeout: 2 * time.Second})
		}
		if err == nil {
			if w0, err = cl.Set(ctx, "idle:k", "0", nil); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node does not serve writes: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer cl.Close()
	kvAddr := cl.table.Load().live[0].kv
	for i := 1; i <= 2; i++ {
		time.Sleep(1500 * time.Millisecond) // the server closes the idle connections
		if n := cl.lean.idleConns(kvAddr); n == 0 {
			t.Fatalf("no pooled connection to %s", kvAddr)
		}
		w, err := cl.Set(ctx, "idle:k", fmt.Sprint(i), nil)
		if err != nil {
			t.Fatalf("set after the server closed the idle connection: %v", err)
		}
		if w.Revision != w0.Revision+uint64(i) {
			t.Errorf("revision %d after %d sets, want %d", w.Revision, i, w0.Revision+uint64(i))
		}
		time.Sleep(1500 * time.Millisecond)
		kv, err := cl.Get(ctx, "idle:k", nil)
		if err != nil || kv.Value != fmt.Sprint(i) {
			t.Fatalf("get after the server closed the idle connection: %+v %v", kv, err)
		}
	}
	// The pooled connection is used while the server keeps it.
	_, _, reused, err := send(ctx, cl.lean, http.MethodGet, "http://"+kvAddr+"/kv/get?key=idle:k", "")
	if err != nil || !reused {
		t.Errorf("a get right after another: reused %v, %v; want the pooled connection", reused, err)
	}
}

// BenchmarkClient is a get and a set through the client against the
// one-node cluster the tests start (its CPU counts too: compare the
// client's share in a profile, and allocations).
func BenchmarkClient(b *testing.B) {
	ctx := context.Background()
	cl, err := New(ctx, Config{Addrs: []string{ExampleNodeAddr}})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	val := strings.Repeat("v", 100)
	b.Run("set", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := cl.Set(ctx, fmt.Sprintf("bench:%d", i%1000), val, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("get", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := cl.Get(ctx, fmt.Sprintf("bench:%d", i%1000), nil); err != nil && !IsNotFound(err) {
				b.Fatal(err)
			}
		}
	})
}
