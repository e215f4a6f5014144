package adversary

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// adminToken is the ADMIN_TOKEN of the clusters that have one.
const adminToken = "ck_adversary-admin-token-0123456789"

// start starts n nodes and waits until they form a healthy, fully
// replicated cluster.
func start(t *testing.T, n int, opts tc.Options) *tc.Cluster {
	t.Helper()
	c := tc.New(t, binary, n, opts)
	c.Start()
	c.WaitHealthy(90*time.Second, n, 3)
	return c
}

// req sends one request and returns the answer; headers are name, value
// pairs.
func req(t *testing.T, method, addr, path string, body []byte, headers ...string) tc.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := tc.Do(ctx, method, addr, path, body, headers...)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, addr, path, err)
	}
	return r
}

func bearer(token string) []string { return []string{"Authorization", "Bearer " + token} }

// wantStatus checks an answer's status and, for an error, its JSON code.
func wantStatus(t *testing.T, what string, r tc.Response, status int, code string) {
	t.Helper()
	if r.Status != status {
		t.Errorf("%s: got %s, want %d %s", what, tc.ErrText(r), status, code)
		return
	}
	if code != "" {
		if got, _ := r.Map()["code"].(string); got != code {
			t.Errorf("%s: code %q, want %q (%s)", what, got, code, r.Body)
		}
	}
}

// snapshot is what an attack must not change: every node's digest of
// every partition copy, and every acknowledged key's value.
type snapshot struct {
	digests map[string]map[int]tc.Digest
	values  map[string]string
}

// writeKeys writes n keys through the nodes in turn and returns them. A
// write that gets a 503 is sent again: right after start the cluster may
// still be moving a primary to the ring's choice, and a write caught in
// that hand-off is refused or has an unknown outcome; writing the same
// value again settles it.
func writeKeys(t *testing.T, c *tc.Cluster, prefix string, n int) map[string]string {
	t.Helper()
	out := map[string]string{}
	running := runningNodes(c)
	for i := range n {
		k, v := fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("value-%d", i)
		node := running[i%len(running)]
		tc.Eventually(t, 15*time.Second, "set "+k+" through "+node.ID, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r, err := tc.Set(ctx, node.KV, k, v)
			if err != nil || r.Status != http.StatusOK {
				return fmt.Errorf("%v %s", err, tc.ErrText(r))
			}
			return nil
		})
		out[k] = v
	}
	return out
}

// runningNodes are the cluster's nodes whose process runs.
func runningNodes(c *tc.Cluster) []*tc.Node {
	var out []*tc.Node
	for _, n := range c.Nodes {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// waitToken waits until every running node knows token: a new token is
// valid on a node once that node has applied it from the Raft log.
func waitToken(t *testing.T, c *tc.Cluster, token string) {
	t.Helper()
	for _, n := range runningNodes(c) {
		tc.Eventually(t, 5*time.Second, "the new token known to "+n.ID, func() error {
			// An unknown token is 401; a known one without admin, 403.
			if r := req(t, "GET", n.HTTP, "/tokens", nil, bearer(token)...); r.Status == 401 {
				return fmt.Errorf("%s", tc.ErrText(r))
			}
			return nil
		})
	}
}

// take records the snapshot once the cluster is idle: every copy agrees
// and the partition table has not changed for a second. Fully replicated
// is not idle yet: primary roles still move to the nodes the ring names
// (a new epoch each), after the copies are in sync.
func take(t *testing.T, c *tc.Cluster, values map[string]string) snapshot {
	t.Helper()
	s := snapshot{values: values}
	var version float64 = -1
	tc.Eventually(t, 30*time.Second, "every copy of every partition identical, and the partition table settled", func() error {
		r, err := tc.Get(runningNodes(c)[0].HTTP, "/partitions")
		if err != nil {
			return err
		}
		v, _ := r.Map()["version"].(float64)
		if v != version {
			version = v
			time.Sleep(time.Second)
			return fmt.Errorf("partition table at version %v; waiting for it to settle", v)
		}
		s.digests = map[string]map[int]tc.Digest{}
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			d, err := n.Digests()
			if err != nil {
				return err
			}
			s.digests[n.ID] = d
		}
		return copiesAgree(s.digests)
	})
	return s
}

// copiesAgree reports whether every copy a node holds in sync (or leads)
// equals every other such copy of the same partition.
func copiesAgree(digests map[string]map[int]tc.Digest) error {
	want := map[int]tc.Digest{}
	for node, ds := range digests {
		for p, d := range ds {
			if d.Role != "primary" && d.Role != "in-sync" {
				continue
			}
			if w, ok := want[p]; ok && (w.SHA256 != d.SHA256 || w.Seq != d.Seq) {
				return fmt.Errorf("partition %d: %s holds seq %d %s, another copy seq %d %s", p, node, d.Seq, d.SHA256[:12], w.Seq, w.SHA256[:12])
			}
			want[p] = d
		}
	}
	return nil
}

// unchanged checks that nothing the attack could have touched did change:
// every key's value, and every copy's digest.
func unchanged(t *testing.T, c *tc.Cluster, before snapshot) {
	t.Helper()
	after := intact(t, c, before.values)
	for node, ds := range before.digests {
		for p, d := range ds {
			a, ok := after.digests[node][p]
			if !ok {
				t.Errorf("%s: partition %d digest gone", node, p)
				continue
			}
			if a.SHA256 != d.SHA256 || a.Seq != d.Seq || a.Epoch != d.Epoch || a.Keys != d.Keys {
				t.Errorf("%s: partition %d changed: seq %d->%d epoch %d->%d keys %d->%d", node, p, d.Seq, a.Seq, d.Epoch, a.Epoch, d.Keys, a.Keys)
			}
		}
	}
}

// intact checks that every acknowledged key still has its value and every
// in-sync copy equals its primary's, and returns the new snapshot (for a
// step that wrote on purpose).
func intact(t *testing.T, c *tc.Cluster, values map[string]string) snapshot {
	t.Helper()
	after := take(t, c, values)
	running := runningNodes(c)
	i := 0
	for k, v := range values {
		n := running[i%len(running)]
		i++
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := tc.GetKey(ctx, n.KV, k, false)
		cancel()
		if err != nil || r.Status != http.StatusOK || r.Map()["value"] != v {
			t.Errorf("%s through %s: %v %s, want %q", k, n.ID, err, tc.ErrText(r), v)
		}
	}
	return after
}

// activeIDs lists the active nodes in node's /cluster.
func activeIDs(t *testing.T, n *tc.Node) []string {
	t.Helper()
	st, err := n.State()
	if err != nil {
		t.Fatalf("%s: %v", n.ID, err)
	}
	var out []string
	for _, m := range st.Nodes {
		out = append(out, m.ID+"="+m.Status)
	}
	slices.Sort(out)
	return out
}

// logged reports whether the node printed a line containing every one of
// parts.
func logged(n *tc.Node, parts ...string) bool {
	for _, line := range strings.Split(n.Stderr(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func jsonBody(kv ...string) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%q", kv[i], kv[i+1])
	}
	b.WriteByte('}')
	return b.Bytes()
}
