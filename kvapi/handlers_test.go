package kvapi

// Public API tests against one node that is the primary of every partition.
// They pin the user-facing contract of SEED-CONTRACT.md (paths, JSON fields,
// status codes, the {"error","code"} body) on a real store behind a real
// HTTP server.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/apitest"
)

const testParts = 8

// wantFields checks that got holds every field of want. Extra fields are
// fine: the contract allows additions, never removals or renames.
func wantFields(t *testing.T, got, want map[string]any) {
	t.Helper()
	for k, v := range want {
		gv, ok := got[k]
		if !ok {
			t.Errorf("field %q missing from %v", k, got)
			continue
		}
		if fmt.Sprint(gv) != fmt.Sprint(v) {
			t.Errorf("field %q = %#v, want %#v", k, gv, v)
		}
	}
}

func listKeys(t *testing.T, r apiResp) ([]string, float64) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("list: got %s, want 200", r)
	}
	m := r.Object(t)
	raw, ok := m["keys"].([]any)
	if !ok {
		t.Fatalf("list: keys is %T (%v), want an array", m["keys"], m["keys"])
	}
	keys := make([]string, len(raw))
	for i, k := range raw {
		keys[i], _ = k.(string)
	}
	count, ok := m["count"].(float64)
	if !ok {
		t.Fatalf("list: count is %T, want a number", m["count"])
	}
	return keys, count
}

// TestPublicAPIHappyPath walks the contract's example session in order; each
// step depends on the previous ones, so a failure stops the walk.
func TestPublicAPIHappyPath(t *testing.T) {
	n, c := singleNode(t, testParts)
	steps := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"set", func(t *testing.T) {
			r := kvSet(t, c, n.url, "user:123", "John Doe")
			if r.Status != http.StatusOK || !strings.HasPrefix(r.CType, "application/json") {
				t.Fatalf("got %s, want 200 JSON", r)
			}
			wantFields(t, r.Object(t), map[string]any{"status": "success", "key": "user:123"})
		}},
		{"get", func(t *testing.T) {
			apitest.MustValue(t, kvGet(t, c, n.url, "user:123", ""), "user:123", "John Doe")
		}},
		{"get with explicit linearizable and strong consistency", func(t *testing.T) {
			apitest.MustValue(t, kvGet(t, c, n.url, "user:123", "linearizable"), "user:123", "John Doe")
			apitest.MustValue(t, kvGet(t, c, n.url, "user:123", "strong"), "user:123", "John Doe")
			apitest.MustValue(t, kvGet(t, c, n.url, "user:123", "stale"), "user:123", "John Doe")
		}},
		{"overwrite", func(t *testing.T) {
			if r := kvSet(t, c, n.url, "user:123", "Jane Doe"); r.Status != http.StatusOK {
				t.Fatalf("got %s", r)
			}
			apitest.MustValue(t, kvGet(t, c, n.url, "user:123", ""), "user:123", "Jane Doe")
		}},
		{"get absent key is a JSON 404", func(t *testing.T) {
			apitest.CheckError(t, kvGet(t, c, n.url, "user:999", ""), http.StatusNotFound, errcode.KeyNotFound)
		}},
		{"second key through PUT", func(t *testing.T) {
			r := doReq(t, c, http.MethodPut, n.url+"/kv/set", setBodyJSON("user:124", "Bob"))
			if r.Status != http.StatusOK {
				t.Fatalf("got %s", r)
			}
		}},
		{"list both", func(t *testing.T) {
			keys, count := listKeys(t, doReq(t, c, http.MethodGet, n.url+"/kv/list", nil))
			if !slices.Equal(keys, []string{"user:123", "user:124"}) || count != 2 {
				t.Fatalf("list = %q count %v, want [user:123 user:124] count 2", keys, count)
			}
		}},
		{"list with limit", func(t *testing.T) {
			keys, count := listKeys(t, doReq(t, c, http.MethodGet, n.url+"/kv/list?limit=1", nil))
			if len(keys) != 1 || count != 1 {
				t.Fatalf("list?limit=1 = %q count %v, want one key", keys, count)
			}
		}},
		{"delete", func(t *testing.T) {
			r := kvDelete(t, c, n.url, "user:123")
			if r.Status != http.StatusOK {
				t.Fatalf("got %s", r)
			}
			wantFields(t, r.Object(t), map[string]any{"status": "deleted", "key": "user:123"})
		}},
		{"get after delete is 404", func(t *testing.T) {
			apitest.CheckError(t, kvGet(t, c, n.url, "user:123", ""), http.StatusNotFound, errcode.KeyNotFound)
		}},
		{"deleting an absent key is idempotent", func(t *testing.T) {
			// A retried delete must not turn into an error for the client.
			r := doReq(t, c, http.MethodDelete, n.url+"/kv/delete?key=user:123", nil)
			if r.Status != http.StatusOK {
				t.Fatalf("got %s, want 200", r)
			}
		}},
		{"list after delete", func(t *testing.T) {
			keys, count := listKeys(t, doReq(t, c, http.MethodGet, n.url+"/kv/list", nil))
			if !slices.Equal(keys, []string{"user:124"}) || count != 1 {
				t.Fatalf("list = %q count %v, want [user:124] count 1", keys, count)
			}
		}},
		{"stats", func(t *testing.T) {
			r := doReq(t, c, http.MethodGet, n.url+"/kv/stats", nil)
			if r.Status != http.StatusOK {
				t.Fatalf("got %s", r)
			}
			m := r.Object(t)
			wantFields(t, m, map[string]any{
				"local_keys": 1, "cluster_nodes": 3, "partitions": testParts,
				"is_leader": true, "raft_state": "Leader",
			})
			if up, ok := m["uptime_seconds"].(float64); !ok || up < 0 {
				t.Errorf("uptime_seconds = %#v, want a non-negative number", m["uptime_seconds"])
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.check) {
			t.FailNow()
		}
	}
}

// TestBadInput sends every kind of malformed request and checks the status,
// the machine code, the JSON error shape, and that none of them touched the
// data already stored.
func TestBadInput(t *testing.T) {
	n, c := singleNode(t, testParts)
	keep := map[string]string{"keep-1": "v1", "keep-2": "v2"}
	for k, v := range keep {
		if r := kvSet(t, c, n.url, k, v); r.Status != http.StatusOK {
			t.Fatalf("seed %q: %s", k, r)
		}
	}
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name   string
		method string
		path   string
		body   []byte
		status int
		code   string
	}{
		{"empty body", "POST", "/kv/set", []byte{}, 400, errcode.InvalidJSON},
		{"not JSON", "POST", "/kv/set", []byte("key=a&value=b"), 400, errcode.InvalidJSON},
		{"JSON array", "POST", "/kv/set", []byte(`[{"key":"a","value":"b"}]`), 400, errcode.InvalidJSON},
		{"JSON string", "POST", "/kv/set", []byte(`"a"`), 400, errcode.InvalidJSON},
		{"JSON null", "POST", "/kv/set", []byte(`null`), 400, errcode.MissingKey},
		{"trailing garbage", "POST", "/kv/set", []byte(`{"key":"a","value":"b"} x`), 400, errcode.InvalidJSON},
		{"two objects", "POST", "/kv/set", []byte(`{"key":"a","value":"b"}{"key":"c","value":"d"}`), 400, errcode.InvalidJSON},
		{"truncated object", "POST", "/kv/set", []byte(`{"key":"a","value":"b"`), 400, errcode.InvalidJSON},
		{"key missing", "POST", "/kv/set", []byte(`{"value":"x"}`), 400, errcode.MissingKey},
		{"key null", "POST", "/kv/set", []byte(`{"key":null,"value":"x"}`), 400, errcode.MissingKey},
		{"key empty", "POST", "/kv/set", []byte(`{"key":"","value":"x"}`), 400, errcode.MissingKey},
		{"key a number", "POST", "/kv/set", []byte(`{"key":12,"value":"x"}`), 400, errcode.InvalidJSON},
		{"value missing", "POST", "/kv/set", []byte(`{"key":"keep-1"}`), 400, errcode.MissingValue},
		{"value null", "POST", "/kv/set", []byte(`{"key":"keep-1","value":null}`), 400, errcode.MissingValue},
		{"value a number", "POST", "/kv/set", []byte(`{"key":"keep-1","value":42}`), 400, errcode.InvalidJSON},
		{"value an object", "POST", "/kv/set", []byte(`{"key":"keep-1","value":{"a":1}}`), 400, errcode.InvalidJSON},
		{"key too large", "POST", "/kv/set", setBodyJSON(long(engine.MaxKeyBytes+1), "x"), 413, errcode.KeyTooLarge},
		{"value too large", "POST", "/kv/set", setBodyJSON("keep-1", long(engine.MaxValueBytes+1)), 413, errcode.ValueTooLarge},
		{"body too large", "POST", "/kv/set", setBodyJSON("keep-1", long(engine.MaxBodyBytes)), 413, errcode.BodyTooLarge},
		// encoding/json would turn the bad bytes into U+FFFD; the key the
		// client sent must not be silently replaced by another one.
		{"invalid UTF-8 key in body", "POST", "/kv/set", []byte("{\"key\":\"bad-\xff\xfe\",\"value\":\"x\"}"), 400, errcode.InvalidKey},
		{"invalid UTF-8 value in body", "POST", "/kv/set", []byte("{\"key\":\"keep-1\",\"value\":\"bad-\xff\"}"), 400, errcode.InvalidValue},
		{"lone surrogate in the key", "POST", "/kv/set", []byte(`{"key":"a\ud800","value":"x"}`), 400, errcode.InvalidKey},
		{"lone surrogate in the value", "POST", "/kv/set", []byte(`{"key":"keep-1","value":"\udfff"}`), 400, errcode.InvalidValue},
		{"invalid UTF-8 outside the strings", "POST", "/kv/set", []byte("{\"key\":\"keep-1\",\xff\"value\":\"x\"}"), 400, errcode.InvalidJSON},
		{"get with a broken query escape", "GET", "/kv/get?key=%zz", nil, 400, errcode.InvalidQuery},
		{"delete with a broken query escape", "POST", "/kv/delete?key=a%2", nil, 400, errcode.InvalidQuery},
		{"list with a broken query escape", "GET", "/kv/list?limit=%zz", nil, 400, errcode.InvalidQuery},
		{"get without key", "GET", "/kv/get", nil, 400, errcode.MissingKey},
		{"get with empty key", "GET", "/kv/get?key=", nil, 400, errcode.MissingKey},
		{"get invalid UTF-8 key", "GET", "/kv/get?key=%FF%FE", nil, 400, errcode.InvalidKey},
		{"get key too large", "GET", "/kv/get?key=" + long(engine.MaxKeyBytes+1), nil, 413, errcode.KeyTooLarge},
		{"get bad consistency", "GET", "/kv/get?key=keep-1&consistency=eventual", nil, 400, errcode.BadRequest},
		{"delete without key", "POST", "/kv/delete", nil, 400, errcode.MissingKey},
		{"delete invalid UTF-8 key", "POST", "/kv/delete?key=%FF", nil, 400, errcode.InvalidKey},
		{"delete key too large", "POST", "/kv/delete?key=" + long(engine.MaxKeyBytes+1), nil, 413, errcode.KeyTooLarge},
		{"list limit 0", "GET", "/kv/list?limit=0", nil, 400, errcode.BadRequest},
		{"list limit abc", "GET", "/kv/list?limit=abc", nil, 400, errcode.BadRequest},
		{"list limit negative", "GET", "/kv/list?limit=-1", nil, 400, errcode.BadRequest},
		{"list limit above max", "GET", "/kv/list?limit=" + strconv.Itoa(MaxListLimit+1), nil, 400, errcode.BadRequest},
		{"GET /kv/set", "GET", "/kv/set", nil, 405, errcode.MethodNotAllowed},
		{"POST /kv/get", "POST", "/kv/get?key=keep-1", []byte(`{}`), 405, errcode.MethodNotAllowed},
		{"PUT /kv/list", "PUT", "/kv/list", []byte(`{}`), 405, errcode.MethodNotAllowed},
		{"GET /kv/delete", "GET", "/kv/delete?key=keep-1", nil, 405, errcode.MethodNotAllowed},
		{"POST /kv/stats", "POST", "/kv/stats", nil, 405, errcode.MethodNotAllowed},
		{"unknown path", "GET", "/nope", nil, 404, errcode.NotFound},
		{"unknown kv path", "GET", "/kv/nope", nil, 404, errcode.NotFound},
		{"bare /kv", "GET", "/kv", nil, 404, errcode.NotFound},
		// Node-to-node calls travel on the internal port only: none of
		// their old routes exists on the KV port.
		{"no internal write", "POST", "/internal/v1/write", setBodyJSON("keep-1", "forged"), 404, errcode.NotFound},
		{"no internal replicate", "POST", "/internal/v1/replicate", []byte(`{"partition":0,"epoch":1,"seq":1,"ops":[{"key":"keep-1","value":"x"}]}`), 404, errcode.NotFound},
		{"no internal install", "POST", "/internal/v1/install?partition=0&epoch=1", nil, 404, errcode.NotFound},
		{"no internal lease", "POST", "/internal/v1/lease", []byte(`{}`), 404, errcode.NotFound},
		{"no internal digest", "GET", "/internal/v1/digest", nil, 404, errcode.NotFound},
		{"no internal rpc upgrade", "GET", "/internal/v1/rpc", nil, 404, errcode.NotFound},
		{"no internal read", "GET", "/internal/v1/read?partition=0&epoch=1&key=keep-1", nil, 404, errcode.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := doReq(t, c, tt.method, n.url+tt.path, tt.body)
			apitest.CheckError(t, r, tt.status, tt.code)
		})
	}

	// None of the refused requests may have changed what was stored.
	for k, v := range keep {
		apitest.MustValue(t, kvGet(t, c, n.url, k, ""), k, v)
	}
	keys, count := listKeys(t, doReq(t, c, http.MethodGet, n.url+"/kv/list", nil))
	if !slices.Equal(keys, []string{"keep-1", "keep-2"}) || count != 2 {
		t.Errorf("after bad input, list = %q (count %v), want only [keep-1 keep-2]", keys, count)
	}
}

// TestRoundTrip stores awkward keys and values through set, get, list and
// delete; the client escapes keys in query strings, the server must undo
// exactly that.
func TestRoundTrip(t *testing.T) {
	n, c := singleNode(t, testParts)
	// A key of exactly engine.MaxKeyBytes made of 2-byte runes.
	multiByteMax := strings.Repeat("é", engine.MaxKeyBytes/2)
	tests := []struct {
		name, key, value string
	}{
		{"empty value", "empty", ""},
		{"unicode", "ключ-🔑-日本", "значение ✓ 日本語 🚀"},
		{"url specials", "a b&c=d?e/f#g%h+i;j", "x&y=z?"},
		{"leading and trailing spaces", "  padded  ", "  v  "},
		{"json specials in value", "json", "quote\" backslash\\ newline\n tab\t nul\x00 <html>&"},
		{"key of exactly engine.MaxKeyBytes", strings.Repeat("k", engine.MaxKeyBytes), "v"},
		{"multi-byte key of exactly engine.MaxKeyBytes", multiByteMax, "v"},
		{"value of exactly engine.MaxValueBytes", "big", strings.Repeat("v", engine.MaxValueBytes)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.key) > engine.MaxKeyBytes || !utf8.ValidString(tt.key) {
				t.Fatalf("bad test key")
			}
			r := kvSet(t, c, n.url, tt.key, tt.value)
			if r.Status != http.StatusOK {
				t.Fatalf("set: %s", r)
			}
			wantFields(t, r.Object(t), map[string]any{"status": "success", "key": tt.key})
			apitest.MustValue(t, kvGet(t, c, n.url, tt.key, ""), tt.key, tt.value)
			keys, _ := listKeys(t, doReq(t, c, http.MethodGet, n.url+"/kv/list", nil))
			if !slices.Contains(keys, tt.key) {
				t.Errorf("list %q does not contain %q", keys, tt.key)
			}
			r = kvDelete(t, c, n.url, tt.key)
			if r.Status != http.StatusOK {
				t.Fatalf("delete: %s", r)
			}
			wantFields(t, r.Object(t), map[string]any{"status": "deleted", "key": tt.key})
			apitest.CheckError(t, kvGet(t, c, n.url, tt.key, ""), http.StatusNotFound, errcode.KeyNotFound)
		})
	}
}

// TestCounts checks the request/error counters behind /metrics: a missing
// key is an answer, not a service error.
func TestCounts(t *testing.T) {
	n, c := singleNode(t, testParts)
	tests := []struct {
		name    string
		do      func() apiResp
		wantErr bool
	}{
		{"set", func() apiResp { return kvSet(t, c, n.url, "k", "v") }, false},
		{"get hit", func() apiResp { return kvGet(t, c, n.url, "k", "") }, false},
		{"get miss", func() apiResp { return kvGet(t, c, n.url, "absent", "") }, false},
		{"bad request", func() apiResp { return doReq(t, c, http.MethodPost, n.url+"/kv/set", []byte("x")) }, true},
		{"too large", func() apiResp { return kvSet(t, c, n.url, strings.Repeat("a", engine.MaxKeyBytes+1), "v") }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req0, err0 := n.srv.Counts()
			tt.do()
			req1, err1 := n.srv.Counts()
			if req1 != req0+1 {
				t.Errorf("requests went from %d to %d, want +1", req0, req1)
			}
			want := err0
			if tt.wantErr {
				want++
			}
			if err1 != want {
				t.Errorf("errors went from %d to %d, want %d", err0, err1, want)
			}
		})
	}
}

// TestConcurrentSetGet hammers a few hot keys from many goroutines. Every
// value a get returns must be one that was written to that key, and no
// write may be lost or ordered twice: the per-partition sequence numbers
// must add up to the number of acknowledged writes.
func TestConcurrentSetGet(t *testing.T) {
	const (
		goroutines = 32
		iterations = 50
		hotKeys    = 4
	)
	n, c := singleNode(t, testParts)
	hot := func(g, i int) string { return fmt.Sprintf("hot-%d", (g+i)%hotKeys) }
	// valid reports whether v could have been written to key: values encode
	// their writer, so no shared bookkeeping is needed.
	valid := func(key, v string) bool {
		var g, i int
		if _, err := fmt.Sscanf(v, "g%d-i%d", &g, &i); err != nil {
			return false
		}
		return g >= 0 && g < goroutines && i >= 0 && i < iterations && hot(g, i) == key && v == fmt.Sprintf("g%d-i%d", g, i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range iterations {
				key := hot(g, i)
				r := doReqNoFatal(c, http.MethodPost, n.url+"/kv/set", setBodyJSON(key, fmt.Sprintf("g%d-i%d", g, i)))
				if r.err != nil || r.Status != http.StatusOK {
					errs <- fmt.Errorf("set %s: %v %s", key, r.err, r.Body)
					return
				}
				cons := []string{"", "stale"}[i%2]
				r = doReqNoFatal(c, http.MethodGet, n.url+"/kv/get?key="+key+"&consistency="+cons, nil)
				if r.err != nil || r.Status != http.StatusOK {
					errs <- fmt.Errorf("get %s: %v %s", key, r.err, r.Body)
					return
				}
				if v := r.value(); !valid(key, v) {
					errs <- fmt.Errorf("get %s returned %q, which was never written to it", key, v)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for k := range hotKeys {
		key := fmt.Sprintf("hot-%d", k)
		r := kvGet(t, c, n.url, key, "")
		if r.Status != http.StatusOK {
			t.Fatalf("final get %s: %s", key, r)
		}
		if v := r.Object(t)["value"].(string); !valid(key, v) {
			t.Errorf("final get %s = %q, never written to it", key, v)
		}
	}
	var seqs uint64
	for p := range testParts {
		m, err := n.db.Meta(p)
		if err != nil {
			t.Fatal(err)
		}
		seqs += m.Seq
	}
	if seqs != goroutines*iterations {
		t.Errorf("sum of partition sequence numbers = %d, want %d acknowledged writes", seqs, goroutines*iterations)
	}
	if got := n.eng.LocalKeys(); got != hotKeys {
		t.Errorf("LocalKeys = %d, want %d", got, hotKeys)
	}
}

// rawResp is a response read without testing.T, for use in goroutines.
type rawResp struct {
	Status int
	Body   []byte
	err    error
}

func (r rawResp) value() string {
	var m map[string]string
	_ = json.Unmarshal(r.Body, &m)
	return m["value"]
}

func doReqNoFatal(c *http.Client, method, u string, body []byte) rawResp {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return rawResp{err: err}
	}
	resp, err := c.Do(req)
	if err != nil {
		return rawResp{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return rawResp{Status: resp.StatusCode, Body: b, err: err}
}

// TestNotInitialised: before the cluster has a partition table every KV call
// is a retryable 503, never a panic (PartitionOf with 0 partitions would).
func TestNotInitialised(t *testing.T) {
	n, client := singleNode(t, 0)
	tests := []struct {
		name   string
		method string
		path   string
		body   []byte
	}{
		{"set", "POST", "/kv/set", setBodyJSON("a", "b")},
		{"get", "GET", "/kv/get?key=a", nil},
		{"delete", "POST", "/kv/delete?key=a", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			apitest.CheckError(t, doReq(t, client, tt.method, n.url+tt.path, tt.body), http.StatusServiceUnavailable, errcode.Unavailable)
		})
	}
	keys, count := listKeys(t, doReq(t, client, http.MethodGet, n.url+"/kv/list", nil))
	if len(keys) != 0 || count != 0 {
		t.Errorf("list on an empty cluster = %q count %v", keys, count)
	}
}

// TestQueryEscapingIsTheClientsJob documents that '+' in a raw query means a
// space, so clients must escape keys; the escaped form reaches the key.
func TestQueryEscapingIsTheClientsJob(t *testing.T) {
	n, c := singleNode(t, testParts)
	if r := kvSet(t, c, n.url, "a+b", "plus"); r.Status != http.StatusOK {
		t.Fatalf("set: %s", r)
	}
	apitest.MustValue(t, doReq(t, c, http.MethodGet, n.url+"/kv/get?key="+url.QueryEscape("a+b"), nil), "a+b", "plus")
	apitest.CheckError(t, doReq(t, c, http.MethodGet, n.url+"/kv/get?key=a+b", nil), http.StatusNotFound, errcode.KeyNotFound)
}
