package kvapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/apitest"
)

type scanPage struct {
	Items []struct {
		Key      string  `json:"key"`
		Value    *string `json:"value"`
		Revision uint64  `json:"revision"`
	} `json:"items"`
	Count      int    `json:"count"`
	NextCursor string `json:"next_cursor"`
	Token      string `json:"token"`
}

func scan(tb testing.TB, c *http.Client, base, query string) scanPage {
	tb.Helper()
	r := doReq(tb, c, "GET", base+"/kv/scan?"+query, nil)
	if r.Status != http.StatusOK {
		tb.Fatalf("scan %s: %s", query, r)
	}
	var p scanPage
	if err := json.Unmarshal(r.Body, &p); err != nil {
		tb.Fatalf("scan body %q: %v", r.Body, err)
	}
	if p.Count != len(p.Items) {
		tb.Errorf("count %d for %d items", p.Count, len(p.Items))
	}
	return p
}

// scanAll pages through a range and returns the keys and the token.
func scanAll(tb testing.TB, c *http.Client, base, query string) ([]string, string) {
	tb.Helper()
	var keys []string
	token := ""
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 1000 {
			tb.Fatal("scan does not end")
		}
		q := query
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		p := scan(tb, c, base, q)
		if token == "" {
			token = p.Token
		} else if p.Token != token {
			tb.Errorf("page %d has token %q, the first page %q: the token is the first page's", pages, p.Token, token)
		}
		for _, it := range p.Items {
			keys = append(keys, it.Key)
		}
		if p.NextCursor == "" {
			return keys, token
		}
		cursor = p.NextCursor
	}
}

func TestScan(t *testing.T) {
	n, c := singleNode(t, testParts)
	var users []string
	for i := range 25 {
		k := fmt.Sprintf("user:%02d", i)
		users = append(users, k)
		if r := kvSet(t, c, n.url, k, "v"+k); r.Status != http.StatusOK {
			t.Fatal(r)
		}
	}
	for _, k := range []string{"user", "usera", "admin:1", "user;"} {
		kvSet(t, c, n.url, k, "x")
	}
	tests := []struct {
		name  string
		query string
		want  []string
	}{
		{"prefix, default limit", "prefix=user:", users},
		{"prefix in pages of 4", "prefix=user:&limit=4", users},
		{"pages of 1 without values", "prefix=user:&limit=1&values=false", users},
		{"start and end", "start=user:05&end=user:08", users[5:8]},
		{"start only", "start=user:2", append(slices.Clone(users[20:]), "user;", "usera")},
		{"stale", "prefix=user:&consistency=stale&limit=7", users},
		{"empty range", "prefix=nothing", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, token := scanAll(t, c, n.url, tt.query)
			if !slices.Equal(got, tt.want) {
				t.Errorf("scan %s = %v, want %v", tt.query, got, tt.want)
			}
			if token == "" {
				t.Errorf("no token")
			}
		})
	}
	p := scan(t, c, n.url, "prefix=user:&limit=2&values=false")
	if p.Items[0].Value != nil || p.Items[0].Revision == 0 {
		t.Errorf("values=false item %+v", p.Items[0])
	}
	p = scan(t, c, n.url, "prefix=user:&limit=2")
	if p.Items[0].Value == nil || *p.Items[0].Value != "vuser:00" {
		t.Errorf("item %+v", p.Items[0])
	}
}

func TestScanBadInput(t *testing.T) {
	n, c := singleNode(t, testParts)
	kvSet(t, c, n.url, "a", "1")
	kvSet(t, c, n.url, "b", "1")
	cur := scan(t, c, n.url, "prefix=&limit=1").NextCursor
	otherLayout := encodeCursor(layoutHash("another-cluster", testParts), rangeHash("", "", false), cursor{last: "a"})
	tests := []struct {
		name   string
		query  string
		status int
		code   string
	}{
		{"limit 0", "limit=0", 400, errcode.InvalidLimit},
		{"limit over the maximum", "limit=10001", 400, errcode.InvalidLimit},
		{"limit not a number", "limit=ten", 400, errcode.InvalidLimit},
		{"prefix with start", "prefix=a&start=b", 400, errcode.InvalidRange},
		{"start after end", "start=b&end=a", 400, errcode.InvalidRange},
		{"prefix not UTF-8", "prefix=%ff%fe", 400, errcode.InvalidKey},
		{"end not UTF-8", "end=%c3", 400, errcode.InvalidKey},
		{"prefix too long", "prefix=" + strings.Repeat("k", engine.MaxKeyBytes+1), 413, errcode.KeyTooLarge},
		{"malformed cursor", "cursor=%21%21", 400, errcode.InvalidCursor},
		{"cursor of junk base64", "cursor=QUJD", 400, errcode.InvalidCursor},
		{"cursor for another range", "prefix=b&cursor=" + url.QueryEscape(cur), 400, errcode.InvalidCursor},
		{"cursor from another cluster", "cursor=" + otherLayout, 400, errcode.InvalidCursor},
		{"values not a boolean", "values=maybe", 400, errcode.InvalidQuery},
		{"bad consistency", "consistency=eventual", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			apitest.CheckError(t, doReq(t, c, "GET", n.url+"/kv/scan?"+tt.query, nil), tt.status, tt.code)
		})
	}
	// The good cursor still works after all that.
	if p := scan(t, c, n.url, "prefix=&limit=1&cursor="+url.QueryEscape(cur)); len(p.Items) != 1 || p.Items[0].Key != "b" {
		t.Errorf("second page = %+v", p)
	}
}

// sseEvent is one server-sent event.
type sseEvent struct {
	ID   string
	Data map[string]any
}

// sseStream reads a watch's events in the background.
type sseStream struct {
	resp   *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

func openWatch(tb testing.TB, c *http.Client, base, query, lastID string) (*sseStream, apiResp) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/kv/watch?"+query, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	sc := &http.Client{Transport: c.Transport} // no overall timeout: a stream
	resp, err := sc.Do(req)
	if err != nil {
		cancel()
		tb.Fatalf("watch %s: %v", query, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel()
		defer resp.Body.Close()
		var b strings.Builder
		sr := bufio.NewScanner(resp.Body)
		for sr.Scan() {
			b.WriteString(sr.Text())
		}
		return nil, apiResp{Status: resp.StatusCode, CType: resp.Header.Get("Content-Type"), Body: []byte(b.String())}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		tb.Errorf("watch Content-Type = %q", ct)
	}
	s := &sseStream{resp: resp, events: make(chan sseEvent, 1000), cancel: cancel}
	go func() {
		defer close(s.events)
		sr := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sr.Scan() {
			line := sr.Text()
			switch {
			case line == "":
				if ev.Data != nil {
					s.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.ID = line[4:]
			case strings.HasPrefix(line, "data: "):
				if err := json.Unmarshal([]byte(line[6:]), &ev.Data); err != nil {
					tb.Errorf("event data %q: %v", line, err)
				}
			}
		}
	}()
	tb.Cleanup(s.close)
	return s, apiResp{Status: 200}
}

func (s *sseStream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the next event that is not a progress event (or fails).
func (s *sseStream) next(tb testing.TB) sseEvent {
	tb.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				tb.Fatal("the watch stream ended")
			}
			if ev.Data["type"] != "progress" {
				return ev
			}
		case <-timeout:
			tb.Fatal("no event in 10s")
		}
	}
}

// first returns the stream's first event, which is a progress event.
func (s *sseStream) first(tb testing.TB) sseEvent {
	tb.Helper()
	select {
	case ev := <-s.events:
		if ev.Data["type"] != "progress" || ev.ID == "" || ev.Data["token"] != ev.ID {
			tb.Fatalf("first event %+v, want a progress event with its token as id", ev)
		}
		return ev
	case <-time.After(10 * time.Second):
		tb.Fatal("no first event")
	}
	return sseEvent{}
}

func describe(ev sseEvent) string {
	v, _ := ev.Data["value"].(string)
	return fmt.Sprintf("%v %v=%s@%v", ev.Data["type"], ev.Data["key"], v, ev.Data["revision"])
}

// TestWatchStream: the stream delivers sets, deletes and expiries of its
// range with revisions, resumes exactly after Last-Event-ID, and a scan's
// token starts a watch with no gap and no overlap.
func TestWatchStream(t *testing.T) {
	n, c := singleNode(t, testParts)
	kvSet(t, c, n.url, "app/a", "before")
	_, token := scanAll(t, c, n.url, "prefix=app/")
	// Changes after the scan: only these may be delivered.
	w, _ := openWatch(t, c, n.url, "prefix=app/&since="+token+"&progress=200ms", "")
	w.first(t)
	var want []string
	set := func(k, v string) {
		r := kvSet(t, c, n.url, k, v)
		if r.Status != http.StatusOK {
			t.Fatal(r)
		}
		want = append(want, fmt.Sprintf("set %s=%s@%v", k, v, r.Object(t)["revision"]))
	}
	set("app/a", "1")
	kvSet(t, c, n.url, "other/x", "not watched")
	set("app/b", "2")
	r := kvDelete(t, c, n.url, "app/a")
	want = append(want, fmt.Sprintf("delete app/a=@%v", r.Object(t)["revision"]))
	var got []sseEvent
	for range want {
		got = append(got, w.next(t))
	}
	var gotS []string
	for _, ev := range got {
		gotS = append(gotS, describe(ev))
		if ev.ID == "" {
			t.Errorf("event %+v has no id", ev)
		}
	}
	// Keys of different partitions may interleave either way.
	slices.Sort(gotS)
	slices.Sort(want)
	if !slices.Equal(gotS, want) {
		t.Errorf("events:\n got %v\nwant %v", gotS, want)
	}
	// Resume after the first event: the others again, nothing else.
	w2, _ := openWatch(t, c, n.url, "prefix=app/&progress=200ms", got[0].ID)
	w2.first(t)
	var again []string
	for range len(got) - 1 {
		again = append(again, describe(w2.next(t)))
	}
	wantAgain := []string{}
	for _, ev := range got[1:] {
		wantAgain = append(wantAgain, describe(ev))
	}
	slices.Sort(again)
	slices.Sort(wantAgain)
	if !slices.Equal(again, wantAgain) {
		t.Errorf("resumed:\n got %v\nwant %v", again, wantAgain)
	}
	// A key watch sees that key only; its token covers that key's
	// partition.
	kw, _ := openWatch(t, c, n.url, "key=app/k", "")
	kw.first(t)
	kvSet(t, c, n.url, "app/other", "x")
	kvSet(t, c, n.url, "app/k", "K")
	if ev := kw.next(t); !strings.HasPrefix(describe(ev), "set app/k=K@") {
		t.Errorf("key watch: %s", describe(ev))
	}
}

// An expiry is an event of its own.
func TestWatchExpiry(t *testing.T) {
	n, c := singleNode(t, testParts)
	w, _ := openWatch(t, c, n.url, "prefix=ttl/", "")
	w.first(t)
	r := doReq(t, c, "POST", n.url+"/kv/set", []byte(`{"key":"ttl/x","value":"v","ttl":"1s"}`))
	if r.Status != http.StatusOK {
		t.Fatal(r)
	}
	if ev := w.next(t); ev.Data["type"] != "set" || ev.Data["expires_at"] == nil {
		t.Errorf("set with a TTL: %+v", ev.Data)
	}
	if ev := w.next(t); ev.Data["type"] != "expire" || ev.Data["key"] != "ttl/x" {
		t.Errorf("after the deadline: %+v, want an expire event", ev.Data)
	}
}

func TestWatchBadInput(t *testing.T) {
	n, c := singleNodeWith(t, testParts, nil, func(o *engine.Options) { o.MaxWatchers = 2 })
	id, parts := n.eng.Layout()
	foreign := encodeToken(layoutHash("another-cluster", parts), map[int]uint64{0: 1})
	relaid := encodeToken(layoutHash(id, parts+1), map[int]uint64{0: 1})
	partial := encodeToken(layoutHash(id, parts), map[int]uint64{0: 1})
	tests := []struct {
		name   string
		query  string
		lastID string
		status int
		code   string
	}{
		{"malformed since", "since=%21%21", "", 400, errcode.InvalidToken},
		{"malformed Last-Event-ID", "", "not-a-token", 400, errcode.InvalidToken},
		{"a cursor is not a token", "since=" + encodeCursor(layoutHash(id, parts), 1, cursor{}), "", 400, errcode.InvalidToken},
		{"token from another cluster", "since=" + foreign, "", 400, errcode.InvalidToken},
		{"token from another layout", "since=" + relaid, "", 400, errcode.InvalidToken},
		{"token missing partitions of a prefix watch", "since=" + partial, "", 400, errcode.InvalidToken},
		{"key and prefix", "key=a&prefix=b", "", 400, errcode.InvalidRange},
		{"start and end", "start=a&end=b", "", 400, errcode.InvalidRange},
		{"prefix not UTF-8", "prefix=%ff", "", 400, errcode.InvalidKey},
		{"empty key", "key=", "", 400, errcode.MissingKey},
		{"progress too short", "progress=1ms", "", 400, errcode.InvalidQuery},
		{"progress not a duration", "progress=soon", "", 400, errcode.InvalidQuery},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, r := openWatch(t, c, n.url, tt.query, tt.lastID)
			apitest.CheckError(t, r, tt.status, tt.code)
		})
	}
	// The limit: two streams, the third refused with 503 until one ends.
	a, _ := openWatch(t, c, n.url, "", "")
	a.first(t)
	b, _ := openWatch(t, c, n.url, "", "")
	b.first(t)
	_, r := openWatch(t, c, n.url, "", "")
	apitest.CheckError(t, r, 503, errcode.TooManyWatchers)
	a.close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, r := openWatch(t, c, n.url, "", "")
		if s != nil {
			s.first(t)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no watch after one closed: %s", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// With KV auth on, a scan or a watch needs a token whose scope covers the
// whole range.
func TestRangeAuth(t *testing.T) {
	tokens := &tokenTable{tokens: map[string][]string{}}
	n, c := singleNodeAuth(t, testParts, tokens)
	users := tokens.add(t, "read:user:")
	tokens.mu.Lock()
	tokens.required = true
	tokens.mu.Unlock()
	tests := []struct {
		name, path string
		status     int
	}{
		{"scan inside the scope", "/kv/scan?prefix=user:1", 200},
		{"scan of the scope's prefix", "/kv/scan?prefix=user:", 200},
		{"scan of a range inside", "/kv/scan?start=user:a&end=user:b", 200},
		{"scan wider than the scope", "/kv/scan?prefix=user", 403},
		{"scan of everything", "/kv/scan", 403},
		{"range running past the scope", "/kv/scan?start=user:a&end=v", 403},
		{"range without an end", "/kv/scan?start=user:a", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := doAuth(t, c, "GET", n.url+tt.path, users, nil)
			if r.Status != tt.status {
				t.Errorf("%s: %s, want %d", tt.path, r, tt.status)
			}
		})
	}
	if _, r := openWatch(t, c, n.url, "prefix=admin", ""); r.Status != 401 {
		t.Errorf("watch without a token: %s", r)
	}
}

// The stream's own JSON writer agrees with encoding/json on every string
// a key or value can be, invalid UTF-8 included.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", "quote\"back\\slash", "\n\r\t\x00\x1f\x7f", "é日本\U0001F600",
		"\u2028 and \u2029", "bad \xff\xfe utf8", "<&>", strings.Repeat("x", 300) + "\x01"} {
		var got any
		if err := json.Unmarshal(appendJSONString(nil, s), &got); err != nil {
			t.Errorf("%q: %s is not JSON: %v", s, appendJSONString(nil, s), err)
			continue
		}
		var want any
		b, _ := json.Marshal(s)
		_ = json.Unmarshal(b, &want)
		if got != want {
			t.Errorf("%q decodes as %q, encoding/json's as %q", s, got, want)
		}
	}
}

// A stream's tokens decode to its positions as they change.
func TestStreamToken(t *testing.T) {
	pos := map[int]uint64{3: 7, 0: 1 << 40, 15: 0}
	st := newStreamState(42, pos)
	check := func() {
		t.Helper()
		got, err := decodeToken(string(st.token()), 42, 16)
		if err != nil || !maps.Equal(got, pos) {
			t.Fatalf("token decodes to %v, %v; want %v", got, err, pos)
		}
	}
	check()
	st.set(3, 9)
	pos[3] = 9
	check()
	st.set(4, 1) // not a partition of the stream: ignored
	check()
}
