package kvapi

import (
	"bytes"
	"net/http"
	"sync"
	"testing"

	"github.com/clusterkit/clusterkit/auth"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/apitest"
)

// tokenTable is the cluster's token store as the KV API sees it: tokens
// by the hash of their secret, and the KV auth switch.
type tokenTable struct {
	mu       sync.Mutex
	required bool
	tokens   map[string][]string // hash -> scopes
}

func (t *tokenTable) KVAuthRequired() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.required
}

func (t *tokenTable) LookupToken(hash string) (string, []string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.tokens[hash]
	return hash[:8], s, ok
}

func (t *tokenTable) add(tb testing.TB, scopes ...string) string {
	secret, err := auth.NewSecret()
	if err != nil {
		tb.Fatal(err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tokens[auth.Hash(secret)] = scopes
	return secret
}

func doAuth(tb testing.TB, c *http.Client, method, u, token string, body []byte) apiResp {
	tb.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return doRequest(tb, c, req)
}

// TestKVAuth: with KV auth on, every /kv/* call needs a token whose scope
// covers its key, refusals change nothing, and with it off the API is open.
func TestKVAuth(t *testing.T) {
	tokens := &tokenTable{tokens: map[string][]string{}}
	n, c := singleNodeAuth(t, testParts, tokens)
	admin := tokens.add(t, "admin")
	userRW := tokens.add(t, "readwrite:user:")
	reader := tokens.add(t, "read:")
	configRO := tokens.add(t, "read:config/")

	// Open while KV auth is off, tokens or not.
	if r := kvSet(t, c, n.url, "user:1", "v1"); r.Status != http.StatusOK {
		t.Fatalf("open set: %s", r)
	}
	if r := doAuth(t, c, "POST", n.url+"/kv/set", configRO, setBodyJSON("config/x", "open")); r.Status != http.StatusOK {
		t.Fatalf("open set with a read token: %s", r)
	}
	tokens.mu.Lock()
	tokens.required = true
	tokens.mu.Unlock()

	tests := []struct {
		name     string
		method   string
		path     string
		token    string
		body     []byte
		status   int
		wantCode string
	}{
		{"set without a token", "POST", "/kv/set", "", setBodyJSON("user:1", "x"), 401, errcode.Unauthorized},
		{"set with an unknown token", "POST", "/kv/set", "ck_unknownunknownunknownunknown", setBodyJSON("user:1", "x"), 401, errcode.Unauthorized},
		{"get without a token", "GET", "/kv/get?key=user:1", "", nil, 401, errcode.Unauthorized},
		{"delete without a token", "POST", "/kv/delete?key=user:1", "", nil, 401, errcode.Unauthorized},
		{"list without a token", "GET", "/kv/list", "", nil, 401, errcode.Unauthorized},
		{"stats without a token", "GET", "/kv/stats", "", nil, 401, errcode.Unauthorized},
		{"set outside the prefix", "POST", "/kv/set", userRW, setBodyJSON("config/x", "x"), 403, errcode.Forbidden},
		{"set with a read-only token", "POST", "/kv/set", reader, setBodyJSON("user:1", "x"), 403, errcode.Forbidden},
		{"delete with a read-only token", "POST", "/kv/delete?key=user:1", reader, nil, 403, errcode.Forbidden},
		{"get outside the prefix", "GET", "/kv/get?key=user:1", configRO, nil, 403, errcode.Forbidden},
		{"list with a prefix token", "GET", "/kv/list", userRW, nil, 403, errcode.Forbidden},
		{"set inside the prefix", "POST", "/kv/set", userRW, setBodyJSON("user:2", "v2"), 200, ""},
		{"get inside the prefix", "GET", "/kv/get?key=user:2", userRW, nil, 200, ""},
		{"get with a read-everything token", "GET", "/kv/get?key=user:1", reader, nil, 200, ""},
		{"get with a read token for its prefix", "GET", "/kv/get?key=config/x", configRO, nil, 200, ""},
		{"list with a read-everything token", "GET", "/kv/list", reader, nil, 200, ""},
		{"stats with any token", "GET", "/kv/stats", configRO, nil, 200, ""},
		{"admin writes anything", "POST", "/kv/set", admin, setBodyJSON("anything", "a"), 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := doAuth(t, c, tt.method, n.url+tt.path, tt.token, tt.body)
			if tt.status == 200 {
				if r.Status != 200 {
					t.Fatalf("got %s, want 200", r)
				}
				return
			}
			apitest.CheckError(t, r, tt.status, tt.wantCode)
		})
	}
	// Nothing a refused request sent was applied.
	tokens.mu.Lock()
	tokens.required = false
	tokens.mu.Unlock()
	apitest.MustValue(t, kvGet(t, c, n.url, "user:1", ""), "user:1", "v1")
	apitest.MustValue(t, kvGet(t, c, n.url, "config/x", ""), "config/x", "open")
}
