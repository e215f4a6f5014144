package kvapi

// Write-path benchmarks over real loopback HTTP and real (fsyncing) Pebble
// stores. Run with e.g.
//
//	go test -run=NONE -bench=. -benchtime=3s -count=10 ./kvapi/ | tee new.txt
//
// and compare runs with benchstat. Each reports ops/s besides ns/op; ns/op is
// wall time divided by operations, so with RunParallel it is the inverse of
// throughput, not a latency.

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// benchParallelism × GOMAXPROCS client goroutines keep enough writes in
// flight for Pebble's group commit to matter, as a loaded node would.
const benchParallelism = 8

func benchWrites(b *testing.B, cfg clusterConfig, via string) {
	c := newCluster(b, cfg)
	c.waitReady(b)
	target := c.nodes[via].url + "/kv/set"
	value := strings.Repeat("v", 100)
	var seq atomic.Uint64
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := fmt.Sprintf("bench-%d", seq.Add(1))
			r := doReqNoFatal(c.client, http.MethodPost, target, setBodyJSON(key, value))
			if r.err != nil || r.status != http.StatusOK {
				b.Errorf("set %s: %v %d %s", key, r.err, r.status, r.body)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkForwardReplicate is the full public write path: the client talks
// to a node that is not the primary, which forwards to the primary, which
// persists and replicates to two in-sync replicas before answering.
func BenchmarkForwardReplicate(b *testing.B) {
	benchWrites(b, clusterConfig{
		parts: 16, ids: []string{"n1", "n2", "n3"},
		row: primaryWithReplicas(1, []string{"n2", "n3"}, []string{"n2", "n3"}),
	}, "n2")
}

// BenchmarkPrimaryWriteReplicas sends to the primary directly: the
// difference from BenchmarkForwardReplicate is the forwarding hop.
func BenchmarkPrimaryWriteReplicas(b *testing.B) {
	benchWrites(b, clusterConfig{
		parts: 16, ids: []string{"n1", "n2", "n3"},
		row: primaryWithReplicas(1, []string{"n2", "n3"}, []string{"n2", "n3"}),
	}, "n1")
}

// BenchmarkPrimaryWriteNoReplicas is the floor: one node, one fsync per
// write (shared by group commit), no network hop but the client's.
func BenchmarkPrimaryWriteNoReplicas(b *testing.B) {
	benchWrites(b, clusterConfig{
		parts: 16, ids: []string{"n1"},
		row: func(int) Route { return Route{Primary: "n1", Epoch: 1} },
	}, "n1")
}
