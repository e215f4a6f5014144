package nemesis

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterkit/clusterkit/internal/history"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// opTimeout is the clients' per-request timeout. The nodes run with a
// shorter REQUEST_TIMEOUT (nodeEnv), so that a node normally answers 503
// unavailable before a client gives up.
const opTimeout = 3 * time.Second

// kvClient sends KV requests and records them in a history.
type kvClient struct {
	rec *history.Recorder
	hc  *http.Client
	// harnessErr reports answers that mean the test itself is wrong
	// (a 400, a missing route).
	harnessErr func(string)
}

func newKVClient(rec *history.Recorder, harnessErr func(string)) *kvClient {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &kvClient{rec: rec, hc: &http.Client{Transport: tr}, harnessErr: harnessErr}
}

func (k *kvClient) close() { k.hc.CloseIdleConnections() }

// do performs one operation through node and records it. value is the
// value to write (Write only).
func (k *kvClient) do(client int, node *tc.Node, kind history.Kind, key, value string) history.Op {
	return k.send(client, node, request{kind: kind, key: key, value: value})
}

// request is one KV operation with its options; the zero options are a
// plain set, delete or linearizable get.
type request struct {
	kind       history.Kind
	key, value string
	// ifRevision makes a write conditional on the key's revision (0:
	// the key must not exist).
	ifRevision *uint64
	ttl        time.Duration // set only
	// stale reads with consistency=stale (so does -nemesis.stale-reads,
	// but the history then records the read as linearizable).
	stale bool
}

// send performs one operation through node and records it.
func (k *kvClient) send(client int, node *tc.Node, r request) history.Op {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var req *http.Request
	base := "http://" + node.KV
	switch r.kind {
	case history.Write:
		body := map[string]any{"key": r.key, "value": r.value}
		if r.ifRevision != nil {
			body["if_revision"] = *r.ifRevision
		}
		if r.ttl != 0 {
			body["ttl"] = r.ttl.String()
		}
		b, _ := json.Marshal(body)
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, base+"/kv/set", bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
	case history.Delete:
		u := base + "/kv/delete?key=" + url.QueryEscape(r.key)
		if r.ifRevision != nil {
			u += fmt.Sprintf("&if_revision=%d", *r.ifRevision)
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	default:
		u := base + "/kv/get?key=" + url.QueryEscape(r.key)
		if r.stale || *flagStaleReads {
			u += "&consistency=stale"
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	}
	op := history.Op{Client: client, Kind: r.kind, Key: r.key, Node: node.ID, Stale: r.stale}
	switch r.kind {
	case history.Write:
		op.Value, op.TTL = r.value, r.ttl
		fallthrough
	case history.Delete:
		if r.ifRevision != nil {
			op.HasIfRevision, op.IfRevision = true, *r.ifRevision
		}
	}
	op.Call = k.rec.Now()
	resp, err := k.hc.Do(req)
	var body []byte
	status := 0
	if err == nil {
		status = resp.StatusCode
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	op.Return = k.rec.Now()
	classify(&op, status, body, err, k.rec, k.harnessErr)
	return k.rec.Add(op)
}

// answer is what classify reads from an answer's body.
type answer struct {
	Code            string  `json:"code"`
	Value           string  `json:"value"`
	Revision        uint64  `json:"revision"`
	Deleted         bool    `json:"deleted"`
	ExpiresAt       string  `json:"expires_at"`
	CurrentRevision *uint64 `json:"current_revision"`
	Exists          bool    `json:"exists"`
}

// classify sets the outcome of op from the HTTP answer (status 0: none),
// and what an OK answer reported: revision, deadline, for a delete whether
// it deleted anything, for a failed condition the key's state.
func classify(op *history.Op, status int, body []byte, err error, rec *history.Recorder, harnessErr func(string)) {
	var e answer
	jerr := json.Unmarshal(body, &e)
	var deadline int64
	if jerr == nil && e.ExpiresAt != "" {
		t, perr := time.Parse(time.RFC3339Nano, e.ExpiresAt)
		if perr != nil && harnessErr != nil {
			harnessErr(fmt.Sprintf("answer to %s: expires_at %q: %v", op, e.ExpiresAt, perr))
		}
		deadline = rec.Wall(t)
	}
	switch {
	case status == 0 && isDialError(err):
		// Nothing was sent: connection refused, or no connection in time.
		op.Outcome, op.Err = history.Failed, err.Error()
	case status == 0:
		op.Outcome, op.Err = history.Unknown, err.Error()
	case status == http.StatusOK && op.Kind != history.Read:
		// The answer's header says it was applied, even if the body was
		// cut short (its revision and deadline are then unknown).
		op.Outcome = history.OK
		if err != nil || jerr != nil {
			op.Partial, op.Err = true, fmt.Sprintf("200, body cut short: %v %v", err, jerr)
			break
		}
		op.Revision, op.Deadline, op.Found = e.Revision, deadline, op.Kind == history.Delete && e.Deleted
	case status == http.StatusOK && err == nil:
		op.Outcome, op.Found, op.Value, op.Revision, op.Deadline = history.OK, true, e.Value, e.Revision, deadline
	case status == http.StatusNotFound && op.Kind == history.Read && e.Code == "key_not_found" && err == nil:
		op.Outcome = history.OK
	case status == http.StatusConflict && e.Code == "condition_failed" && err == nil && e.CurrentRevision != nil:
		// Certainly not applied, and the answer shows the key's state.
		op.Outcome, op.CondFailed, op.Revision, op.Found = history.OK, true, *e.CurrentRevision, e.Exists
	case status == http.StatusServiceUnavailable && (e.Code == "unavailable" || e.Code == "not_ready" || e.Code == "not_enough_replicas"):
		// These three mean "not applied"; outcome_unknown does not.
		op.Outcome, op.Err = history.Failed, fmt.Sprintf("%d %s", status, bytes.TrimSpace(body))
	default:
		op.Outcome, op.Err = history.Unknown, fmt.Sprintf("%d %s (%v)", status, bytes.TrimSpace(body), err)
		if status >= 400 && status < 500 && harnessErr != nil {
			harnessErr(fmt.Sprintf("unexpected answer to %s: %s", op, op.Err))
		}
	}
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// workload runs concurrent clients on a few keys: each loops picking a
// random node, a random key and a random operation (set with a unique
// value, delete, linearizable get).
type workload struct {
	kv      *kvClient
	keys    []string
	targets func() []*tc.Node
	stop    chan struct{}
	wg      sync.WaitGroup
	values  *atomic.Int64
	// setP and deleteP are the shares of sets and of deletes among the
	// operations, the rest being gets (both 0: 45% and 5%).
	setP, deleteP float64
}

func (w *workload) start(clients int, seed int64) {
	w.stop = make(chan struct{})
	for i := range clients {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
		w.wg.Go(func() { w.client(rng) })
	}
}

func (w *workload) client(rng *rand.Rand) {
	setP, deleteP := w.setP, w.deleteP
	if setP == 0 && deleteP == 0 {
		setP, deleteP = 0.45, 0.05
	}
	id := w.kv.rec.NewClient()
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		nodes := w.targets()
		node := nodes[rng.IntN(len(nodes))]
		key := w.keys[rng.IntN(len(w.keys))]
		var op history.Op
		switch p := rng.Float64(); {
		case p < setP:
			op = w.kv.do(id, node, history.Write, key, fmt.Sprintf("v%d", w.values.Add(1)))
		case p < setP+deleteP:
			op = w.kv.do(id, node, history.Delete, key, "")
		default:
			op = w.kv.do(id, node, history.Read, key, "")
		}
		if op.Outcome == history.Unknown {
			// The operation stays pending forever: continue as a new
			// client, as clients are sequential.
			id = w.kv.rec.NewClient()
		}
		select {
		case <-w.stop:
			return
		case <-time.After(time.Duration(5+rng.IntN(20)) * time.Millisecond):
		}
	}
}

// halt stops the clients and waits for their operations in flight.
func (w *workload) halt() {
	if w.stop != nil {
		close(w.stop)
		w.wg.Wait()
		w.stop = nil
	}
}

// registerLoad is the default load: the workload above on r.keys; after
// healing a final read of every key (the scenario's extra keys too) and a
// final write to every workload key, and once settled a read of each
// again; checked for lost acknowledged writes and for linearizability.
//
// The scan load (newScanLoad) is this load on another key set, with
// scanners beside the clients.
type registerLoad struct {
	r      *run
	name   string // for messages
	w      *workload
	finals []history.Op
	// reads are the OK reads after convergence, after every write.
	reads []history.Op
	scans *scanSet // nil: no scans
}

func newRegisterLoad(r *run) load {
	for i := range r.p.keys {
		r.keys = append(r.keys, fmt.Sprintf("nemesis-%d-k%d", r.seed%100000, i))
	}
	return newRegisterLoadOn(r, "register")
}

// newRegisterLoadOn makes the register load on r.keys.
func newRegisterLoadOn(r *run, name string) *registerLoad {
	return &registerLoad{r: r, name: name, w: &workload{kv: r.kv, keys: r.keys, targets: r.clientTargets, values: &r.values}}
}

func (l *registerLoad) start(clients int, seed int64) {
	l.w.start(clients, seed)
	if l.scans != nil {
		l.scans.start(seed)
	}
}

func (l *registerLoad) halt() {
	l.w.halt()
	if l.scans != nil {
		l.scans.halt()
	}
}

func (l *registerLoad) all() []string { return append(slices.Clone(l.r.keys), l.r.extraKeys...) }

// final: a final read of every key (the lost-write check), then a final
// write to every workload key, each within 10 s of the last healing
// action.
func (l *registerLoad) final(deadline int64) {
	r := l.r
	all := l.all()
	finals := make([]history.Op, len(all))
	var wg sync.WaitGroup
	for i, key := range all {
		wg.Go(func() {
			op, err := r.finalOp(history.Read, key, deadline)
			finals[i] = op
			if err != nil {
				r.fail("final read of %s did not succeed within %s of healing: %v", key, finalDeadline, err)
				return
			}
			if i < len(r.keys) {
				if _, err := r.finalOp(history.Write, key, deadline); err != nil {
					r.fail("final write to %s did not succeed within %s of healing: %v", key, finalDeadline, err)
				}
			}
		})
	}
	wg.Wait()
	l.finals = finals
}

// settled reads every key again: the final writes (and the durability
// scenarios' writes) must be there; then no acknowledged write may be
// lost. Then the scanners scan once more.
func (l *registerLoad) settled() {
	r := l.r
	all := l.all()
	finals2 := make([]history.Op, len(all))
	deadline2 := r.rec.Now() + int64(finalDeadline)
	var wg sync.WaitGroup
	for i, key := range all {
		wg.Go(func() {
			op, err := r.finalOp(history.Read, key, deadline2)
			finals2[i] = op
			if err != nil {
				r.fail("read of %s after convergence failed: %v", key, err)
			}
		})
	}
	wg.Wait()

	h := r.rec.History()
	var okFinals []history.Op
	for _, f := range append(l.finals, finals2...) {
		if f.Outcome == history.OK {
			okFinals = append(okFinals, f)
		}
	}
	if lost := history.LostWrites(h, okFinals); len(lost) > 0 {
		for _, m := range lost {
			r.fail("%s", m)
		}
	} else {
		r.logf("no acknowledged write lost (%d final reads)", len(okFinals))
	}
	l.reads = okReads(finals2)
	if l.scans != nil {
		l.scans.final(r.rec.Now() + int64(finalDeadline))
	}
}

func (l *registerLoad) lastReads() []history.Op { return l.reads }

// okReads returns the reads of ops that succeeded.
func okReads(ops []history.Op) []history.Op {
	var out []history.Op
	for _, o := range ops {
		if o.Kind == history.Read && o.Outcome == history.OK {
			out = append(out, o)
		}
	}
	return out
}

func (l *registerLoad) check(h history.History) []history.Report {
	r := l.r
	start := time.Now()
	rep := history.Check(h, r.p.checkTimeout)
	if !rep.OK() {
		r.fail("%s: linearizability check failed:\n%s", l.name, rep)
	} else {
		r.logf("%s: linearizable: %d keys, %d operations, checked in %s", l.name, len(rep.Keys), len(h.Ops), time.Since(start).Round(time.Millisecond))
	}
	if l.scans != nil {
		l.scans.check(h)
	}
	return []history.Report{rep}
}
