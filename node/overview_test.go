package node

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"
)

// A flood of overview requests costs one fan-out to the members per
// overviewReuse, not one per request: concurrent and closely following
// callers share one result, and a later one gets a fresh one.
func TestOverviewSharesOneFanOut(t *testing.T) {
	cfg := testNodeConfig(t, "node-1")
	cfg.Bootstrap = true
	ck := newTestNode(t, cfg)
	startTestNode(t, ck)
	waitFor(t, 20*time.Second, "a leader", func() bool { return ck.healthy() })
	nodes := ck.raft.State().SortedNodes()

	const callers = 20
	got := make([]uintptr, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			stats, _ := ck.cachedStats(context.Background(), nodes)
			got[i] = reflect.ValueOf(stats).Pointer()
		})
	}
	wg.Wait()
	for i, p := range got {
		if p != got[0] {
			t.Fatalf("caller %d got its own fan-out; want all %d to share one", i, callers)
		}
	}
	time.Sleep(overviewReuse + 50*time.Millisecond)
	stats, _ := ck.cachedStats(context.Background(), nodes)
	if reflect.ValueOf(stats).Pointer() == got[0] {
		t.Fatalf("a request %s later reused the old fan-out", overviewReuse)
	}
	if _, ok := stats["node-1"]; !ok {
		t.Fatalf("stats lack this node: %v", stats)
	}
}
