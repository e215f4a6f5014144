package node

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzManagement sends the management API's mutations and queries
// whatever bodies and query strings come, as an admin (the mutations need
// one) through the real handler of a real one-node cluster. No input may
// panic it or answer outside the contract's JSON errors, and a cluster
// that took garbage must still serve.
func FuzzManagement(f *testing.F) {
	cfg := DefaultConfig("node-1")
	cfg.HTTPAddr, cfg.KVAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Bootstrap, cfg.DataDir, cfg.StatusInterval = true, f.TempDir(), 0
	cfg.AdminToken = "ck_fuzz-admin-token-0123456789"
	ck, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	if err := ck.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ck.Shutdown(ctx)
	})
	deadline := time.Now().Add(20 * time.Second)
	for !ck.healthy() || !ck.raft.State().HasAdminToken() {
		if time.Now().After(deadline) {
			f.Fatal("the node did not become healthy")
		}
		time.Sleep(50 * time.Millisecond)
	}
	h := ck.mgmtHandler()
	routes := []struct{ method, path string }{
		{"POST", "/tokens"}, {"PUT", "/cluster/kv-auth"}, {"POST", "/cluster/keyring/install"},
		{"POST", "/cluster/keyring/use"}, {"POST", "/cluster/keyring/remove"}, {"DELETE", "/tokens/"},
		{"GET", "/partitions/key?"},
	}
	f.Add(0, []byte(`{"name":"x","scopes":["read:a"]}`))
	f.Add(0, []byte(`{"scopes":["admin","readwrite:","nope"]}`))
	f.Add(1, []byte(`{"required":"yes"}`))
	f.Add(2, []byte(`{"key":"AAAA"}`))
	f.Add(5, []byte(`%zz`))
	f.Add(6, []byte(`key=%zz`))
	f.Fuzz(func(t *testing.T, route int, body []byte) {
		if route < 0 {
			route = -route
		}
		rt := routes[route%len(routes)]
		target := rt.path
		if strings.HasSuffix(target, "/") || strings.HasSuffix(target, "?") {
			if bytes.ContainsAny(body, " #\x00\r\n/?") {
				return // not something a request line carries
			}
			target += string(body)
			body = nil
		}
		r := httptest.NewRequest(rt.method, "http://127.0.0.1/", bytes.NewReader(body))
		if i := strings.IndexByte(target, '?'); i >= 0 {
			r.URL.Path, r.URL.RawQuery = target[:i], target[i+1:]
		} else {
			r.URL.Path = target
		}
		r.Header.Set("Authorization", "Bearer "+cfg.AdminToken)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s %q: %d %s", rt.method, target, body, w.Code, w.Body)
		}
		var m map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
			t.Fatalf("%s %s: body %q is not JSON", rt.method, target, w.Body)
		}
		if w.Code >= 400 && (m["error"] == "" || m["code"] == "" || m["error"] == nil || m["code"] == nil) {
			t.Fatalf("%s %s: error %q lacks error and code", rt.method, target, w.Body)
		}
		if !ck.healthy() {
			t.Fatalf("the node is unhealthy after %s %s %q", rt.method, target, body)
		}
	})
}
