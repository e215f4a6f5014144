package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// Keys that exist for the whole of a scan are on its pages, whatever
// churns around them: small pages through every node while neighbouring
// keys of every partition are set and deleted.
func TestScanKeepsStableKeysUnderChurn(t *testing.T) {
	const parts = 16
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2", "n3"},
		row: func(p int) Route {
			ids := []string{"n1", "n2", "n3"}
			pr := ids[p%3]
			var reps []string
			for _, id := range ids {
				if id != pr {
					reps = append(reps, id)
				}
			}
			return Route{Primary: pr, Replicas: reps, InSync: reps, Epoch: 1}
		},
	})
	c.waitReady(t)
	nodes := []*testNode{c.nodes["n1"], c.nodes["n2"], c.nodes["n3"]}
	stable := map[string]bool{}
	for i := range 25 {
		if i%3 == 0 {
			k := fmt.Sprintf("s%02d", i)
			stable[k] = true
			if _, err := write(t, nodes[0], Op{Key: k, Value: "v"}, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for ctx.Err() == nil {
				i := r.IntN(25)
				if i%3 == 0 {
					continue
				}
				op := Op{Key: fmt.Sprintf("s%02d", i), Value: "x"}
				if r.IntN(2) == 0 {
					op.Delete = true
				}
				_, _ = nodes[r.IntN(3)].srv.Write(ctx, op, 0)
			}
		})
	}
	deadline := time.Now().Add(2 * time.Second)
	scans := 0
	for time.Now().Before(deadline) {
		for limit := 1; limit <= 4; limit++ {
			got := map[string]bool{}
			spec := ScanSpec{Start: "s", End: "t", HasEnd: true, Limit: limit}
			for page := 0; ; page++ {
				pg, err := nodes[page%3].srv.Scan(context.Background(), spec)
				if err != nil {
					t.Fatal(err)
				}
				for _, it := range pg.Items {
					got[it.Key] = true
				}
				if !pg.More {
					break
				}
				spec.After, spec.HasAfter = pg.Items[len(pg.Items)-1].Key, true
			}
			scans++
			for k := range stable {
				if !got[k] {
					t.Fatalf("scan %d (limit %d) missed %s, which never changed; got %v", scans, limit, k, got)
				}
			}
		}
	}
	cancel()
	wg.Wait()
	t.Logf("%d scans", scans)
}
