package kvapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// fuzzServe runs one request through the node's real handler and checks
// what every answer must be: JSON, and for an error the contract's body.
// Only the data plane's own 503s may be 5xx (nothing else can fail).
func fuzzServe(t *testing.T, n *testNode, method, target string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, "/", bytes.NewReader(body))
	r.URL.RawQuery = ""
	r.RequestURI = ""
	if i := strings.IndexByte(target, '?'); i >= 0 {
		r.URL.Path, r.URL.RawQuery = target[:i], target[i+1:]
	} else {
		r.URL.Path = target
	}
	w := httptest.NewRecorder()
	n.srv.Handler().ServeHTTP(w, r)
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q (status %d, body %q)", method, target, ct, w.Code, w.Body)
	}
	if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
		t.Fatalf("%s %s with %q: status %d %s", method, target, body, w.Code, w.Body)
	}
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("%s %s: body %q is not a JSON object", method, target, w.Body)
	}
	if w.Code >= 400 && (m["error"] == nil || m["error"] == "" || m["code"] == nil || m["code"] == "") {
		t.Fatalf("%s %s: error body %q lacks error and code", method, target, w.Body)
	}
	return w
}

// FuzzSet: no body makes /kv/set panic, answer outside the contract, or
// store something other than what it acknowledged.
func FuzzSet(f *testing.F) {
	n, _ := singleNode(f, 4)
	for _, s := range []string{`{"key":"a","value":"b"}`, `{"key":"\ud800","value":""}`, "{\"key\":\"k\xff\",\"value\":1}",
		`{"key":"a","value":"b","key":"c"}`, `[]`, `null`, `{"key":"` + strings.Repeat("k", 1100) + `","value":"v"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		w := fuzzServe(t, n, "POST", "/kv/set", body)
		if w.Code != http.StatusOK {
			return
		}
		var in struct{ Key, Value string }
		if err := json.Unmarshal(body, &in); err != nil {
			t.Fatalf("acknowledged a body that is not JSON: %q", body)
		}
		got := fuzzServe(t, n, "GET", "/kv/get?key="+url.QueryEscape(in.Key), nil)
		var out struct{ Value string }
		_ = json.Unmarshal(got.Body.Bytes(), &out)
		if got.Code != http.StatusOK || out.Value != in.Value {
			t.Fatalf("set %q=%q acknowledged, get answers %d %s", in.Key, in.Value, got.Code, got.Body)
		}
	})
}

// FuzzQuery: no query string makes get, delete or list panic or answer
// outside the contract.
func FuzzQuery(f *testing.F) {
	n, _ := singleNode(f, 4)
	for _, q := range []string{"key=a", "key=%zz", "key=%FF", "key=a&consistency=stale", "limit=0", "key=" + strings.Repeat("x", 1100), "key=a;b", "key="} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, q string) {
		if strings.ContainsAny(q, " #\x00\r\n") {
			return // not a query string an HTTP request can carry
		}
		fuzzServe(t, n, "GET", "/kv/get?"+q, nil)
		fuzzServe(t, n, "GET", "/kv/list?"+q, nil)
		fuzzServe(t, n, "POST", "/kv/delete?"+q, nil)
	})
}
