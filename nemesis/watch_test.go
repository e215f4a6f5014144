package nemesis

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/internal/history"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// The watchers of a run (GET /kv/watch).
const (
	// watcherCount watchers follow every run of the register and scan
	// loads.
	watcherCount = 3
	// watchProgress is the progress interval they ask for.
	watchProgress = 500 * time.Millisecond
	// watchIdle: a stream that shows nothing for this long (it shows a
	// progress event every watchProgress when nothing changes) goes
	// through a node that is away (paused, cut off): the watcher
	// reconnects elsewhere.
	watchIdle = 4 * time.Second
	// A watcher also reconnects on purpose after this long on a node,
	// to exercise resuming.
	watchStayMin, watchStayMax = 2 * time.Second, 4 * time.Second
	// watchCatchUp bounds how long after the final reads every watcher
	// may take to show the last change of every key.
	watchCatchUp = 20 * time.Second
)

// watchSet is the watchers of a run. Each watches a prefix from a token
// obtained before the workload starts (a scan's, or the first event of a
// since=now watch), and whenever its stream ends, errs, stalls or has
// lasted a few seconds, resumes through another node with the id of the
// last event it processed (Last-Event-ID). After the reads that follow
// convergence (every load's settled) each must catch up with the last
// change of every key.
//
// Once they have caught up, history.CheckWatches checks that every
// acknowledged write is in every stream exactly once with its revision
// and value, that every change is a write that was attempted and not
// refused (or an expiry, not before its deadline), in revision order per
// key and partition and in real-time order, the same in every stream,
// ending in the state of the final reads, and that no stream was cut or
// asked to resync.
type watchSet struct {
	r        *run
	watchers []*watcher
	stopOnce sync.Once
}

// watcher is one watcher; mu guards what it received.
type watcher struct {
	r      *run
	hc     *http.Client
	rng    *rand.Rand
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	w    history.Watch
	last string // the id of the last event processed ("": none yet)
	node string // the node of the last connection
	// revs is the highest revision shown per key, and lastType the type
	// of its last change; progressAt when the last progress event came
	// (recorder time).
	revs       map[string]uint64
	lastType   map[string]string
	progressAt int64
	// resyncs counts the resync_required events since the last change;
	// broken is set when the watcher gave up after too many.
	resyncs int
	broken  bool
	// started is closed once the watch's start token is known (sinceNow:
	// it comes with the first event).
	started  chan struct{}
	sinceNow bool
}

// startWatchers starts n watchers, watcher i of prefixes[i%len(prefixes)],
// and returns once each has its start token.
func startWatchers(r *run, n int, prefixes ...string) *watchSet {
	ws := &watchSet{r: r}
	r.t.Cleanup(ws.stop)
	for i := range n {
		tr := &http.Transport{
			DialContext:           (&net.Dialer{Timeout: time.Second}).DialContext,
			ResponseHeaderTimeout: opTimeout,
			DisableKeepAlives:     true,
		}
		ctx, cancel := context.WithCancel(context.Background())
		w := &watcher{r: r, hc: &http.Client{Transport: tr}, rng: rand.New(rand.NewPCG(uint64(r.seed), uint64(1000+i))),
			ctx: ctx, cancel: cancel, done: make(chan struct{}), revs: map[string]uint64{}, lastType: map[string]string{},
			started: make(chan struct{}), w: history.Watch{ID: i + 1, Prefix: prefixes[i%len(prefixes)]}}
		ws.watchers = append(ws.watchers, w)
		if i%2 == 0 {
			// From a scan's token, through one node, then resumed
			// through another.
			node := r.members()[i%len(r.members())]
			w.scanToken(node)
			w.node = node.ID
		} else {
			w.sinceNow = true
			w.w.From = "since=now (its first event's id)"
		}
		go w.run()
	}
	deadline := time.After(20 * time.Second)
	for _, w := range ws.watchers {
		select {
		case <-w.started:
		case <-deadline:
			r.t.Fatalf("watch: watcher %d got no start token within 20 s (connections: %+v)", w.w.ID, w.conns())
		}
	}
	for _, w := range ws.watchers {
		w.mu.Lock()
		r.logf("watch: watcher %d of prefix %q starts from %s, token %s", w.w.ID, w.w.Prefix, w.w.From, w.last)
		w.mu.Unlock()
	}
	return ws
}

// scanToken takes the watch's start token from a one-page scan of its
// prefix through node, retrying for up to 20 s.
func (w *watcher) scanToken(node *tc.Node) {
	r := w.r
	deadline := time.Now().Add(20 * time.Second)
	for {
		call := r.rec.Now()
		page, status, err := scanPage(w.ctx, r.kv.hc, node, url.Values{"prefix": {w.w.Prefix}, "limit": {"1"}})
		ret := r.rec.Now()
		if err == nil && status == http.StatusOK && page.Token != "" {
			w.w.TokenCall, w.w.TokenReturn = call, ret
			w.w.From = "the token of a scan through " + node.ID
			w.last = page.Token
			close(w.started)
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("watch: no scan token through %s within 20 s: status %d, %v", node.ID, status, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (w *watcher) conns() []history.WatchConn {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.w.Conns)
}

// run connects, through another node each time, until stopped or broken
// (resyncs).
func (w *watcher) run() {
	defer close(w.done)
	for w.ctx.Err() == nil {
		if !w.connect(w.pick()) {
			return
		}
	}
}

// pick returns a client target other than the last connection's node.
func (w *watcher) pick() *tc.Node {
	w.mu.Lock()
	last := w.node
	w.mu.Unlock()
	nodes := w.r.clientTargets()
	var others []*tc.Node
	for _, n := range nodes {
		if n.ID != last {
			others = append(others, n)
		}
	}
	if len(others) == 0 {
		others = nodes
	}
	return others[w.rng.IntN(len(others))]
}

// connect follows one stream through node until it ends, and reports
// whether to go on.
func (w *watcher) connect(node *tc.Node) bool {
	r := w.r
	ctx, cancel := context.WithCancel(w.ctx)
	defer cancel()
	var whyMu sync.Mutex
	why := ""
	end := func(reason string) {
		whyMu.Lock()
		if why == "" {
			why = reason
		}
		whyMu.Unlock()
		cancel()
	}
	idle := time.AfterFunc(watchIdle, func() { end(fmt.Sprintf("nothing for %s: reconnecting elsewhere", watchIdle)) })
	defer idle.Stop()
	stay := watchStayMin + time.Duration(w.rng.Int64N(int64(watchStayMax-watchStayMin)))
	deliberate := time.AfterFunc(stay, func() { end("reconnecting on purpose") })
	defer deliberate.Stop()

	w.mu.Lock()
	since := w.last
	ci := len(w.w.Conns)
	w.w.Conns = append(w.w.Conns, history.WatchConn{Node: node.ID, Since: since, Start: r.rec.Now()})
	w.node = node.ID
	w.mu.Unlock()
	finish := func(reason string) {
		whyMu.Lock()
		if why != "" {
			reason = why
		}
		whyMu.Unlock()
		if w.ctx.Err() != nil {
			reason = "the run is over"
		}
		w.mu.Lock()
		c := &w.w.Conns[ci]
		c.End, c.Ended = r.rec.Now(), reason
		w.mu.Unlock()
	}

	q := url.Values{"prefix": {w.w.Prefix}, "progress": {watchProgress.String()}}
	if since == "" {
		q.Set("since", "now")
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+node.KV+"/kv/watch?"+q.Encode(), nil)
	if since != "" {
		req.Header.Set("Last-Event-ID", since)
	}
	resp, err := w.hc.Do(req)
	if err != nil {
		finish(err.Error())
		return w.pause(100 * time.Millisecond)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		msg := fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		finish(msg)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			r.fail("watch: watcher %d: watch through %s from %s refused: %s", w.w.ID, node.ID, since, msg)
			return false
		}
		return w.pause(200 * time.Millisecond)
	}
	br := bufio.NewReader(resp.Body)
	var id, data string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			finish("stream ended: " + err.Error())
			return w.pause(20 * time.Millisecond)
		}
		idle.Reset(watchIdle)
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if data != "" && !w.handle(ci, node, id, data) {
				finish("stream ended by the server")
				return false
			}
			id, data = "", ""
		case strings.HasPrefix(line, "id:"):
			id = strings.TrimPrefix(strings.TrimPrefix(line, "id:"), " ")
		case strings.HasPrefix(line, "data:"):
			if data != "" {
				data += "\n"
			}
			data += strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")
		}
	}
}

// pause waits d unless stopped, and reports whether to go on.
func (w *watcher) pause(d time.Duration) bool {
	select {
	case <-w.ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// maxResyncs is how many resync_required in a row (with no change in
// between) a watcher resumes after, from its last event's id through
// another node, before it gives up: a resync is a failure, but resuming
// tells whether the history was really gone or the node that asked for it
// was wrong.
const maxResyncs = 3

// handle processes one complete event and reports whether the watcher
// goes on (false once it gives up after resyncs).
func (w *watcher) handle(ci int, node *tc.Node, id, data string) bool {
	r := w.r
	var ev struct {
		Type      string  `json:"type"`
		Key       string  `json:"key"`
		Value     *string `json:"value"`
		Revision  uint64  `json:"revision"`
		Token     string  `json:"token"`
		Partition *int    `json:"partition"`
		Reason    string  `json:"reason"`
		Error     string  `json:"error"`
	}
	if err := json.Unmarshal([]byte(data), &ev); err != nil {
		r.fail("watch: watcher %d: undecodable event through %s: %q: %v", w.w.ID, node.ID, data, err)
		return true
	}
	e := history.WatchEvent{Type: ev.Type, Key: ev.Key, Revision: ev.Revision, ID: id, Reason: ev.Reason, Error: ev.Error, At: r.rec.Now(), Conn: ci}
	if ev.Value != nil {
		e.Value = *ev.Value
	}
	if ev.Partition != nil {
		e.Partition = *ev.Partition
	}
	if id == "" {
		e.Token = ev.Token
	}
	switch ev.Type {
	case history.EventSet, history.EventDelete, history.EventExpire, history.EventProgress, history.EventCut, history.EventResync:
	default:
		r.fail("watch: watcher %d: event of an unknown type through %s: %s", w.w.ID, node.ID, data)
	}
	if id != "" && ev.Token != "" && id != ev.Token {
		r.fail("watch: watcher %d: event through %s has id %s but token %s: %s", w.w.ID, node.ID, id, ev.Token, data)
	}
	if ev.Type == history.EventSet && ev.Value == nil {
		r.fail("watch: watcher %d: set event without a value through %s: %s", w.w.ID, node.ID, data)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sinceNow && w.last == "" {
		// The start token of a since=now watch.
		w.w.TokenCall, w.w.TokenReturn = w.w.Conns[ci].Start, e.At
		if ev.Type != history.EventProgress || id == "" {
			r.fail("watch: watcher %d: a since=now watch through %s began with %s, not a progress event with an id", w.w.ID, node.ID, data)
		}
	}
	w.w.Events = append(w.w.Events, e)
	w.w.Conns[ci].Events++
	if id != "" {
		if w.last == "" {
			close(w.started)
		}
		w.last = id
	}
	switch ev.Type {
	case history.EventSet, history.EventDelete, history.EventExpire:
		w.revs[ev.Key] = max(w.revs[ev.Key], ev.Revision)
		w.lastType[ev.Key] = ev.Type
		w.resyncs = 0
	case history.EventProgress:
		w.progressAt = e.At
	case history.EventResync:
		if w.resyncs++; w.resyncs > maxResyncs {
			w.broken = true
			r.logf("watch: watcher %d: %s through %s: the %d-th in a row, giving up", w.w.ID, e, node.ID, w.resyncs)
			return false
		}
		r.logf("watch: watcher %d: %s through %s: resuming from %s through another node (a failure all the same)", w.w.ID, e, node.ID, w.last)
	case history.EventCut:
		r.logf("watch: watcher %d: %s through %s: resuming from its token", w.w.ID, e, node.ID)
	}
	return true
}

// catchUp waits until every watcher has shown, for every key of finals
// (reads after every write) that it watches, the final read's revision
// (or, for a key the final reads found absent, a delete or an expiry as
// its last change), and a progress event after that; then stops them and
// records what they received.
func (ws *watchSet) catchUp(finals []history.Op) {
	r := ws.r
	start := time.Now()
	var wg sync.WaitGroup
	for _, w := range ws.watchers {
		wg.Go(func() { w.catchUp(finals) })
	}
	wg.Wait()
	ws.stop()
	r.logf("watch: watchers caught up and stopped in %s", time.Since(start).Round(time.Millisecond))
}

func (w *watcher) catchUp(finals []history.Op) {
	r := w.r
	need := map[string]uint64{}
	gone := map[string]bool{}
	for _, f := range finals {
		switch {
		case f.Outcome != history.OK || !strings.HasPrefix(f.Key, w.w.Prefix):
		case f.Found:
			need[f.Key] = max(need[f.Key], f.Revision)
		default:
			gone[f.Key] = true
		}
	}
	deadline := time.Now().Add(watchCatchUp)
	var caught int64
	for {
		w.mu.Lock()
		var behind []string
		for _, k := range sortedKeys(need) {
			if w.revs[k] < need[k] {
				behind = append(behind, fmt.Sprintf("%s at revision %d (final %d)", k, w.revs[k], need[k]))
			}
		}
		for _, k := range sortedKeys(gone) {
			if _, found := need[k]; !found && w.lastType[k] == history.EventSet {
				behind = append(behind, fmt.Sprintf("%s set at revision %d (final: absent)", k, w.revs[k]))
			}
		}
		if len(behind) == 0 && caught == 0 {
			caught = r.rec.Now()
		}
		done := w.broken || (caught != 0 && w.progressAt > caught)
		conn := ""
		if n := len(w.w.Conns); n > 0 {
			conn = fmt.Sprintf("%+v", w.w.Conns[n-1])
		}
		w.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			r.fail("watch: watcher %d did not catch up within %s of the final reads: %s behind; no progress event after; last connection %s",
				w.w.ID, watchCatchUp, strings.Join(behind, ", "), conn)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends every watcher and records what each received.
func (ws *watchSet) stop() {
	ws.stopOnce.Do(func() {
		for _, w := range ws.watchers {
			w.cancel()
		}
		for _, w := range ws.watchers {
			<-w.done
			w.mu.Lock()
			ws.r.rec.AddWatch(w.w)
			w.mu.Unlock()
		}
	})
}

// check checks what the watchers received; finals are the reads after
// every write.
func (ws *watchSet) check(h history.History, finals []history.Op) {
	r := ws.r
	rep := history.CheckWatches(h, finals, history.WatchOptions{Partitions: r.partitionsOf(h.Keys()), Bound: ttlBound})
	for i, p := range rep.Problems {
		if i == maxProblems {
			r.fail("watch: ... and %d more watch violations (all in the saved history)", len(rep.Problems)-maxProblems)
			break
		}
		r.fail("watch: %s", p)
	}
	if rep.OK() {
		r.logf("watch: %d watchers showed every one of %d acknowledged writes once, in order, as each other and the final reads (%d changes, %d unknown-outcome writes shown applied and %d not; %d connections, %d resumed from a token)",
			len(h.Watches), rep.Acked, rep.Changes, rep.UnknownSeen, rep.UnknownUnseen, rep.Conns, rep.Resumed)
	}
}

// partitionsOf asks which partition holds each key (the keys it cannot
// learn are left out).
func (r *run) partitionsOf(keys []string) map[string]int {
	out := map[string]int{}
	members := r.members()
	for _, k := range keys {
		for _, n := range members {
			if !n.Running() || n.Paused() {
				continue
			}
			p, err := tc.PartitionOf(n, k)
			if err != nil {
				continue
			}
			if num, err := strconv.Atoi(strings.TrimPrefix(p.ID, "partition-")); err == nil {
				out[k] = num
			}
			break
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// scanAnswer is one page of GET /kv/scan.
type scanAnswer struct {
	Items []struct {
		Key      string  `json:"key"`
		Value    *string `json:"value"`
		Revision uint64  `json:"revision"`
	} `json:"items"`
	Count      int    `json:"count"`
	NextCursor string `json:"next_cursor"`
	Token      string `json:"token"`
	Code       string `json:"code"`
	Error      string `json:"error"`
}

// scanPage asks node for one page of a scan: q holds its parameters.
func scanPage(ctx context.Context, hc *http.Client, node *tc.Node, q url.Values) (scanAnswer, int, error) {
	var out scanAnswer
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+node.KV+"/kv/scan?"+q.Encode(), nil)
	resp, err := hc.Do(req)
	if err != nil {
		return out, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return out, resp.StatusCode, err
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return out, resp.StatusCode, fmt.Errorf("answer %q: %v", body, err)
	}
	return out, resp.StatusCode, nil
}
