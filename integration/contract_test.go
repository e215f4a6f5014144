package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

func getJSON(t *testing.T, addr, path string, wantStatus int, header ...string) map[string]any {
	t.Helper()
	r, err := tc.Get(addr, path, header...)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	if r.Status != wantStatus {
		t.Fatalf("GET %s%s: status %d, want %d: %s", addr, path, r.Status, wantStatus, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("GET %s%s: Content-Type %q, want application/json", addr, path, ct)
	}
	m := r.Map()
	if m == nil {
		t.Fatalf("GET %s%s: body is not a JSON object: %s", addr, path, r.Body)
	}
	return m
}

func requireFields(t *testing.T, what string, m map[string]any, fields ...string) {
	t.Helper()
	for _, f := range fields {
		if _, ok := m[f]; !ok {
			t.Errorf("%s: field %q missing in %v", what, f, m)
		}
	}
}

func set(t *testing.T, addr, key, value string) {
	t.Helper()
	r, err := tc.Set(context.Background(), addr, key, value)
	if err != nil {
		t.Fatalf("set %s via %s: %v", key, addr, err)
	}
	m := r.Map()
	if r.Status != http.StatusOK || m["status"] != "success" || m["key"] != key {
		t.Fatalf("set %s via %s: %d %s", key, addr, r.Status, r.Body)
	}
}

func get(addr, key string, stale bool) (string, int, error) {
	path := "/kv/get?key=" + key
	if stale {
		path += "&consistency=stale"
	}
	r, err := tc.Get(addr, path)
	if err != nil {
		return "", 0, err
	}
	v, _ := r.Map()["value"].(string)
	return v, r.Status, nil
}

// TestThreeNodeContract starts the three-node cluster of the quick start as
// separate processes and walks through every KV and management route.
func TestThreeNodeContract(t *testing.T) {
	t.Parallel()
	c := tc.New(t, binary, 3, tc.Options{})
	c.Start()
	c.WaitHealthy(30*time.Second, 3, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]

	t.Run("kv", func(t *testing.T) {
		keys := map[string]string{}
		for i := range 30 {
			k, v := fmt.Sprintf("user:%d", i), fmt.Sprintf("value %d ✓", i)
			keys[k] = v
			set(t, c.Nodes[i%3].KV, k, v)
		}
		// Every key is readable through every node.
		for k, want := range keys {
			for _, n := range c.Nodes {
				got, status, err := get(n.KV, k, false)
				if err != nil || status != 200 || got != want {
					t.Fatalf("get %s via %s: %q %d %v, want %q", k, n.ID, got, status, err, want)
				}
			}
		}
		// RF 3 on 3 nodes: every node stores every key.
		for _, n := range c.Nodes {
			m := getJSON(t, n.KV, "/kv/list", 200)
			ks, _ := m["keys"].([]any)
			if int(m["count"].(float64)) != len(keys) || len(ks) != len(keys) {
				t.Fatalf("%s /kv/list: %v", n.ID, m)
			}
			st := getJSON(t, n.KV, "/kv/stats", 200)
			requireFields(t, "/kv/stats", st, "local_keys", "cluster_nodes", "partitions", "is_leader", "raft_state", "uptime_seconds")
			if st["local_keys"].(float64) != float64(len(keys)) || st["cluster_nodes"].(float64) != 3 || st["partitions"].(float64) != 16 {
				t.Fatalf("%s /kv/stats: %v", n.ID, st)
			}
		}
		// Delete through one node; gone everywhere.
		r, err := tc.Do(context.Background(), http.MethodPost, n2.KV, "/kv/delete?key=user:7", nil)
		if err != nil || r.Status != 200 || r.Map()["status"] != "deleted" || r.Map()["key"] != "user:7" {
			t.Fatalf("delete: %v %d %s", err, r.Status, r.Body)
		}
		for _, n := range c.Nodes {
			for _, stale := range []bool{false, true} {
				if _, status, err := get(n.KV, "user:7", stale); err != nil || status != 404 {
					t.Fatalf("get deleted key via %s (stale=%v): %d %v", n.ID, stale, status, err)
				}
			}
		}
		m := getJSON(t, n3.KV, "/kv/get?key=user:7", 404)
		requireFields(t, "404 body", m, "error", "code")
	})

	t.Run("management", func(t *testing.T) {
		for _, n := range c.Nodes {
			h := getJSON(t, n.HTTP, "/health", 200)
			if h["success"] != true || h["message"] != "healthy" {
				t.Fatalf("/health: %v", h)
			}
			d := getJSON(t, n.HTTP, "/health/detailed", 200)
			requireFields(t, "/health/detailed", d, "healthy", "node_id", "node_name", "is_leader", "node_count", "partition_count", "raft_state", "last_sync", "uptime")
			if d["node_id"] != n.ID || d["node_name"] != n.Name || d["node_count"].(float64) != 3 {
				t.Fatalf("/health/detailed: %v", d)
			}
		}
		cl := getJSON(t, n2.HTTP, "/cluster", 200)
		cluster := cl["cluster"].(map[string]any)
		requireFields(t, "/cluster.cluster", cluster, "id", "name", "nodes", "partition_map", "config")
		nodes := cluster["nodes"].([]any)
		if len(nodes) != 3 {
			t.Fatalf("/cluster nodes: %v", nodes)
		}
		for i, raw := range nodes {
			nd := raw.(map[string]any)
			requireFields(t, "/cluster node", nd, "id", "ip", "port", "name", "status")
			if nd["id"] != c.Nodes[i].ID || nd["ip"] != c.Nodes[i].HTTP || nd["status"] != "active" ||
				int(nd["port"].(float64)) != tc.Port(c.Nodes[i].HTTP) {
				t.Fatalf("/cluster node %d: %v", i, nd)
			}
		}
		parts := cluster["partition_map"].(map[string]any)["partitions"].(map[string]any)
		if len(parts) != 16 {
			t.Fatalf("partition_map has %d partitions", len(parts))
		}
		p7 := parts["partition-7"].(map[string]any)
		requireFields(t, "partition", p7, "id", "primary_node", "replica_nodes")
		cfg := cluster["config"].(map[string]any)
		if cfg["cluster_name"] != "my-app-cluster" || cfg["partition_count"].(float64) != 16 || cfg["replication_factor"].(float64) != 3 {
			t.Fatalf("/cluster config: %v", cfg)
		}
		hc := cl["hash_config"].(map[string]any)
		requireFields(t, "hash_config", hc, "algorithm", "format", "modulo", "seed")
		if hc["format"] != "partition-%d" || hc["modulo"].(float64) != 16 || hc["algorithm"] != "fnv-1a-64" {
			t.Fatalf("hash_config: %v", hc)
		}

		ps := getJSON(t, n1.HTTP, "/partitions", 200)
		if ps["count"].(float64) != 16 || len(ps["partitions"].([]any)) != 16 {
			t.Fatalf("/partitions: %v", ps)
		}
		stats := getJSON(t, n3.HTTP, "/partitions/stats", 200)
		requireFields(t, "/partitions/stats", stats, "total_partitions", "partitions_per_node", "replicas_per_node")
		total := 0.0
		for _, v := range stats["partitions_per_node"].(map[string]any) {
			total += v.(float64)
		}
		if total != 16 {
			t.Fatalf("primaries add up to %v: %v", total, stats)
		}
		pk := getJSON(t, n1.HTTP, "/partitions/key?key=user:123", 200)
		requireFields(t, "/partitions/key", pk, "id", "primary_node", "replica_nodes")
		if !strings.HasPrefix(pk["id"].(string), "partition-") || len(pk["replica_nodes"].([]any)) != 2 {
			t.Fatalf("/partitions/key: %v", pk)
		}
		getJSON(t, n1.HTTP, "/partitions/key", 400)

		mj := getJSON(t, n1.HTTP, "/metrics", 200, "Accept", "application/json")
		requireFields(t, "/metrics json", mj, "node_count", "partition_count", "request_count", "error_count", "last_sync", "is_leader", "raft_state", "uptime_seconds")
		if mj["request_count"].(float64) < 1 {
			t.Fatalf("request_count does not move: %v", mj)
		}
		r, err := tc.Get(n1.HTTP, "/metrics")
		if err != nil || r.Status != 200 || !strings.Contains(string(r.Body), "clusterkit_nodes 3") ||
			!strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
			t.Fatalf("/metrics prometheus: %v %d %q", err, r.Status, r.Header.Get("Content-Type"))
		}
		// One state per partition, and a revision for each of the node's
		// copies (16 partitions, three copies each, on three nodes).
		prom := string(r.Body)
		if n := strings.Count(prom, "\nclusterkit_partition_state{"); n != 16 {
			t.Errorf("/metrics: %d clusterkit_partition_state series, want 16", n)
		}
		if n := strings.Count(prom, "\nclusterkit_copy_revision{"); n != 16 {
			t.Errorf("/metrics: %d clusterkit_copy_revision series on node-1, want one per partition (16)", n)
		}
		for _, want := range []string{"\nclusterkit_watch_streams ", "\nclusterkit_ttl_expired_keys_total ", "\nclusterkit_replica_since_primary_seconds{"} {
			if !strings.Contains(prom, want) {
				t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
			}
		}
		// The Grafana dashboard in deploy/ charts only metrics a node has
		// (copy_remaining exists only while a copy is in flight).
		dash, err := os.ReadFile("../deploy/grafana/clusterkit-dashboard.json")
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range regexp.MustCompile(`\b(clusterkit|process|go)_[a-z_]+`).FindAllString(string(dash), -1) {
			if name != "clusterkit_copy_remaining" && !strings.Contains(prom, "\n"+name) {
				t.Errorf("deploy/grafana/clusterkit-dashboard.json charts %s, which /metrics does not have", name)
			}
		}

		for _, n := range c.Nodes {
			l := getJSON(t, n.HTTP, "/consensus/leader", 200)
			requireFields(t, "/consensus/leader", l, "leader_id", "leader_name", "leader_ip", "term", "elected_at")
			if l["leader_id"] != "node-1" || l["leader_ip"] != n1.HTTP || l["leader_name"] != "Server-1" {
				t.Fatalf("/consensus/leader on %s: %v", n.ID, l)
			}
			s := getJSON(t, n.HTTP, "/consensus/stats", 200)
			requireFields(t, "/consensus/stats", s, "state", "term", "last_log_index", "last_log_term", "commit_index", "applied_index", "num_peers", "leader")
			if s["num_peers"].(float64) != 2 || s["applied_index"].(float64) < 3 || s["leader"] != "node-1" {
				t.Fatalf("/consensus/stats on %s: %v", n.ID, s)
			}
		}
	})

	t.Run("status block", func(t *testing.T) {
		tc.Eventually(t, 10*time.Second, "status block on stdout", func() error {
			out := n2.Stdout()
			for _, want := range []string{"=== Cluster Status ===", "Cluster: my-app-cluster", "Total Nodes: 3", "Partitions: 16",
				"Raft State: Follower", "  - Server-1 (node-1) at " + n1.HTTP + " [active]", "======================"} {
				if !strings.Contains(out, want) {
					return fmt.Errorf("missing %q in:\n%s", want, out)
				}
			}
			return nil
		})
	})

	t.Run("errors", func(t *testing.T) {
		cases := []struct {
			method, path, body string
			status             int
		}{
			{"POST", "/kv/set", `{"key":`, 400},
			{"POST", "/kv/set", `{"value":"x"}`, 400},
			{"POST", "/kv/set", `{"key":"k"}`, 400},
			{"POST", "/kv/set", `{"key":"` + strings.Repeat("k", 2000) + `","value":"x"}`, 413},
			{"POST", "/kv/set", `{"key":"k","value":"` + strings.Repeat("v", 1<<20+1) + `"}`, 413},
			{"GET", "/kv/set", "", 405},
			{"GET", "/kv/get", "", 400},
			{"DELETE", "/kv/list", "", 405},
			{"GET", "/kv/nope", "", 404},
		}
		for _, tt := range cases {
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			r, err := tc.Do(context.Background(), tt.method, n3.KV, tt.path, body)
			if err != nil || r.Status != tt.status {
				t.Fatalf("%s %s: %v %d, want %d: %.200s", tt.method, tt.path, err, r.Status, tt.status, r.Body)
			}
			m := r.Map()
			if m["error"] == nil || m["code"] == nil || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
				t.Fatalf("%s %s: error body %.200s", tt.method, tt.path, r.Body)
			}
		}
		for _, path := range []string{"/nope", "/cluster/nope"} {
			getJSON(t, n1.HTTP, path, 404)
		}
	})
}

// TestDefaultSingleNode starts a node with no settings but its ports (what
// `go run .` does) and checks that it is a usable cluster of one.
func TestDefaultSingleNode(t *testing.T) {
	t.Parallel()
	c := tc.New(t, binary, 1, tc.Options{})
	c.Start()
	c.WaitHealthy(20*time.Second, 1, 1)
	n := c.Nodes[0]
	set(t, n.KV, "hello", "world")
	if v, status, err := get(n.KV, "hello", false); err != nil || status != 200 || v != "world" {
		t.Fatalf("get: %q %d %v", v, status, err)
	}
	// The load tool against it: preloaded keys must never read as missing.
	out, err := exec.Command(binary, "bench", "-addrs", n.KV, "-c", "4", "-d", "1s", "-keys", "200",
		"-preload", "-reads", "0.5", "-json", "-quiet").CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	var res struct {
		Ops       int64   `json:"ops"`
		Reads     int64   `json:"reads"`
		Writes    int64   `json:"writes"`
		Errors    int64   `json:"errors"`
		Misses    int64   `json:"misses"`
		OpsPerSec float64 `json:"ops_per_sec"`
		P99Ms     float64 `json:"p99_ms"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("bench output: %v\n%s", err, out)
	}
	if res.Ops == 0 || res.Reads == 0 || res.Writes == 0 || res.Errors != 0 || res.Misses != 0 || res.OpsPerSec <= 0 || res.P99Ms <= 0 {
		t.Fatalf("bench result: %+v", res)
	}

	// Restart on the same data: no second bootstrap, data served.
	n.Stop(15 * time.Second)
	n.Start()
	tc.Eventually(t, 20*time.Second, "value after restart", func() error {
		v, status, err := get(n.KV, "hello", false)
		if err != nil || status != 200 || v != "world" {
			return fmt.Errorf("%q %d %v", v, status, err)
		}
		return nil
	})
	if strings.Count(n.Stderr(), "bootstrapping a new cluster") != 1 {
		t.Fatalf("bootstrapped more than once:\n%s", n.Stderr())
	}
	if !slices.ContainsFunc(strings.Split(n.Stderr(), "\n"), func(l string) bool { return strings.Contains(l, "raft state found, resuming") }) {
		t.Fatal("restart did not resume from its raft state")
	}
}

// TestBadConfig checks that a bad setting stops the node at once with one
// line naming it.
func TestBadConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		env  []string
		want string
	}{
		{[]string{"HTTP_ADDR=nonsense"}, "HTTP_ADDR"},
		{[]string{"REPLICATION_FACTOR=0"}, "REPLICATION_FACTOR"},
		{[]string{"HTTP_ADDR=127.0.0.1:18080", "KV_ADDR=127.0.0.1:18080"}, "KV_ADDR"},
		{[]string{"PARTITIONS=many"}, "PARTITIONS"},
	}
	for _, tt := range cases {
		t.Run(tt.want, func(t *testing.T) {
			out, code := runOnce(t, tt.env)
			if code == 0 || !strings.Contains(out, tt.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
				t.Fatalf("exit %d, output %q; want one line naming %s", code, out, tt.want)
			}
		})
	}
}
