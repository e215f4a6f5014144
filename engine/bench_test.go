package engine

// Write-path benchmarks of the data plane: real node-to-node connections on
// loopback and real (fsyncing) Pebble stores, entered where the KV API hands
// a write over. Run with e.g.
//
//	go test -run=NONE -bench=. -benchtime=3s -count=10 ./engine/ | tee new.txt
//
// and compare runs with benchstat. Each reports ops/s besides ns/op; ns/op is
// wall time divided by operations, so with RunParallel it is the inverse of
// throughput, not a latency.

import (
	"context"
	"fmt"
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
	n := c.nodes[via]
	value := strings.Repeat("v", 100)
	var seq atomic.Uint64
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := fmt.Sprintf("bench-%d", seq.Add(1))
			if _, err := n.srv.Write(context.Background(), Op{Key: key, Value: value}, 0); err != nil {
				b.Errorf("set %s: %v", key, err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkForwardReplicate is the full write path behind the KV API: the
// write enters at a node that is not the primary, which forwards to the primary, which
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
// write (shared by group commit), no network hop.
func BenchmarkPrimaryWriteNoReplicas(b *testing.B) {
	benchWrites(b, clusterConfig{
		parts: 16, ids: []string{"n1"},
		row: func(int) Route { return Route{Primary: "n1", Epoch: 1} },
	}, "n1")
}
