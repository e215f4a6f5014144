package kvapi

// The fixture is one real node: a real engine on a real Pebble store, the
// primary of every partition of a one-node table, behind the real KV handler
// on a loopback HTTP server. Only the Raft-backed table is replaced, by a
// fixed one, because Raft is tested elsewhere.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/internal/apitest"
	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/ring"
	"github.com/clusterkit/clusterkit/storage"
)

// oneNodeTable is the table of a cluster of one: node self leads every
// partition at epoch 1, with no replicas.
type oneNodeTable struct {
	self  string
	parts int
}

var _ engine.Router = oneNodeTable{}

func (t oneNodeTable) Self() string               { return t.self }
func (t oneNodeTable) Partitions() int            { return t.parts }
func (t oneNodeTable) PartitionOf(key string) int { return ring.PartitionOfTagged(key, t.parts) }
func (t oneNodeTable) MinCopies() int             { return 1 }
func (t oneNodeTable) ReplicationFactor() int     { return 1 }
func (t oneNodeTable) ClusterID() string          { return "test-cluster" }
func (t oneNodeTable) StoreOf(string) string      { return "" }
func (t oneNodeTable) Version() uint64            { return 1 }
func (t oneNodeTable) Alive(node string) bool     { return node == t.self }
func (t oneNodeTable) Changed() (<-chan struct{}, func()) {
	return make(chan struct{}), func() {}
}
func (t oneNodeTable) Route(p int) (engine.Route, bool) {
	if p < 0 || p >= t.parts {
		return engine.Route{}, false
	}
	return engine.Route{Partition: p, Primary: t.self, Epoch: 1}, true
}

// noControl is the configuration manager of a cluster without replicas:
// nothing ever changes an in-sync set.
type noControl struct{}

func (noControl) SetInSync(context.Context, int, uint64, string, bool) error {
	return errors.New("a one-node cluster has no in-sync set to change")
}

type fixedInfo struct{}

func (fixedInfo) ClusterNodes() int { return 3 }
func (fixedInfo) IsLeader() bool    { return true }
func (fixedInfo) RaftState() string { return "Leader" }

// fixedTableVersion is the table version fixedInfo reports.
const fixedTableVersion = 7

func (fixedInfo) TableVersion() uint64 { return fixedTableVersion }

// testNode is the node under test.
type testNode struct {
	srv *Server
	eng *engine.Engine
	db  *storage.DB
	url string
}

// singleNode starts a node with parts partitions (0: not initialised yet)
// and returns it with a client; everything stops when the test ends.
func singleNode(tb testing.TB, parts int) (*testNode, *http.Client) {
	return singleNodeAuth(tb, parts, nil)
}

// singleNodeAuth is singleNode with KV authentication from a.
func singleNodeAuth(tb testing.TB, parts int, a Auth) (*testNode, *http.Client) {
	tb.Helper()
	return singleNodeWith(tb, parts, a, nil)
}

// singleNodeWith is singleNodeAuth with engine options changed by opts.
func singleNodeWith(tb testing.TB, parts int, a Auth, opts func(*engine.Options)) (*testNode, *http.Client) {
	tb.Helper()
	log := slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, err := storage.Open(tb.TempDir(), storage.Options{Logger: log})
	if err != nil {
		tb.Fatalf("open storage: %v", err)
	}
	// A node's calls to itself never leave it: the peer client serves
	// them from the local engine.
	transport := peer.NewClient(peer.Config{Self: "n1", ClusterName: "test"}, func(string) (string, bool) { return "", false })
	o := engine.Options{Router: oneNodeTable{self: "n1", parts: parts}, Control: noControl{}, Storage: db, Transport: transport, Logger: log}
	if opts != nil {
		opts(&o)
	}
	eng, err := engine.New(o)
	if err != nil {
		tb.Fatalf("new engine: %v", err)
	}
	transport.SetLocal(peer.Handlers{Data: eng})
	srv := New(Options{Engine: eng, Info: fixedInfo{}, Auth: a, Logger: log})
	ts := httptest.NewServer(srv.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		eng.Run(ctx)
	}()
	client := &http.Client{Timeout: 30 * time.Second}
	tb.Cleanup(func() {
		cancel()
		<-done
		ts.Close()
		transport.Close()
		client.CloseIdleConnections()
		if err := db.Close(); err != nil && !errors.Is(err, fs.ErrClosed) {
			tb.Errorf("close storage: %v", err)
		}
	})
	n := &testNode{srv: srv, eng: eng, db: db, url: ts.URL}
	// The engine serves a partition once it has reconciled it for its
	// epoch, and a fresh node waits one lease period after starting.
	deadline := time.Now().Add(10 * time.Second)
	for p := range parts {
		for {
			m, err := db.Meta(p)
			if err == nil && m.Epoch == 1 {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("partition %d not ready after 10s", p)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return n, client
}

// apiResp is a raw HTTP answer.

// object decodes the body as a JSON object.

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
	return doRequest(tb, c, req)
}

func doRequest(tb testing.TB, c *http.Client, req *http.Request) apiResp {
	tb.Helper()
	method, u := req.Method, req.URL.String()
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("read answer of %s %s: %v", method, u, err)
	}
	return apiResp{Status: resp.StatusCode, CType: resp.Header.Get("Content-Type"), Body: b}
}

func setBodyJSON(key, value string) []byte {
	b, _ := json.Marshal(map[string]string{"key": key, "value": value})
	return b
}

func kvSet(tb testing.TB, c *http.Client, base, key, value string) apiResp {
	tb.Helper()
	return doReq(tb, c, http.MethodPost, base+"/kv/set", setBodyJSON(key, value))
}

func kvGet(tb testing.TB, c *http.Client, base, key, consistency string) apiResp {
	tb.Helper()
	q := url.Values{"key": {key}}
	if consistency != "" {
		q.Set("consistency", consistency)
	}
	return doReq(tb, c, http.MethodGet, base+"/kv/get?"+q.Encode(), nil)
}

func kvDelete(tb testing.TB, c *http.Client, base, key string) apiResp {
	tb.Helper()
	return doReq(tb, c, http.MethodPost, base+"/kv/delete?key="+url.QueryEscape(key), nil)
}

// mustValue asserts a get answered 200 with value.

// checkError asserts the contract's error shape: JSON content type and a
// body {"error": non-empty, "code": non-empty}.

// apiResp is an answer as the KV API gives it.
type apiResp = apitest.Resp
