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
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var req *http.Request
	base := "http://" + node.KV
	switch kind {
	case history.Write:
		b, _ := json.Marshal(map[string]string{"key": key, "value": value})
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, base+"/kv/set", bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
	case history.Delete:
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, base+"/kv/delete?key="+url.QueryEscape(key), nil)
	default:
		u := base + "/kv/get?key=" + url.QueryEscape(key)
		if *flagStaleReads {
			u += "&consistency=stale"
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	}
	op := history.Op{Client: client, Kind: kind, Key: key, Node: node.ID}
	if kind == history.Write {
		op.Value = value
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
	classify(&op, status, body, err, k.harnessErr)
	return k.rec.Add(op)
}

// classify sets the outcome of op from the HTTP answer (status 0: none).
func classify(op *history.Op, status int, body []byte, err error, harnessErr func(string)) {
	var e struct {
		Code  string `json:"code"`
		Value string `json:"value"`
	}
	_ = json.Unmarshal(body, &e)
	switch {
	case status == 0 && isDialError(err):
		// Nothing was sent: connection refused, or no connection in time.
		op.Outcome, op.Err = history.Failed, err.Error()
	case status == 0:
		op.Outcome, op.Err = history.Unknown, err.Error()
	case status == http.StatusOK && op.Kind != history.Read:
		// The answer's header says it was applied, even if the body was
		// cut short.
		op.Outcome = history.OK
	case status == http.StatusOK && err == nil:
		op.Outcome, op.Found, op.Value = history.OK, true, e.Value
	case status == http.StatusNotFound && op.Kind == history.Read && e.Code == "key_not_found" && err == nil:
		op.Outcome = history.OK
	case status == http.StatusServiceUnavailable && e.Code == "unavailable":
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
}

func (w *workload) start(clients int, seed int64) {
	w.stop = make(chan struct{})
	for i := range clients {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
		w.wg.Go(func() { w.client(rng) })
	}
}

func (w *workload) client(rng *rand.Rand) {
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
		case p < 0.45:
			op = w.kv.do(id, node, history.Write, key, fmt.Sprintf("v%d", w.values.Add(1)))
		case p < 0.5:
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
