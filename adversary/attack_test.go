package adversary

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/auth"
	"github.com/clusterkit/clusterkit/clusterkey"
	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/errcode"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
	"github.com/clusterkit/clusterkit/peer"
)

// TestKeyedCluster attacks one keyed three-node cluster with an admin
// token, as a caller without the key or the token would, and checks after
// each attack that it was refused and nothing changed. Strangers and the
// key rotation come last: they change the cluster's view of its members.
func TestKeyedCluster(t *testing.T) {
	c := start(t, 3, tc.Options{Env: []string{
		"ADMIN_TOKEN=" + adminToken, "HTTP_BODY_TIMEOUT=2s", "HTTP_IDLE_TIMEOUT=2s", "FAILOVER_GRACE=1s",
	}})
	values := writeKeys(t, c, "acked", 48)
	before := take(t, c, values)
	target := targetOf(t, c, "acked-0")

	t.Run("client ports have no node-to-node routes", func(t *testing.T) {
		clientPortsHaveNoInternalRoutes(t, c, target)
		unchanged(t, c, before)
	})
	t.Run("the internal port refuses non-members", func(t *testing.T) {
		internalPortRefusesNonMembers(t, c, target)
		unchanged(t, c, before)
	})
	t.Run("a replayed handshake does nothing", func(t *testing.T) {
		replayedHandshake(t, c, target)
		// The test's own write changed acked-0 on purpose.
		values[target.key] = "after"
		before = intact(t, c, values)
	})
	t.Run("management changes need an admin token", func(t *testing.T) {
		managementNeedsAdmin(t, c)
		unchanged(t, c, before)
	})
	t.Run("slow, idle and huge requests are cut off", func(t *testing.T) {
		// Writes beside the attack are part of it: values stay, copies
		// agree, digests move.
		slowIdleHuge(t, c)
		before = intact(t, c, values)
	})
	t.Run("a browser page cannot act on a node", func(t *testing.T) {
		browserPage(t, c)
		before = intact(t, c, values)
	})
	t.Run("strangers cannot join", func(t *testing.T) {
		strangersCannotJoin(t, c, values)
		unchanged(t, c, before)
	})
	t.Run("the key rotates without downtime", func(t *testing.T) {
		rotateKey(t, c, before)
	})
}

// target is a key the attacks forge writes for, with its partition as the
// cluster shows it publicly.
type target struct {
	key       string
	partition int
	epoch     uint64
	primary   *tc.Node
	replica   *tc.Node
	seq       uint64 // the replica's next sequence number
}

func targetOf(t *testing.T, c *tc.Cluster, key string) target {
	t.Helper()
	p, err := tc.PartitionOf(c.Nodes[0], key)
	if err != nil {
		t.Fatal(err)
	}
	num, _ := strconv.Atoi(strings.TrimPrefix(p.ID, "partition-"))
	tg := target{key: key, partition: num, epoch: p.Epoch, primary: c.Node(p.Primary), replica: c.Node(p.InSync[0])}
	d, err := tg.replica.Digests()
	if err != nil {
		t.Fatal(err)
	}
	tg.seq = d[num].Seq + 1
	return tg
}

func clientPortsHaveNoInternalRoutes(t *testing.T, c *tc.Cluster, tg target) {
	forged := []byte(fmt.Sprintf(`{"partition":%d,"epoch":%d,"seq":%d,"from":%q,"version":1,"ops":[{"key":%q,"value":"forged"}]}`,
		tg.partition, tg.epoch, tg.seq, tg.primary.ID, tg.key))
	paths := []string{"/internal/v1/replicate", "/internal/v1/write", "/internal/v1/install?partition=0&epoch=1",
		"/internal/v1/lease", "/internal/v1/digest", "/internal/v1/read?partition=0&epoch=1&key=x",
		"/internal/v1/in-sync", "/internal/v1/drain", "/internal/v1/members", "/internal/v1/rpc", "/internal/v2/anything"}
	for _, n := range c.Nodes {
		for _, addr := range []string{n.KV, n.HTTP} {
			for _, path := range paths {
				for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
					r := req(t, method, addr, path, forged, "Content-Type", "application/json")
					wantStatus(t, fmt.Sprintf("%s %s%s", method, addr, path), r, http.StatusNotFound, errcode.NotFound)
				}
			}
			// The upgrade the old node-to-node transport used.
			r := req(t, http.MethodGet, addr, "/internal/v1/rpc", nil, "Connection", "Upgrade", "Upgrade", "clusterkit-rpc/1")
			wantStatus(t, "upgrade to clusterkit-rpc/1 on "+addr, r, http.StatusNotFound, errcode.NotFound)
		}
	}
}

// intruders are clients of the internal port that are not members.
func intruders(t *testing.T, c *tc.Cluster) map[string]*peer.Client {
	other, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*peer.Client{
		"no key":       peer.NewClient(peer.Config{Self: "intruder", ClusterName: c.ClusterName()}, peer.ByAddress),
		"another key":  peer.NewClient(peer.Config{Self: "intruder", ClusterName: c.ClusterName(), Security: clusterkey.NewKeyring(other)}, peer.ByAddress),
		"another name": peer.NewClient(peer.Config{Self: "intruder", ClusterName: "another-cluster", Security: clusterkey.NewKeyring(c.Key)}, peer.ByAddress),
	}
	for _, cl := range out {
		t.Cleanup(cl.Close)
	}
	return out
}

func internalPortRefusesNonMembers(t *testing.T, c *tc.Cluster, tg target) {
	ctx := context.Background()
	// A member's call works: the attacks below would have, too.
	if _, err := c.Member().Digest(ctx, tg.replica.Raft); err != nil {
		t.Fatalf("a member's digest call failed: %v", err)
	}
	op := peer.Op{Key: tg.key, Value: "forged"}
	for name, cl := range intruders(t, c) {
		t.Run(name, func(t *testing.T) {
			calls := map[string]func() error{
				"forward a write to the primary": func() error {
					_, err := cl.Forward(ctx, tg.primary.Raft, peer.ForwardReq{Partition: tg.partition, Epoch: tg.epoch, Ops: []peer.Op{op}})
					return err
				},
				"replicate to a replica": func() error {
					return cl.Replicate(ctx, tg.replica.Raft, peer.ReplicateReq{Partition: tg.partition, Epoch: tg.epoch,
						Seq: tg.seq, From: tg.primary.ID, Entries: []peer.Entry{{Key: op.Key, Value: op.Value}}})
				},
				"install an empty copy": func() error {
					return cl.Install(ctx, tg.replica.Raft, peer.InstallReq{Partition: tg.partition, Epoch: tg.epoch, From: tg.primary.ID},
						func(w io.Writer) error {
							iw, err := peer.NewInstallWriter(w, 1)
							if err != nil {
								return err
							}
							return iw.End()
						})
				},
				"take a read lease": func() error {
					_, err := cl.Lease(ctx, tg.replica.Raft, peer.LeaseReq{From: "intruder", Partitions: []peer.LeasePart{{Partition: tg.partition, Epoch: tg.epoch}}})
					return err
				},
				"read a digest": func() error { _, err := cl.Digest(ctx, tg.replica.Raft); return err },
				"read a key": func() error {
					_, err := cl.Read(ctx, tg.primary.Raft, peer.ReadReq{Partition: tg.partition, Epoch: tg.epoch, Key: tg.key})
					return err
				},
				"drain a node": func() error { return cl.Drain(ctx, tg.primary.Raft, tg.replica.ID, true) },
				"stop a node":  func() error { return cl.Leave(ctx, tg.replica.Raft) },
				"list members": func() error { _, err := cl.MembersAt(ctx, tg.primary.Raft); return err },
				"remove the cluster key": func() error {
					_, err := cl.Keyring(ctx, tg.primary.Raft, peer.KeyringReq{Op: "remove", Key: c.Key.String()})
					return err
				},
				"shrink an in-sync set through the leader": func() error {
					cmd, err := consensus.Encode(consensus.CmdShrinkInSync, consensus.InSyncCmd{Partition: tg.partition, Epoch: tg.epoch, Node: tg.replica.ID})
					if err != nil {
						return err
					}
					_, err = cl.Apply(ctx, tg.primary.Raft, cmd)
					return err
				},
			}
			for what, call := range calls {
				err := call()
				if err == nil || errcode.Of(err) != errcode.Unavailable || !strings.Contains(err.Error(), "refused") {
					t.Errorf("%s: %v, want a refused connection", what, err)
				}
			}
		})
	}
	tc.Eventually(t, 5*time.Second, "the refusals logged", func() error {
		for _, why := range []string{"did not start TLS", "TLS handshake failed", "belongs to cluster"} {
			found := false
			for _, n := range c.Nodes {
				found = found || logged(n, "refused an internal connection", why)
			}
			if !found {
				return fmt.Errorf("no node logged a refusal for %q", why)
			}
		}
		return nil
	})
	// Garbage, and an HTTP request, get nothing but a closed connection.
	for _, junk := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\x16\x03\x01\x00\x05hello", strings.Repeat("\x00", 4096)} {
		nc, err := net.Dial("tcp", tg.primary.Raft)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = nc.Write([]byte(junk))
		_ = nc.SetReadDeadline(time.Now().Add(8 * time.Second))
		start := time.Now()
		b, _ := io.ReadAll(nc)
		nc.Close()
		if strings.Contains(string(b), "HTTP/") || time.Since(start) > 7*time.Second {
			t.Errorf("junk %q: answered %q after %s", junk[:min(len(junk), 16)], b, time.Since(start))
		}
	}
}

// recorder is a TCP proxy that records what the client sends.
type recorder struct {
	ln   net.Listener
	to   string
	mu   sync.Mutex
	sent []byte
}

func newRecorder(t *testing.T, to string) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln, to: to}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				in.Close()
				continue
			}
			go func() {
				defer out.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := in.Read(buf)
					if n > 0 {
						r.mu.Lock()
						r.sent = append(r.sent, buf[:n]...)
						r.mu.Unlock()
						if _, werr := out.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer in.Close()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
	return r
}

func (r *recorder) recorded() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.sent...)
}

// replayedHandshake records a member's whole connection (its TLS
// handshake and a forwarded write) and replays it byte for byte: TLS 1.3
// makes the recording worthless, so the write is not applied again.
func replayedHandshake(t *testing.T, c *tc.Cluster, tg target) {
	rec := newRecorder(t, tg.primary.Raft)
	member := peer.NewClient(peer.Config{Self: "recorded-member", ClusterName: c.ClusterName(), Security: clusterkey.NewKeyring(c.Key)}, peer.ByAddress)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := tc.PartitionOf(c.Nodes[0], tg.key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := member.Forward(ctx, rec.ln.Addr().String(), peer.ForwardReq{Partition: tg.partition, Epoch: p.Epoch, Ops: []peer.Op{{Key: tg.key, Value: "recorded"}}}); err != nil {
		t.Fatalf("the recorded write failed: %v", err)
	}
	member.Close()
	recording := rec.recorded()
	if len(recording) < 500 {
		t.Fatalf("recorded only %d bytes", len(recording))
	}
	if r, err := tc.Set(ctx, c.Nodes[1].KV, tg.key, "after"); err != nil || r.Status != 200 {
		t.Fatalf("set after the recording: %v %s", err, tc.ErrText(r))
	}
	for range 3 {
		nc, err := net.Dial("tcp", tg.primary.Raft)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = nc.Write(recording)
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.Copy(io.Discard, bufio.NewReader(nc))
		nc.Close()
	}
	time.Sleep(300 * time.Millisecond)
	r, err := tc.GetKey(ctx, c.Nodes[2].KV, tg.key, false)
	if err != nil || r.Map()["value"] != "after" {
		t.Fatalf("after the replay %s = %v %s, want \"after\"", tg.key, err, tc.ErrText(r))
	}

}

// mutations are the management changes; each must be refused without an
// admin token.
var mutations = []struct {
	method, path string
	body         string
}{
	{"POST", "/cluster/leave", ""},
	{"POST", "/cluster/leave?node=node-2", ""},
	{"PUT", "/cluster/kv-auth", `{"required":true}`},
	{"GET", "/cluster/keyring", ""},
	{"POST", "/cluster/keyring/install", `{"key":"b1xsEODTGJmYNIUKjRd1vtBnu7RdxK40Y6OID0FvhzA="}`},
	{"POST", "/cluster/keyring/use", `{"key":"b1xsEODTGJmYNIUKjRd1vtBnu7RdxK40Y6OID0FvhzA="}`},
	{"POST", "/cluster/keyring/remove", `{"key":"b1xsEODTGJmYNIUKjRd1vtBnu7RdxK40Y6OID0FvhzA="}`},
	{"GET", "/tokens", ""},
	{"POST", "/tokens", `{"name":"mine","scopes":["admin"]}`},
	{"DELETE", "/tokens/admin-token", ""},
}

func managementNeedsAdmin(t *testing.T, c *tc.Cluster) {
	n := c.Nodes[0]
	r := req(t, "POST", n.HTTP, "/tokens", []byte(`{"name":"app","scopes":["readwrite:"]}`), bearer(adminToken)...)
	if r.Status != http.StatusCreated {
		t.Fatalf("admin token create: %s", tc.ErrText(r))
	}
	appToken, _ := r.Map()["token"].(string)
	waitToken(t, c, appToken)
	tokensBefore := req(t, "GET", n.HTTP, "/tokens", nil, bearer(adminToken)...)
	keyringBefore := req(t, "GET", n.HTTP, "/cluster/keyring", nil, bearer(adminToken)...)
	if tokensBefore.Status != 200 || keyringBefore.Status != 200 {
		t.Fatalf("admin reads: %s / %s", tc.ErrText(tokensBefore), tc.ErrText(keyringBefore))
	}
	callers := []struct {
		name    string
		headers []string
		status  int
		code    string
	}{
		{"no token, from loopback, with ADMIN_TOKEN set", nil, 401, errcode.Unauthorized},
		{"an unknown token", bearer("ck_not-a-token-of-this-cluster-000"), 401, errcode.Unauthorized},
		{"a malformed header", []string{"Authorization", "Basic YWRtaW46YWRtaW4="}, 401, errcode.Unauthorized},
		{"a KV token", bearer(appToken), 403, errcode.Forbidden},
	}
	for _, cl := range callers {
		for _, m := range mutations {
			for _, node := range c.Nodes {
				var body []byte
				if m.body != "" {
					body = []byte(m.body)
				}
				r := req(t, m.method, node.HTTP, m.path, body, cl.headers...)
				wantStatus(t, fmt.Sprintf("%s: %s %s on %s", cl.name, m.method, m.path, node.ID), r, cl.status, cl.code)
			}
		}
	}
	time.Sleep(2 * time.Second) // a leave that got through would have begun by now
	for _, node := range c.Nodes {
		if !node.Running() || node.Exited() {
			t.Fatalf("%s stopped", node.ID)
		}
	}
	if r := req(t, "GET", n.HTTP, "/cluster/kv-auth", nil); r.Map()["required"] != false {
		t.Errorf("KV auth changed: %s", r.Body)
	}
	if after := req(t, "GET", n.HTTP, "/tokens", nil, bearer(adminToken)...); string(after.Body) != string(tokensBefore.Body) {
		t.Errorf("tokens changed:\n%s\n%s", tokensBefore.Body, after.Body)
	}
	if after := req(t, "GET", n.HTTP, "/cluster/keyring", nil, bearer(adminToken)...); string(after.Body) != string(keyringBefore.Body) {
		t.Errorf("keyring changed:\n%s\n%s", keyringBefore.Body, after.Body)
	}
	for _, node := range c.Nodes {
		if got := activeIDs(t, node); strings.Join(got, ",") != "node-1=active,node-2=active,node-3=active" {
			t.Errorf("%s sees %v", node.ID, got)
		}
	}
}

func slowIdleHuge(t *testing.T, c *tc.Cluster) {
	n := c.Nodes[0]
	const bodyTimeout, idleTimeout = 2 * time.Second, 2 * time.Second
	closedWithin := func(t *testing.T, nc net.Conn, d time.Duration) {
		t.Helper()
		_ = nc.SetReadDeadline(time.Now().Add(d + 5*time.Second))
		start := time.Now()
		_, _ = io.Copy(io.Discard, nc)
		if took := time.Since(start); took > d+3*time.Second {
			t.Errorf("connection open for %s, want closed within about %s", took, d)
		}
	}
	for _, addr := range []string{n.KV, n.HTTP} {
		t.Run("a body that never ends on "+addr, func(t *testing.T) {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			fmt.Fprintf(nc, "POST /kv/set HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"key\":\"a\r\n", addr)
			done := make(chan struct{})
			defer close(done)
			go func() {
				for {
					select {
					case <-done:
						return
					case <-time.After(300 * time.Millisecond):
						if _, err := nc.Write([]byte("1\r\nx\r\n")); err != nil {
							return
						}
					}
				}
			}()
			if addr == n.KV {
				// The slow body holds nothing: a write of the same
				// partition goes through at once.
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				r, err := tc.Set(ctx, n.KV, "acked-1", "value-1")
				cancel()
				if err != nil || r.Status != 200 {
					t.Errorf("a write beside the slow body: %v %s", err, tc.ErrText(r))
				}
			}
			closedWithin(t, nc, bodyTimeout)
		})
	}
	t.Run("an idle keep-alive connection is closed", func(t *testing.T) {
		nc, err := net.Dial("tcp", n.KV)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		fmt.Fprintf(nc, "GET /kv/stats HTTP/1.1\r\nHost: %s\r\n\r\n", n.KV)
		br := bufio.NewReader(nc)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("stats: %v %v", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		closedWithin(t, nc, idleTimeout)
	})
	t.Run("a huge header is refused", func(t *testing.T) {
		r := req(t, "GET", n.KV, "/kv/get?key=acked-1", nil, "X-Filler", strings.Repeat("x", 80<<10))
		if r.Status != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("got %s, want 431", tc.ErrText(r))
		}
	})
	t.Run("silent connections to the internal port are dropped", func(t *testing.T) {
		var conns []net.Conn
		defer func() {
			for _, nc := range conns {
				nc.Close()
			}
		}()
		for range 200 {
			nc, err := net.Dial("tcp", n.Raft)
			if err != nil {
				break
			}
			conns = append(conns, nc)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := tc.Set(ctx, n.KV, "acked-2", "value-2")
		cancel()
		if err != nil || r.Status != 200 {
			t.Errorf("a write while the internal port is flooded: %v %s", err, tc.ErrText(r))
		}
		closedWithin(t, conns[0], peer.DefaultHandshakeTimeout)
	})
}

func browserPage(t *testing.T, c *tc.Cluster) {
	n := c.Nodes[1]
	cases := []struct {
		name    string
		method  string
		addr    string
		path    string
		body    string
		headers []string
		status  int
		code    string
	}{
		{"a cross-site text/plain post", "POST", n.KV, "/kv/set", `{"key":"acked-3","value":"csrf"}`,
			[]string{"Content-Type", "text/plain", "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"}, 403, errcode.CrossOrigin},
		{"a cross-site form post, Origin only", "POST", n.KV, "/kv/delete?key=acked-3", "",
			[]string{"Content-Type", "application/x-www-form-urlencoded", "Origin", "https://evil.example"}, 403, errcode.CrossOrigin},
		{"a cross-site leave", "POST", n.HTTP, "/cluster/leave", "",
			[]string{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"}, 403, errcode.CrossOrigin},
		{"a rebound name reading a key", "GET", n.KV, "/kv/get?key=acked-3", "",
			[]string{"Host", "evil.example"}, 421, errcode.HostNotAllowed},
		{"a rebound name writing a key", "POST", n.KV, "/kv/set", `{"key":"acked-3","value":"rebound"}`,
			[]string{"Host", "evil.example:9080", "Origin", "http://evil.example:9080"}, 421, errcode.HostNotAllowed},
		{"a rebound name reading the cluster", "GET", n.HTTP, "/cluster", "",
			[]string{"Host", "attacker.test"}, 421, errcode.HostNotAllowed},
		{"a rebound name loading the dashboard", "GET", n.HTTP, "/ui/", "",
			[]string{"Host", "attacker.test"}, 421, errcode.HostNotAllowed},
		{"a rebound name polling the overview", "GET", n.HTTP, "/cluster/overview", "",
			[]string{"Host", "attacker.test:8080"}, 421, errcode.HostNotAllowed},
		// The dashboard is read-only files; the overview is a read.
		{"a post to the dashboard", "POST", n.HTTP, "/ui/", "x", nil, 405, errcode.MethodNotAllowed},
		{"a delete of the dashboard", "DELETE", n.HTTP, "/ui/dashboard.js", "", nil, 405, errcode.MethodNotAllowed},
		{"a post to the overview", "POST", n.HTTP, "/cluster/overview", "{}", nil, 405, errcode.MethodNotAllowed},
		{"a path out of the dashboard's files", "GET", n.HTTP, "/ui/..%2f..%2ftokens", "", nil, 404, errcode.NotFound},
		{"a dotted path in the dashboard", "GET", n.HTTP, "/ui/../tokens", "", nil, 404, errcode.NotFound},
	}
	for _, tt := range cases {
		var body []byte
		if tt.body != "" {
			body = []byte(tt.body)
		}
		r := req(t, tt.method, tt.addr, tt.path, body, tt.headers...)
		wantStatus(t, tt.name, r, tt.status, tt.code)
	}
	// What anyone may read about the cluster says nothing a caller could
	// use to act: no token, no token's hash, no key.
	for _, path := range []string{"/cluster/overview", "/cluster", "/ui/"} {
		r := req(t, "GET", n.HTTP, path, nil)
		wantStatus(t, "GET "+path, r, 200, "")
		for _, secret := range []string{adminToken, "ck_", c.Key.String(), auth.Hash(adminToken)} {
			if secret != "" && strings.Contains(string(r.Body), secret) {
				t.Errorf("GET %s shows %q", path, secret)
			}
		}
	}
	// curl -d sends a form content type and no browser headers: it works.
	r := req(t, "POST", n.KV, "/kv/set", []byte(`{"key":"curl-d","value":"ok"}`), "Content-Type", "application/x-www-form-urlencoded")
	wantStatus(t, "curl -d", r, 200, "")
	r = req(t, "POST", n.KV, "/kv/delete?key=curl-d", nil)
	wantStatus(t, "delete after curl -d", r, 200, "")
}

func strangersCannotJoin(t *testing.T, c *tc.Cluster, values map[string]string) {
	other, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  []string
	}{
		{"the same name and no key", []string{"CLUSTER_KEY="}},
		{"the same name and another key", []string{"CLUSTER_KEY=" + other.String()}},
		{"another name and the key", []string{"CLUSTER_NAME=totally-different-cluster"}},
		{"another name and no key", []string{"CLUSTER_NAME=totally-different-cluster", "CLUSTER_KEY="}},
	}
	members := c.Nodes[:3]
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			s := c.AddNode(tt.env...)
			s.Start()
			defer s.Kill()
			time.Sleep(8 * time.Second) // several rounds of join attempts
			for _, m := range members {
				if got := strings.Join(activeIDs(t, m), ","); got != "node-1=active,node-2=active,node-3=active" {
					t.Errorf("%s sees %s", m.ID, got)
				}
			}
			leader, err := c.Leader(members[0])
			if err != nil {
				t.Fatal(err)
			}
			if peers := req(t, "GET", leader.HTTP, "/consensus/stats", nil).Map()["num_peers"]; peers != 2.0 {
				t.Errorf("the Raft leader has %v peers, want 2", peers)
			}
			for k := range values {
				ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
				r, err := tc.GetKey(ctx, s.KV, k, true)
				cancel()
				if err == nil && r.Status == 200 {
					t.Errorf("the stranger served %s: %s", k, r.Body)
				}
				break
			}
			if !logged(s, "refused") {
				t.Errorf("the stranger logged no refusal:\n%s", tail(s.Stderr(), 20))
			}
			seedLogged := false
			for _, m := range members {
				seedLogged = seedLogged || logged(m, "refused")
			}
			if !seedLogged {
				t.Errorf("no member logged a refusal")
			}
		})
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// keyringView is GET /cluster/keyring.
type keyringView struct {
	Keys []struct {
		Fingerprint string   `json:"fingerprint"`
		PrimaryOn   []string `json:"primary_on"`
		InstalledOn []string `json:"installed_on"`
	} `json:"keys"`
}

func keyring(t *testing.T, n *tc.Node) keyringView {
	t.Helper()
	var v keyringView
	r := req(t, "GET", n.HTTP, "/cluster/keyring", nil, bearer(adminToken)...)
	if r.Status != 200 || r.JSON(&v) != nil {
		t.Fatalf("keyring: %s", tc.ErrText(r))
	}
	return v
}

func rotateKey(t *testing.T, c *tc.Cluster, before snapshot) {
	old := c.Key
	next, err := clusterkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	members := c.Nodes[:3]
	admin := bearer(adminToken)
	body := []byte(fmt.Sprintf(`{"key":%q}`, next.String()))
	// use before install is refused, so no member is cut off.
	wantStatus(t, "use before install", req(t, "POST", members[0].HTTP, "/cluster/keyring/use", body, admin...), 409, errcode.Conflict)
	wantStatus(t, "install", req(t, "POST", members[0].HTTP, "/cluster/keyring/install", body, admin...), 200, "")
	wantStatus(t, "remove of the key in use", req(t, "POST", members[1].HTTP, "/cluster/keyring/remove",
		[]byte(fmt.Sprintf(`{"key":%q}`, old.String())), admin...), 409, errcode.Conflict)
	wantStatus(t, "use", req(t, "POST", members[1].HTTP, "/cluster/keyring/use", body, admin...), 200, "")
	// The harness speaks with the new key from here on.
	c.UseKey(next)
	writes := writeKeys(t, c, "mid-rotation", 6)
	wantStatus(t, "remove", req(t, "POST", members[2].HTTP, "/cluster/keyring/remove",
		[]byte(fmt.Sprintf(`{"key":%q}`, old.String())), admin...), 200, "")
	v := keyring(t, members[0])
	if len(v.Keys) != 1 || v.Keys[0].Fingerprint != next.Fingerprint() || len(v.Keys[0].PrimaryOn) != 3 {
		t.Fatalf("keyring after the rotation: %+v", v)
	}
	for k, val := range writeKeys(t, c, "after-rotation", 6) {
		writes[k] = val
	}
	c.WaitHealthy(30*time.Second, 3, 3)
	for k, val := range before.values {
		writes[k] = val
	}
	intact(t, c, writes)

	t.Run("a node with the removed key cannot join", func(t *testing.T) {
		s := c.AddNode("CLUSTER_KEY=" + old.String())
		s.Start()
		defer s.Kill()
		time.Sleep(6 * time.Second)
		if got := strings.Join(activeIDs(t, members[0]), ","); got != "node-1=active,node-2=active,node-3=active" {
			t.Errorf("node-1 sees %s", got)
		}
	})
	t.Run("a member restarted with the removed key as CLUSTER_KEY keeps the rotated keyring", func(t *testing.T) {
		n := members[2]
		n.Kill()
		n.Env = append(n.Env, "CLUSTER_KEY="+old.String())
		n.Start()
		c.WaitHealthy(60*time.Second, 3, 3)
		if !logged(n, "was removed from this node's keyring") {
			t.Errorf("%s did not say it ignored the removed CLUSTER_KEY", n.ID)
		}
	})
}
