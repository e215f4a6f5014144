package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// TestMeasure collects the figures quoted in release notes: failover time
// after SIGKILL of a primary, time for a fourth node to join a loaded
// cluster, and read throughput by consistency mode. It asserts only that
// the cluster keeps working; it is a measurement, so it runs only with
// CLUSTERKIT_MEASURE=1:
//
//	CLUSTERKIT_MEASURE=1 go test -count=1 -run TestMeasure -v ./integration/
func TestMeasure(t *testing.T) {
	if os.Getenv("CLUSTERKIT_MEASURE") == "" {
		t.Skip("measurement run; set CLUSTERKIT_MEASURE=1")
	}
	t.Run("failover", measureFailover)
	t.Run("scale-out", measureScaleOut)
	for _, mode := range []string{"lease", "confirm"} {
		t.Run("reads-"+mode, func(t *testing.T) { measureReads(t, mode) })
	}
}

func bench(t *testing.T, args ...string) map[string]any {
	t.Helper()
	out, err := exec.Command(binary, append([]string{"bench", "-json", "-quiet"}, args...)...).Output()
	if err != nil {
		t.Fatalf("bench %v: %v\n%s", args, err, out)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("bench output: %v\n%s", err, out)
	}
	return m
}

func kvAddrs(nodes []*tc.Node) string {
	var a []string
	for _, n := range nodes {
		a = append(a, n.KV)
	}
	return strings.Join(a, ",")
}

func measureFailover(t *testing.T) {
	c := tc.New(t, binary, 3, tc.Options{})
	c.Start()
	c.WaitHealthy(30*time.Second, 3, 3)
	var took []time.Duration
	for i := range 10 {
		key := fmt.Sprintf("failover-%d", i)
		set(t, c.Nodes[0].KV, key, "before")
		pk := getJSON(t, c.Nodes[0].HTTP, "/partitions/key?key="+key, 200)
		var victim, other *tc.Node
		for _, n := range c.Nodes {
			if n.ID == pk["primary_node"] {
				victim = n
			} else {
				other = n
			}
		}
		killed := time.Now()
		victim.Kill()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			r, err := tc.Set(ctx, other.KV, key, "after")
			cancel()
			if err == nil && r.Status == 200 {
				break
			}
			if time.Since(killed) > 60*time.Second {
				t.Fatalf("no successful write to %s within 60 s of killing %s", key, victim.ID)
			}
			time.Sleep(20 * time.Millisecond)
		}
		took = append(took, time.Since(killed))
		t.Logf("kill %d: primary %s of %s; writes accepted again after %s", i+1, victim.ID, key, took[i].Round(10*time.Millisecond))
		victim.Start()
		c.WaitHealthy(60*time.Second, 3, 3)
	}
	slices.Sort(took)
	t.Logf("SIGKILL of a primary → its partition accepts writes: median %s, max %s, min %s over %d kills",
		took[len(took)/2].Round(10*time.Millisecond), took[len(took)-1].Round(10*time.Millisecond), took[0].Round(10*time.Millisecond), len(took))
}

func measureScaleOut(t *testing.T) {
	c := tc.New(t, binary, 3, tc.Options{})
	c.Start()
	c.WaitHealthy(30*time.Second, 3, 3)
	addrs := kvAddrs(c.Nodes)
	load := bench(t, "-addrs", addrs, "-c", "32", "-d", "1s", "-keys", "100000", "-preload")
	t.Logf("preloaded 100000 keys of 100 bytes (%v)", load["preloaded"])

	// Join a fourth node while a write load runs.
	done := make(chan map[string]any, 1)
	go func() {
		out, _ := exec.Command(binary, "bench", "-json", "-quiet", "-addrs", addrs, "-c", "16", "-d", "20s", "-keys", "100000").Output()
		var m map[string]any
		_ = json.Unmarshal(out, &m)
		done <- m
	}()
	time.Sleep(2 * time.Second)
	n4 := c.AddNode()
	start := time.Now()
	n4.Start()
	tc.Eventually(t, 120*time.Second, "node-4 takes its share", func() error {
		r, err := tc.Get(n4.HTTP, "/partitions/stats")
		if err != nil {
			return err
		}
		perNode, _ := r.Map()["partitions_per_node"].(map[string]any)
		if led, _ := perNode["node-4"].(float64); led == 0 {
			return fmt.Errorf("node-4 leads nothing yet")
		}
		return settled(n4, 4, 3)
	})
	t.Logf("4th node joined a 3-node cluster holding 100000 keys under write load and took its share in %s",
		time.Since(start).Round(100*time.Millisecond))
	m := <-done
	t.Logf("write load during the join: %.0f ops/s, errors %v, p99 %.1f ms", m["ops_per_sec"], m["errors"], m["p99_ms"])
}

func measureReads(t *testing.T, mode string) {
	c := tc.New(t, binary, 3, tc.Options{Env: []string{"READ_MODE=" + mode}})
	c.Start()
	c.WaitHealthy(30*time.Second, 3, 3)
	addrs := kvAddrs(c.Nodes)
	bench(t, "-addrs", addrs, "-c", "32", "-d", "1s", "-keys", "10000", "-preload")
	if mode == "lease" {
		m := bench(t, "-addrs", addrs, "-c", "32", "-d", "10s", "-keys", "100000")
		t.Logf("100%% writes: %.0f ops/s, p50 %.2f ms, p99 %.2f ms, errors %v", m["ops_per_sec"], m["p50_ms"], m["p99_ms"], m["errors"])
		m = bench(t, "-addrs", addrs, "-c", "32", "-d", "10s", "-keys", "10000", "-reads", "0.9", "-preload")
		t.Logf("90%% reads: %.0f ops/s, p50 %.2f ms, p99 %.2f ms, errors %v, misses %v", m["ops_per_sec"], m["p50_ms"], m["p99_ms"], m["errors"], m["misses"])
	}
	for _, stale := range []bool{false, true} {
		args := []string{"-addrs", addrs, "-c", "32", "-d", "10s", "-keys", "10000", "-reads", "1"}
		name := "linearizable (" + mode + ")"
		if stale {
			args = append(args, "-stale")
			name = "stale"
		}
		m := bench(t, args...)
		t.Logf("100%% reads, %s: %.0f ops/s, p50 %.2f ms, p99 %.2f ms, errors %v",
			name, m["ops_per_sec"], m["p50_ms"], m["p99_ms"], m["errors"])
	}
}
