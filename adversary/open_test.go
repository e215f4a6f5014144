package adversary

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// TestLoopbackWithoutSecrets is the quick start: no key, no admin token.
// Loopback callers may make management changes until the cluster has an
// admin token; from then on nobody may without it. A node of another
// cluster name is refused although nobody holds a key.
func TestLoopbackWithoutSecrets(t *testing.T) {
	c := start(t, 1, tc.Options{NoKey: true})
	n := c.Nodes[0]

	r := req(t, "GET", n.HTTP, "/tokens", nil)
	wantStatus(t, "tokens from loopback without a token", r, 200, "")
	r = req(t, "POST", n.HTTP, "/tokens", []byte(`{"name":"first admin","scopes":["admin"]}`))
	wantStatus(t, "the first admin token, from loopback", r, 201, "")
	admin, _ := r.Map()["token"].(string)
	if !strings.HasPrefix(admin, "ck_") {
		t.Fatalf("token %q", admin)
	}
	for _, m := range mutations {
		if m.path == "/cluster/leave" || strings.Contains(m.path, "node=") {
			continue // would stop the node for the next checks
		}
		var body []byte
		if m.body != "" {
			body = []byte(m.body)
		}
		r := req(t, m.method, n.HTTP, m.path, body)
		wantStatus(t, fmt.Sprintf("%s %s from loopback once an admin token exists", m.method, m.path), r, 401, errcode.Unauthorized)
	}
	r = req(t, "POST", n.HTTP, "/cluster/leave", nil)
	wantStatus(t, "leave from loopback once an admin token exists", r, 401, errcode.Unauthorized)
	wantStatus(t, "tokens with the admin token", req(t, "GET", n.HTTP, "/tokens", nil, bearer(admin)...), 200, "")

	t.Run("a node of another cluster name", func(t *testing.T) {
		s := c.AddNode("CLUSTER_NAME=other-cluster")
		s.Start()
		defer s.Kill()
		time.Sleep(6 * time.Second)
		if got := strings.Join(activeIDs(t, n), ","); got != "node-1=active" {
			t.Errorf("node-1 sees %s", got)
		}
		if !logged(n, "refused an internal connection", "other-cluster") {
			t.Errorf("node-1 logged no refusal naming the other cluster:\n%s", tail(n.Stderr(), 20))
		}
		if !logged(s, "refused", "my-app-cluster") {
			t.Errorf("the stranger logged no refusal naming the cluster:\n%s", tail(s.Stderr(), 20))
		}
	})
}

// TestBeyondLoopback: a node whose listeners are on a network address
// takes no management change without an admin token, even with no
// ADMIN_TOKEN configured, and its node-to-node listeners need the key.
func TestBeyondLoopback(t *testing.T) {
	if err := tc.NetnsSupport(); err != nil {
		t.Skipf("network namespaces: %v", err)
	}
	c := start(t, 1, tc.Options{Netns: true})
	n := c.Nodes[0]
	for _, m := range mutations {
		var body []byte
		if m.body != "" {
			body = []byte(m.body)
		}
		r := req(t, m.method, n.HTTP, m.path, body)
		wantStatus(t, fmt.Sprintf("%s %s from beyond loopback", m.method, m.path), r, 401, errcode.Unauthorized)
	}
	time.Sleep(time.Second)
	if n.Exited() {
		t.Fatal("the node stopped")
	}
	wantStatus(t, "reads stay open", req(t, "GET", n.HTTP, "/cluster", nil), 200, "")

	t.Run("no key, no start", func(t *testing.T) {
		s := c.AddNode("CLUSTER_KEY=")
		s.Start()
		if !s.WaitExit(20 * time.Second) {
			s.Kill()
			t.Fatal("a node bound beyond loopback started without CLUSTER_KEY")
		}
		if !strings.Contains(s.Stderr(), "set CLUSTER_KEY") {
			t.Errorf("the refusal does not say what to set:\n%s", tail(s.Stderr(), 5))
		}
	})
}

// TestKVAuth: with KV_AUTH=required every /kv/* call needs a token whose
// scope covers the key, on every node, and refused writes change nothing.
func TestKVAuth(t *testing.T) {
	c := start(t, 3, tc.Options{Env: []string{"ADMIN_TOKEN=" + adminToken, "KV_AUTH=required"}})
	n := c.Nodes[0]
	tc.Eventually(t, 20*time.Second, "KV auth on", func() error {
		if r := req(t, "GET", n.HTTP, "/cluster/kv-auth", nil); r.Map()["required"] != true {
			return fmt.Errorf("kv-auth: %s", r.Body)
		}
		return nil
	})
	mk := func(scopes string) string {
		r := req(t, "POST", n.HTTP, "/tokens", []byte(`{"scopes":[`+scopes+`]}`), bearer(adminToken)...)
		if r.Status != 201 {
			t.Fatalf("make token: %s", tc.ErrText(r))
		}
		tok, _ := r.Map()["token"].(string)
		waitToken(t, c, tok)
		return tok
	}
	users, reader := mk(`"readwrite:user:"`), mk(`"read:"`)
	set := func(node *tc.Node, key, value, token string) tc.Response {
		var h []string
		if token != "" {
			h = bearer(token)
		}
		return req(t, "POST", node.KV, "/kv/set", jsonBody("key", key, "value", value), append(h, "Content-Type", "application/json")...)
	}
	for _, node := range c.Nodes {
		wantStatus(t, "set without a token on "+node.ID, set(node, "user:1", "x", ""), 401, errcode.Unauthorized)
		wantStatus(t, "get without a token on "+node.ID, req(t, "GET", node.KV, "/kv/get?key=user:1", nil), 401, errcode.Unauthorized)
		wantStatus(t, "set outside the scope on "+node.ID, set(node, "admin:1", "x", users), 403, errcode.Forbidden)
		wantStatus(t, "set with a read token on "+node.ID, set(node, "user:1", "x", reader), 403, errcode.Forbidden)
	}
	// Right after start a primary may still be moving (a 503): retry.
	tc.Eventually(t, 15*time.Second, "a set in the token's scope", func() error {
		if r := set(c.Nodes[1], "user:1", "v1", users); r.Status != 200 {
			return fmt.Errorf("%s", tc.ErrText(r))
		}
		return nil
	})
	r := req(t, "GET", c.Nodes[2].KV, "/kv/get?key=user:1", nil, bearer(reader)...)
	if r.Status != 200 || r.Map()["value"] != "v1" {
		t.Fatalf("read with the read token: %s", tc.ErrText(r))
	}
	// A revoked token stops working on every node as soon as it has
	// applied the revocation.
	var list struct {
		Tokens []struct {
			ID     string   `json:"id"`
			Scopes []string `json:"scopes"`
		} `json:"tokens"`
	}
	if err := req(t, "GET", n.HTTP, "/tokens", nil, bearer(adminToken)...).JSON(&list); err != nil {
		t.Fatal(err)
	}
	for _, tok := range list.Tokens {
		if len(tok.Scopes) == 1 && tok.Scopes[0] == "read:" {
			wantStatus(t, "revoke", req(t, "DELETE", n.HTTP, "/tokens/"+tok.ID, nil, bearer(adminToken)...), 200, "")
		}
	}
	wantStatus(t, "the revoked token where it was revoked", req(t, "GET", n.KV, "/kv/get?key=user:1", nil, bearer(reader)...),
		http.StatusUnauthorized, errcode.Unauthorized)
	for _, node := range c.Nodes {
		tc.Eventually(t, 2*time.Second, "the revoked token refused on "+node.ID, func() error {
			if r := req(t, "GET", node.KV, "/kv/get?key=user:1", nil, bearer(reader)...); r.Status != http.StatusUnauthorized {
				return fmt.Errorf("%s", tc.ErrText(r))
			}
			return nil
		})
	}
}
