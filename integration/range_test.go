package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// watchStream reads one SSE watch in the background.
type watchStream struct {
	mu     sync.Mutex
	events []map[string]any
	ids    []string
	done   chan struct{}
	cancel context.CancelFunc
}

func startWatch(t *testing.T, addr, query, lastID string) *watchStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/kv/watch?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("watch via %s: %v", addr, err)
	}
	if resp.StatusCode != 200 {
		cancel()
		t.Fatalf("watch via %s: status %d", addr, resp.StatusCode)
	}
	w := &watchStream{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(w.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		id := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				id = line[4:]
			case strings.HasPrefix(line, "data: "):
				var ev map[string]any
				if json.Unmarshal([]byte(line[6:]), &ev) == nil {
					w.mu.Lock()
					w.events = append(w.events, ev)
					w.ids = append(w.ids, id)
					w.mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *watchStream) stop() {
	w.cancel()
	<-w.done
}

// changes returns the stream's set/delete events as "key=value@revision"
// ("key=-@revision" for a delete), with the id after each.
func (w *watchStream) changes() ([]string, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out, ids []string
	for i, ev := range w.events {
		switch ev["type"] {
		case "set":
			out = append(out, fmt.Sprintf("%v=%v@%v", ev["key"], ev["value"], ev["revision"]))
		case "delete", "expire":
			out = append(out, fmt.Sprintf("%v=-@%v", ev["key"], ev["revision"]))
		default:
			continue
		}
		ids = append(ids, w.ids[i])
	}
	return out, ids
}

func (w *watchStream) terminal() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range w.events {
		if t := ev["type"]; t == "resync_required" || t == "cut" {
			return fmt.Sprint(ev)
		}
	}
	return ""
}

// scanKeys pages through prefix via addr and returns the keys and token.
func scanKeys(t *testing.T, addr, prefix string, limit int) ([]string, string, error) {
	var keys []string
	cursor, token := "", ""
	for {
		q := fmt.Sprintf("/kv/scan?prefix=%s&limit=%d&values=false", url.QueryEscape(prefix), limit)
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		r, err := tc.Get(addr, q)
		if err != nil {
			return nil, "", err
		}
		if r.Status != 200 {
			return nil, "", fmt.Errorf("scan via %s: %d %s", addr, r.Status, r.Body)
		}
		var page struct {
			Items []struct {
				Key string `json:"key"`
			} `json:"items"`
			NextCursor string `json:"next_cursor"`
			Token      string `json:"token"`
		}
		if err := r.JSON(&page); err != nil {
			return nil, "", err
		}
		if token == "" {
			token = page.Token
		}
		for _, it := range page.Items {
			keys = append(keys, it.Key)
		}
		if page.NextCursor == "" {
			return keys, token, nil
		}
		cursor = page.NextCursor
	}
}

// writeRetrying sets key through addr, retrying while the cluster fails
// over (503 unavailable: not applied); it returns the revision.
func writeRetrying(t *testing.T, addr, key, value string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := tc.Set(context.Background(), addr, key, value)
		if err == nil && r.Status == 200 {
			return fmt.Sprint(r.Map()["revision"])
		}
		if err == nil && r.Map()["code"] == "outcome_unknown" {
			t.Fatalf("set %s: outcome unknown; this test needs definite answers", key)
		}
		if time.Now().After(deadline) {
			t.Fatalf("set %s via %s: %v %d %s", key, addr, err, r.Status, r.Body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestScanAndWatchThreeNodes: on three real nodes, a scan through any
// node returns every key of its range in order; a watch started from the
// scan's token delivers exactly the later changes, through a SIGKILL of a
// partition's primary; a watch resumed through another node with
// Last-Event-ID delivers exactly what followed that event.
func TestScanAndWatchThreeNodes(t *testing.T) {
	t.Parallel()
	c := tc.New(t, binary, 3, tc.Options{})
	c.Start()
	c.WaitHealthy(40*time.Second, 3, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]

	var want []string
	for i := range 120 {
		k := fmt.Sprintf("item/%03d", i)
		writeRetrying(t, n1.KV, k, "v0")
		want = append(want, k)
	}
	writeRetrying(t, n1.KV, "itemz", "outside the prefix")
	for _, n := range c.Nodes {
		got, _, err := scanKeys(t, n.KV, "item/", 17)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("scan via %s: %v (err %v), want the 120 keys in order", n.ID, got, err)
		}
	}
	_, token, err := scanKeys(t, n3.KV, "item/", 50)
	if err != nil {
		t.Fatal(err)
	}

	// Kill the primary of item/000's partition, but watch through a node
	// that stays up.
	p, err := tc.PartitionOf(n1, "item/000")
	if err != nil {
		t.Fatal(err)
	}
	victim := c.Node(p.Primary)
	watchVia, writeVia := n1, n2
	for _, n := range c.Nodes {
		if n != victim {
			watchVia = n
		}
	}
	for _, n := range c.Nodes {
		if n != victim && n != watchVia {
			writeVia = n
		}
	}
	w := startWatch(t, watchVia.KV, "prefix=item/&progress=500ms&since="+url.QueryEscape(token), "")
	var wantEvents []string
	for i := range 30 {
		k := fmt.Sprintf("item/%03d", i)
		rev := writeRetrying(t, writeVia.KV, k, "v1")
		wantEvents = append(wantEvents, fmt.Sprintf("%s=v1@%s", k, rev))
	}
	victim.Kill()
	// Writes sent while the primary dies may end outcome_unknown; this
	// test wants definite answers, so it writes once every partition has
	// failed over. The watch keeps running through the failover.
	tc.Eventually(t, 30*time.Second, "every partition failed over from "+victim.ID, func() error {
		r, err := tc.Get(writeVia.HTTP, "/partitions")
		if err != nil {
			return err
		}
		var table struct {
			Partitions []struct {
				Primary string `json:"primary_node"`
			} `json:"partitions"`
		}
		if err := r.JSON(&table); err != nil {
			return err
		}
		for i, row := range table.Partitions {
			if row.Primary == victim.ID || row.Primary == "" {
				return fmt.Errorf("partition %d primary %q", i, row.Primary)
			}
		}
		return nil
	})
	for i := range 30 {
		k := fmt.Sprintf("item/%03d", i)
		rev := writeRetrying(t, writeVia.KV, k, "v2")
		wantEvents = append(wantEvents, fmt.Sprintf("%s=v2@%s", k, rev))
	}
	sortByKeyThenRevision := func(s []string) []string {
		s = slices.Clone(s)
		slices.Sort(s)
		return s
	}
	tc.Eventually(t, 30*time.Second, "the watch delivered every write after the scan", func() error {
		if term := w.terminal(); term != "" {
			t.Fatalf("the watch ended: %s", term)
		}
		got, _ := w.changes()
		if len(got) < len(wantEvents) {
			return fmt.Errorf("%d of %d events", len(got), len(wantEvents))
		}
		if !slices.Equal(sortByKeyThenRevision(got), sortByKeyThenRevision(wantEvents)) {
			t.Fatalf("events:\n got %v\nwant %v", got, wantEvents)
		}
		return nil
	})
	// Per key, in revision order: v1 before v2.
	got, ids := w.changes()
	seen := map[string]string{}
	for _, e := range got {
		k := e[:strings.Index(e, "=")]
		if seen[k] != "" && !strings.Contains(seen[k], "=v1@") {
			t.Errorf("%s after %s", e, seen[k])
		}
		seen[k] = e
	}

	// Resume through the third node from the middle of the stream.
	mid := len(got) / 2
	resumeVia := writeVia
	w2 := startWatch(t, resumeVia.KV, "prefix=item/&progress=500ms", ids[mid])
	tc.Eventually(t, 20*time.Second, "the resumed watch caught up", func() error {
		again, _ := w2.changes()
		if len(again) < len(got)-mid-1 {
			return fmt.Errorf("%d of %d", len(again), len(got)-mid-1)
		}
		return nil
	})
	time.Sleep(time.Second) // nothing more may come
	again, _ := w2.changes()
	// Positions only grow along a stream, so what follows an event's id
	// is exactly the rest of the stream, each event once.
	if !slices.Equal(sortByKeyThenRevision(again), sortByKeyThenRevision(got[mid+1:])) {
		t.Errorf("resumed watch via %s:\n got %v\nwant %v", resumeVia.ID, again, got[mid+1:])
	}

	victim.Start()
	c.WaitHealthy(60*time.Second, 3, 3)
	all, _, err := scanKeys(t, victim.KV, "item/", 1000)
	if err != nil || !slices.Equal(all, want) {
		t.Errorf("scan via the restarted node: %v, %v", all, err)
	}
}
