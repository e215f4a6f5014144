package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// unstall undoes setStall.
func (c *callRecorder) unstall(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.stall, kind)
}

// collect reads w until it has n events or the timeout passes.
func collect(t *testing.T, w *Watcher, n int, timeout time.Duration) []Event {
	t.Helper()
	var out []Event
	deadline := time.Now().Add(timeout)
	for len(out) < n && time.Now().Before(deadline) {
		evs, err := w.Next(context.Background(), 100, 50*time.Millisecond)
		if err != nil {
			t.Fatalf("watch: %v (after %d events)", err, len(out))
		}
		out = append(out, evs...)
	}
	return out
}

func eventKeys(evs []Event) []string {
	out := []string{}
	for _, e := range evs {
		kind := "set"
		switch {
		case e.Expired:
			kind = "expire"
		case e.Delete:
			kind = "delete"
		}
		out = append(out, fmt.Sprintf("%s %s=%s@%d", kind, e.Key, e.Value, e.Seq))
	}
	return out
}

// A watch delivers every committed change of its range, in order, with the
// revision the write returned, from any node; a resumed watch continues
// exactly after its positions.
func TestWatchDeliversAndResumes(t *testing.T) {
	const parts = 2
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2", "n3"},
		row: primaryWithReplicas(1, []string{"n2"}, []string{"n2"}),
	})
	c.waitReady(t)
	n1, n3 := c.nodes["n1"], c.nodes["n3"]
	// n3 holds no copy: its watch reads through its relay from n1.
	w, err := n3.srv.Watch(context.Background(), WatchSpec{Prefix: "app/"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	want := map[int][]string{}
	for i := range 5 {
		key := keyIn(t, "app/", i%parts, parts)
		res, err := write(t, n1, Op{Key: key, Value: fmt.Sprint(i)}, 0)
		if err != nil {
			t.Fatal(err)
		}
		want[i%parts] = append(want[i%parts], fmt.Sprintf("set %s=%d@%d", key, i, res.Revision))
	}
	if _, err := write(t, n1, Op{Key: "other", Value: "not watched"}, 0); err != nil {
		t.Fatal(err)
	}
	del := keyIn(t, "app/", 0, parts)
	res, err := write(t, n1, Op{Key: del, Delete: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	want[0] = append(want[0], fmt.Sprintf("delete %s=@%d", del, res.Revision))
	got := collect(t, w, len(want[0])+len(want[1]), 5*time.Second)
	// Order holds within a partition.
	for p := range parts {
		var g []string
		for i, e := range got {
			if e.Partition == p {
				g = append(g, eventKeys(got[i:i+1])...)
			}
		}
		if !slices.Equal(g, want[p]) {
			t.Errorf("partition %d events:\n got %v\nwant %v", p, g, want[p])
		}
	}
	// Resume from the position after the third event, on another node:
	// exactly the rest, nothing twice.
	pos := map[int]uint64{}
	for p := range parts {
		pos[p] = 0
	}
	for _, e := range got[:3] {
		pos[e.Partition] = e.Seq
	}
	w2, err := c.nodes["n2"].srv.Watch(context.Background(), WatchSpec{Prefix: "app/", From: pos})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	rest := collect(t, w2, len(got)-3, 5*time.Second)
	var wantRest []string
	for _, e := range got[3:] {
		if e.Seq > pos[e.Partition] {
			wantRest = append(wantRest, eventKeys([]Event{e})...)
		}
	}
	gotRest := eventKeys(rest)
	slices.Sort(gotRest)
	slices.Sort(wantRest)
	if !slices.Equal(gotRest, wantRest) {
		t.Errorf("resumed watch:\n got %v\nwant %v", gotRest, wantRest)
	}
	if more, _ := w2.Next(context.Background(), 100, 200*time.Millisecond); len(more) != 0 {
		t.Errorf("resumed watch delivered more: %v", eventKeys(more))
	}
}

// A watch never shows a write that a cut-off primary put on its own disk:
// it was never committed, and the new primary's history does not have it.
// A watcher that follows the partition across the failover sees every
// committed write once.
func TestWatchAcrossFailoverSkipsUncommitted(t *testing.T) {
	const parts = 1
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2", "n3"},
		row:            primaryWithReplicas(1, []string{"n2"}, []string{"n2"}),
		requestTimeout: time.Second,
	})
	c.waitReady(t)
	n1, n2, n3 := c.nodes["n1"], c.nodes["n2"], c.nodes["n3"]
	w, err := n3.srv.Watch(context.Background(), WatchSpec{Prefix: ""})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	a, err := write(t, n1, Op{Key: "k", Value: "a"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	first := collect(t, w, 1, 5*time.Second)
	if got := eventKeys(first); !slices.Equal(got, []string{fmt.Sprintf("set k=a@%d", a.Revision)}) {
		t.Fatalf("before the failover: %v", got)
	}
	c.table.freeze("n1")
	c.table.setAlive("n1", false)
	c.table.updateAll(func(r *Route) {
		r.Primary, r.Replicas, r.InSync = "n2", []string{"n1"}, nil
		r.Epoch = 2
	})
	c.waitReady(t)
	if _, err := write(t, n1, Op{Key: "k", Value: "lost"}, 0); err == nil {
		t.Fatal("the cut-off primary acknowledged a write")
	}
	b, err := write(t, n2, Op{Key: "k", Value: "b"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := eventKeys(collect(t, w, 1, 5*time.Second))
	if want := []string{fmt.Sprintf("set k=b@%d", b.Revision)}; !slices.Equal(got, want) {
		t.Errorf("after the failover: %v, want %v (never the uncommitted \"lost\")", got, want)
	}
	// A new watcher from the start of the history on the new primary sees
	// the committed writes only.
	w2, err := n2.srv.Watch(context.Background(), WatchSpec{Prefix: "", From: map[int]uint64{0: 0}})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	all := eventKeys(collect(t, w2, 2, 5*time.Second))
	if want := []string{fmt.Sprintf("set k=a@%d", a.Revision), fmt.Sprintf("set k=b@%d", b.Revision)}; !slices.Equal(all, want) {
		t.Errorf("history on the new primary = %v, want %v", all, want)
	}
}

// A position older than the retained history ends the watch with the
// floor to resync from; never a silent gap.
func TestWatchResyncBelowFloor(t *testing.T) {
	c := newCluster(t, clusterConfig{parts: 1, ids: []string{"n1"}, row: primaryWithReplicas(1, nil, nil)})
	c.waitReady(t)
	n1 := c.nodes["n1"]
	for i := range 10 {
		if _, err := write(t, n1, Op{Key: fmt.Sprint(i), Value: "v"}, 0); err != nil {
			t.Fatal(err)
		}
	}
	floor, err := n1.db.TrimLog(0, 3, 0)
	if err != nil || floor == 0 {
		t.Fatalf("trim: %d, %v", floor, err)
	}
	w, err := n1.srv.Watch(context.Background(), WatchSpec{From: map[int]uint64{0: floor - 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, err = w.Next(context.Background(), 100, time.Second)
	var rs *ResyncError
	if !errors.As(err, &rs) || rs.Floor != floor || rs.Partition != 0 {
		t.Fatalf("watch below the floor: %v, want a resync from %d", err, floor)
	}
	// From the floor itself it works: exactly the retained writes.
	w2, err := n1.srv.Watch(context.Background(), WatchSpec{From: map[int]uint64{0: floor}})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if got := collect(t, w2, 3, 5*time.Second); len(got) != 3 {
		t.Errorf("from the floor: %v, want the 3 retained writes", eventKeys(got))
	}
	// A position past the committed history (not one the cluster handed
	// out) is a resync too.
	w3, err := n1.srv.Watch(context.Background(), WatchSpec{From: map[int]uint64{0: 1 << 40}})
	if err != nil {
		t.Fatal(err)
	}
	defer w3.Close()
	if _, err := w3.Next(context.Background(), 100, time.Second); !errors.As(err, &rs) {
		t.Errorf("watch from the future: %v, want a resync", err)
	}
}

func TestWatchLimit(t *testing.T) {
	c := newCluster(t, clusterConfig{parts: 1, ids: []string{"n1"}, row: primaryWithReplicas(1, nil, nil)})
	c.waitReady(t)
	n1 := c.nodes["n1"]
	n1.srv.hub.maxWatchers = 3
	var ws []*Watcher
	for range 3 {
		w, err := n1.srv.Watch(context.Background(), WatchSpec{})
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	if _, err := n1.srv.Watch(context.Background(), WatchSpec{}); !errors.Is(err, ErrTooManyWatchers) {
		t.Fatalf("fourth watch: %v, want ErrTooManyWatchers", err)
	}
	ws[0].Close()
	ws[0].Close() // idempotent
	w, err := n1.srv.Watch(context.Background(), WatchSpec{})
	if err != nil {
		t.Fatalf("a watch after one closed: %v", err)
	}
	w.Close()
	for _, w := range ws[1:] {
		w.Close()
	}
	if n := n1.srv.Watchers(); n != 0 {
		t.Errorf("%d watchers counted after all closed", n)
	}
}

// A watcher that reads the buffer and then stops reading while more
// changes than the buffer holds go by is cut; it can resume from its
// positions.
func TestSlowWatcherIsCut(t *testing.T) {
	c := newCluster(t, clusterConfig{parts: 1, ids: []string{"n1"}, row: primaryWithReplicas(1, nil, nil)})
	c.waitReady(t)
	n1 := c.nodes["n1"]
	w, err := n1.srv.Watch(context.Background(), WatchSpec{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := write(t, n1, Op{Key: "first", Value: "v"}, 0); err != nil {
		t.Fatal(err)
	}
	collect(t, w, 1, 5*time.Second)
	// Once the relay runs, the watcher reads its buffer.
	waitFor(t, 5*time.Second, "the watcher reading the relay's buffer", func() bool {
		if _, err := w.Next(context.Background(), 100, 10*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		return w.gen[0] != 0
	})
	ops := make([]Op, MaxBatchOps)
	for written := 0; written <= relayEntries+MaxBatchOps; written += len(ops) {
		for i := range ops {
			ops[i] = Op{Key: fmt.Sprintf("k%d", written+i), Value: "v"}
		}
		if _, errs := n1.srv.WriteBatch(context.Background(), ops, false, 0); errors.Join(errs...) != nil {
			t.Fatal(errors.Join(errs...))
		}
	}
	r := n1.srv.hub.relays[0]
	waitFor(t, 5*time.Second, "the relay's buffer moved past the watcher", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.base > w.pos[0]
	})
	if _, err := w.Next(context.Background(), 100, time.Second); !errors.Is(err, ErrSlowWatcher) {
		t.Fatalf("slow watcher: %v, want ErrSlowWatcher", err)
	}
	// Its positions resume it, reading the history directly.
	w2, err := n1.srv.Watch(context.Background(), WatchSpec{From: w.Positions()})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if got := collect(t, w2, relayEntries+MaxBatchOps, 10*time.Second); len(got) < relayEntries+MaxBatchOps {
		t.Errorf("resumed slow watcher got %d events, want at least %d", len(got), relayEntries+MaxBatchOps)
	}
}

// A replica that missed writes at the same epoch is caught up from the
// history: no partition copy is sent, and the copies end identical.
func TestTailCatchUp(t *testing.T) {
	const parts = 1
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2", "n3"},
		row:         primaryWithReplicas(1, []string{"n2", "n3"}, []string{"n2", "n3"}),
		replTimeout: 300 * time.Millisecond,
	})
	c.waitReady(t)
	n1, n3 := c.nodes["n1"], c.nodes["n3"]
	for i := range 50 {
		if _, err := write(t, n1, Op{Key: fmt.Sprint("before", i), Value: "v"}, 0); err != nil {
			t.Fatal(err)
		}
	}
	installs := len(n3.rec.matching("install"))
	n3.rec.setStall("replicate")
	if _, err := write(t, n1, Op{Key: "missed-0", Value: "v"}, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "n3 out of the in-sync set", func() bool { return !c.table.route(0).IsInSync("n3") })
	// Keep n3 out while more writes go by, a TTL and a delete among them.
	c.table.setAlive("n3", false)
	for i := 1; i < 200; i++ {
		op := Op{Key: fmt.Sprint("missed-", i), Value: "v"}
		switch i % 10 {
		case 3:
			op.TTLMillis = 60_000
		case 7:
			op = Op{Key: fmt.Sprint("before", i%50), Delete: true}
		}
		if _, err := write(t, n1, op, 0); err != nil {
			t.Fatal(err)
		}
	}
	n3.rec.unstall("replicate")
	c.table.setAlive("n3", true)
	waitFor(t, 10*time.Second, "n3 back in sync", func() bool { return c.table.route(0).IsInSync("n3") })
	if got := len(n3.rec.matching("install")); got != installs {
		t.Errorf("n3 received %d partition copies to catch up; the history should have been enough", got-installs)
	}
	if len(n3.rec.matching("copy-info")) == 0 {
		t.Errorf("the primary never asked n3 about its copy")
	}
	want, got := dumpPartition(t, n1.db, 0), dumpPartition(t, n3.db, 0)
	if want.Meta.Seq != got.Meta.Seq || want.Meta.Keys != got.Meta.Keys || !mapsEqual(want.Pairs, got.Pairs) {
		t.Errorf("after tail catch-up n3 has %+v (%d pairs), the primary %+v (%d pairs)", got.Meta, len(got.Pairs), want.Meta, len(want.Pairs))
	}
	// The history caught up too, so n3 could serve a watch as primary.
	a, _, err := n1.db.ReadLog(0, 0, want.Meta.Seq, 1<<20, 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := n3.db.ReadLog(0, 0, want.Meta.Seq, 1<<20, 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) {
		t.Errorf("history: primary %d entries, caught-up replica %d", len(a), len(b))
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A scan pages through every partition's keys in order, each page cut
// where every partition's part is complete, with nothing skipped or
// repeated across pages, and positions a watch can start from.
func TestScanPages(t *testing.T) {
	const parts = 4
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2"},
		row: func(p int) Route {
			if p%2 == 0 {
				return Route{Primary: "n1", Replicas: []string{"n2"}, InSync: []string{"n2"}, Epoch: 1}
			}
			return Route{Primary: "n2", Replicas: []string{"n1"}, InSync: []string{"n1"}, Epoch: 1}
		},
	})
	c.waitReady(t)
	n1 := c.nodes["n1"]
	var want []string
	for i := range 57 {
		k := fmt.Sprintf("s/%03d", i)
		if _, err := write(t, n1, Op{Key: k, Value: "v" + k}, 0); err != nil {
			t.Fatal(err)
		}
		want = append(want, k)
	}
	for _, k := range []string{"r/x", "t/x", "s"} {
		if _, err := write(t, n1, Op{Key: k, Value: "outside"}, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, limit := range []int{1, 7, 100} {
		for _, stale := range []bool{false, true} {
			var got []string
			spec := ScanSpec{Start: "s/", End: "s0", HasEnd: true, Limit: limit, Values: true, Stale: stale}
			for pages := 0; ; pages++ {
				if pages > 100 {
					t.Fatal("scan does not end")
				}
				page, err := n1.srv.Scan(context.Background(), spec)
				if err != nil {
					t.Fatal(err)
				}
				if len(page.Items) > limit || len(page.Positions) != parts {
					t.Fatalf("page of %d items (limit %d), %d positions", len(page.Items), limit, len(page.Positions))
				}
				for _, it := range page.Items {
					if it.Value != "v"+it.Key || it.Revision == 0 {
						t.Errorf("item %+v", it)
					}
					got = append(got, it.Key)
				}
				if !page.More {
					break
				}
				spec.After, spec.HasAfter = page.Items[len(page.Items)-1].Key, true
			}
			if !slices.Equal(got, want) {
				t.Errorf("limit %d stale %v: scanned %v", limit, stale, got)
			}
		}
	}
}
