package nemesis

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/internal/history"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// The bank: bankAccounts accounts of bankInitial each, all under one hash
// tag (one partition, so that atomic batches may span them); transfers of
// 1 to bankMaxAmount. Few accounts, so that the clients contend and
// conditions fail often.
const (
	bankAccounts  = 3
	bankInitial   = 100
	bankMaxAmount = 10
)

// The plain-batch clients (of the run's clients) and the keys they write,
// each placed on its own (different partitions, mostly).
const (
	plainClients = 2
	plainKeys    = 3
)

// batchLoad runs bank transfers through atomic batches, and independent
// writes through plain ones. The accounts are set once, by an atomic
// batch of sets with if_revision=0, to bankInitial each. Each bank client
// then loops: an atomic batch of gets of every account (a snapshot)
// through a random node, then through another an atomic batch that moves
// a random amount from one account with money to another, with
// if_revision on both sets (the revisions the snapshot showed), and gets
// of every account after them, so that a committed transfer shows a
// snapshot too. The value of an account is history.BankValue: balance,
// change and a unique number. The plain clients send non-atomic batches
// of 2-3 sets (unique values) and gets on distinct keys of their own.
//
// After healing every account sends or receives a final transfer and
// every plain key gets a final set (within finalDeadline); once settled
// every account is read through every member, and every plain key too.
// Then:
//
//   - history.CheckBatches: every atomic batch was all or nothing (every
//     write applied and every get answered, or none), committed says
//     which, and a committed one took consecutive revisions and its gets
//     agree with its writes;
//   - history.CheckBank: every committed snapshot, through whichever
//     node, adds up to the total (no transfer seen half done); the final
//     reads agree, and their balances are the initial ones plus every
//     acknowledged transfer plus some subset of those with an unknown
//     outcome, holding those a read showed applied and none a committed
//     transfer showed not (none lost, none applied twice, no money made
//     or lost);
//   - every op of every batch, atomic or not, and every final read, is
//     linearizable per key under history.RevisionModel (which cannot see
//     that an atomic batch's ops took effect at one point: the two checks
//     above do), and no acknowledged write is lost (history.LostWrites).
type batchLoad struct {
	r        *run
	accounts []string
	plain    []string
	stop     chan struct{}
	wg       sync.WaitGroup

	mu         sync.Mutex
	finals     []int        // the batches of the final reads of the accounts
	finalReads []history.Op // the final reads of every key
}

func newBatchLoad(r *run) load {
	l := &batchLoad{r: r}
	tag := fmt.Sprintf("{nemesis-%d-bank}", r.seed%100000)
	for i := range bankAccounts {
		l.accounts = append(l.accounts, fmt.Sprintf("%s:%c", tag, 'a'+i))
	}
	for i := range plainKeys {
		l.plain = append(l.plain, fmt.Sprintf("nemesis-%d-pb%d", r.seed%100000, i))
	}
	// The accounts first: busyPrimary, which the faults aim at, is the
	// primary of r.keys[0]'s partition.
	r.keys = append(slices.Clone(l.accounts), l.plain...)
	return l
}

func (l *batchLoad) bank() history.Bank {
	return history.Bank{Accounts: l.accounts, Total: bankAccounts * bankInitial}
}

// sendBatch performs one batch through node and records it with its
// operations. reqs are its ops (their kind, key, value and if_revision).
func (k *kvClient) sendBatch(client int, node *tc.Node, atomic bool, reqs []request) (history.Batch, []history.Op) {
	body := map[string]any{"atomic": atomic}
	var ops []map[string]any
	for _, r := range reqs {
		op := map[string]any{"key": r.key}
		switch r.kind {
		case history.Write:
			op["op"], op["value"] = "set", r.value
		case history.Delete:
			op["op"] = "delete"
		default:
			op["op"] = "get"
		}
		if r.ifRevision != nil {
			op["if_revision"] = *r.ifRevision
		}
		ops = append(ops, op)
	}
	body["ops"] = ops
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+node.KV+"/kv/batch", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")

	batch := history.Batch{Client: client, Atomic: atomic, Node: node.ID}
	batch.Call = k.rec.Now()
	resp, err := k.hc.Do(req)
	var answer []byte
	status := 0
	if err == nil {
		status = resp.StatusCode
		answer, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	batch.Return = k.rec.Now()

	out := make([]history.Op, len(reqs))
	for i, r := range reqs {
		o := history.Op{Client: client, Kind: r.kind, Key: r.key, Node: node.ID, Call: batch.Call, Return: batch.Return}
		if r.kind == history.Write {
			o.Value = r.value
		}
		if r.ifRevision != nil {
			o.HasIfRevision, o.IfRevision = true, *r.ifRevision
		}
		out[i] = o
	}
	var parsed struct {
		Results   []json.RawMessage `json:"results"`
		Committed bool              `json:"committed"`
	}
	switch {
	case status == http.StatusOK && err == nil && json.Unmarshal(answer, &parsed) == nil && len(parsed.Results) == len(reqs):
		batch.Outcome, batch.Committed = history.OK, parsed.Committed
		for i, res := range parsed.Results {
			classifyResult(&out[i], res, k.rec, k.harnessErr)
		}
	case status == http.StatusOK:
		// A 200 promises a result per op, not that any applied: with
		// the body cut short (or wrong), anything may have.
		batch.Outcome, batch.Err = history.Unknown, fmt.Sprintf("200, answer unreadable: %v %q", err, answer)
		if err == nil && k.harnessErr != nil {
			k.harnessErr(fmt.Sprintf("answer to a batch of %d ops is not a result per op: %s", len(reqs), answer))
		}
	default:
		// The whole request's outcome, as a single write's.
		whole := history.Op{Kind: history.Write}
		classify(&whole, status, answer, err, k.rec, k.harnessErr)
		batch.Outcome, batch.Err = whole.Outcome, whole.Err
	}
	if batch.Outcome != history.OK {
		for i := range out {
			out[i].Outcome, out[i].Err = batch.Outcome, "the batch's: "+batch.Err
		}
	}
	return k.rec.AddBatch(batch, out)
}

// classifyResult sets the outcome of op from its result in a batch's
// answer: a result is the status and body the single call would answer,
// but for "aborted" (an atomic batch's op not applied because another
// failed), which says as surely as a failed condition that it changed
// nothing, though not the key's state.
func classifyResult(op *history.Op, res json.RawMessage, rec *history.Recorder, harnessErr func(string)) {
	var r struct {
		Status int    `json:"status"`
		Code   string `json:"code"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		op.Outcome, op.Err = history.Unknown, fmt.Sprintf("result %s: %v", res, err)
		return
	}
	if r.Status == http.StatusConflict && r.Code == "aborted" {
		op.Outcome, op.Err = history.Failed, "409 aborted"
		return
	}
	classify(op, r.Status, res, nil, rec, harnessErr)
}

// committed reports whether an atomic batch certainly applied.
func committed(b history.Batch, ops []history.Op) bool {
	if b.Outcome != history.OK || !b.Committed {
		return false
	}
	for _, o := range ops {
		if o.Outcome != history.OK || o.CondFailed {
			return false
		}
	}
	return true
}

// snapshot reads every account in one atomic batch: their balances and
// revisions if every get found its account.
func (l *batchLoad) snapshot(client int, node *tc.Node) (history.Batch, []history.Op, []int, []uint64, bool) {
	var reqs []request
	for _, a := range l.accounts {
		reqs = append(reqs, request{kind: history.Read, key: a})
	}
	b, ops := l.r.kv.sendBatch(client, node, true, reqs)
	if !committed(b, ops) {
		return b, ops, nil, nil, false
	}
	bal, revs := make([]int, len(ops)), make([]uint64, len(ops))
	for i, o := range ops {
		if !o.Found {
			l.r.fail("batch: account %s is absent: %s", o.Key, o)
			return b, ops, nil, nil, false
		}
		n, _, err := history.ParseBankValue(o.Value)
		if err != nil {
			l.r.fail("batch: %s: %v", o, err)
			return b, ops, nil, nil, false
		}
		bal[i], revs[i] = n, o.Revision
	}
	return b, ops, bal, revs, true
}

// transfer takes a snapshot through a node picked with pick, then moves a
// random amount between two accounts through another: from account
// involve (if not "") to the next one, or to it from the richest one if it
// has nothing; or from a random account with money to another. It returns
// the transfer batch, or the snapshot if that did not succeed.
func (l *batchLoad) transfer(client int, nodes []*tc.Node, pick func(int) int, involve string) (history.Batch, []history.Op) {
	b, ops, bal, revs, ok := l.snapshot(client, nodes[pick(len(nodes))])
	if !ok {
		return b, ops
	}
	n := len(l.accounts)
	var rich []int // the accounts with money
	for j := range n {
		if bal[j] > 0 {
			rich = append(rich, j)
		}
	}
	if len(rich) == 0 {
		return b, ops // the money is gone: CheckBank will say so
	}
	from := rich[pick(len(rich))]
	to := (from + 1 + pick(n-1)) % n
	if i := slices.Index(l.accounts, involve); i >= 0 {
		from, to = i, (i+1)%n
		if bal[i] <= 0 {
			from, to = rich[0], i
		}
	}
	amount := 1 + pick(min(bal[from], bankMaxAmount))
	unique := l.r.values.Add(1)
	reqs := []request{
		{kind: history.Write, key: l.accounts[from], value: history.BankValue(bal[from]-amount, -amount, unique), ifRevision: &revs[from]},
		{kind: history.Write, key: l.accounts[to], value: history.BankValue(bal[to]+amount, amount, unique), ifRevision: &revs[to]},
	}
	for _, a := range l.accounts {
		reqs = append(reqs, request{kind: history.Read, key: a})
	}
	return l.r.kv.sendBatch(client, nodes[pick(len(nodes))], true, reqs)
}

// open sets every account to bankInitial in one atomic batch, with
// if_revision=0, through random members until it is committed, or fails
// on a condition because an earlier attempt with an unknown outcome was
// applied after all.
func (l *batchLoad) open() {
	r := l.r
	client := r.rec.NewClient()
	zero := uint64(0)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var reqs []request
		for _, a := range l.accounts {
			reqs = append(reqs, request{kind: history.Write, key: a, value: history.BankValue(bankInitial, bankInitial, r.values.Add(1)), ifRevision: &zero})
		}
		b, ops := r.kv.sendBatch(client, r.pick(), true, reqs)
		if committed(b, ops) || slices.ContainsFunc(ops, func(o history.Op) bool { return o.CondFailed }) {
			return
		}
		if unknown(ops) {
			client = r.rec.NewClient()
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("batch: the accounts could not be set up within 20 s: %s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *batchLoad) start(clients int, seed int64) {
	l.open()
	l.stop = make(chan struct{})
	for i := range clients {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
		if i < plainClients {
			l.wg.Go(func() { l.loop(rng, l.plainBatch) })
		} else {
			l.wg.Go(func() { l.loop(rng, l.bankTransfer) })
		}
	}
}

func (l *batchLoad) halt() {
	if l.stop != nil {
		close(l.stop)
		l.wg.Wait()
		l.stop = nil
	}
}

// loop runs step until halted; step returns whether the outcome of what
// it did is unknown.
func (l *batchLoad) loop(rng *rand.Rand, step func(client int, rng *rand.Rand) bool) {
	id := l.r.rec.NewClient()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		if step(id, rng) {
			// The operations stay pending forever: continue as a new
			// client, as clients are sequential.
			id = l.r.rec.NewClient()
		}
		select {
		case <-l.stop:
			return
		case <-time.After(time.Duration(5+rng.IntN(20)) * time.Millisecond):
		}
	}
}

func unknown(ops []history.Op) bool {
	return slices.ContainsFunc(ops, func(o history.Op) bool { return o.Outcome == history.Unknown })
}

func (l *batchLoad) bankTransfer(client int, rng *rand.Rand) bool {
	_, ops := l.transfer(client, l.r.clientTargets(), rng.IntN, "")
	return unknown(ops)
}

// plainBatch sends a plain batch of 2-3 ops on distinct plain keys: sets
// of unique values, or gets.
func (l *batchLoad) plainBatch(client int, rng *rand.Rand) bool {
	var reqs []request
	for _, i := range rng.Perm(len(l.plain))[:2+rng.IntN(len(l.plain)-1)] {
		if rng.IntN(5) < 3 {
			reqs = append(reqs, request{kind: history.Write, key: l.plain[i], value: fmt.Sprintf("p%d", l.r.values.Add(1))})
		} else {
			reqs = append(reqs, request{kind: history.Read, key: l.plain[i]})
		}
	}
	nodes := l.r.clientTargets()
	_, ops := l.r.kv.sendBatch(client, nodes[rng.IntN(len(nodes))], false, reqs)
	return unknown(ops)
}

// final makes, within finalDeadline of the last healing action, a
// transfer from (or to) every account, and a set of every plain key in a
// plain batch: the cluster must take batches again.
func (l *batchLoad) final(deadline int64) {
	r := l.r
	members := r.members()
	r.eachKeyUntil("batch: final transfer or set", deadline, func(client int, key string) (history.Op, bool) {
		// The global source: final operations run concurrently.
		if slices.Contains(l.plain, key) {
			_, ops := r.kv.sendBatch(client, members[rand.IntN(len(members))], false,
				[]request{{kind: history.Write, key: key, value: fmt.Sprintf("p%d", r.values.Add(1))}})
			return ops[0], ops[0].Outcome == history.OK
		}
		b, ops := l.transfer(client, members, rand.IntN, key)
		for _, o := range ops {
			if o.Outcome != history.OK || o.CondFailed {
				return o, false // the op that did not succeed
			}
		}
		return ops[0], committed(b, ops) && ops[0].Kind == history.Write
	})
}

// settled reads every account through every member (atomic batches) and
// every plain key through every member (plain batches).
func (l *batchLoad) settled() {
	r := l.r
	deadline := time.Now().Add(finalDeadline)
	var plain []request
	for _, k := range l.plain {
		plain = append(plain, request{kind: history.Read, key: k})
	}
	var wg sync.WaitGroup
	for _, n := range r.members() {
		wg.Go(func() {
			client := r.rec.NewClient()
			for {
				b, ops, bal, _, ok := l.snapshot(client, n)
				if ok {
					l.mu.Lock()
					l.finals = append(l.finals, b.ID)
					l.finalReads = append(l.finalReads, ops...)
					l.mu.Unlock()
					r.logf("batch: final balances through %s: %v", n.ID, bal)
					break
				}
				if time.Now().After(deadline) {
					r.fail("batch: atomic read of every account through %s after convergence failed: %s", n.ID, b)
					break
				}
				client = r.rec.NewClient()
				time.Sleep(200 * time.Millisecond)
			}
		})
		wg.Go(func() {
			client := r.rec.NewClient()
			pending := slices.Clone(plain)
			for len(pending) > 0 {
				_, ops := r.kv.sendBatch(client, n, false, pending)
				pending = pending[:0]
				for i, o := range ops {
					if o.Outcome == history.OK {
						l.mu.Lock()
						l.finalReads = append(l.finalReads, o)
						l.mu.Unlock()
					} else {
						pending = append(pending, plain[slices.Index(l.plain, ops[i].Key)])
					}
				}
				if len(pending) > 0 && time.Now().After(deadline) {
					r.fail("batch: reads of %d plain keys through %s after convergence failed: %s", len(pending), n.ID, ops)
					break
				}
				client = r.rec.NewClient()
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	h := r.rec.History()
	l.mu.Lock()
	finals := slices.Clone(l.finalReads)
	l.mu.Unlock()
	if lost := history.LostWrites(h, finals); len(lost) > 0 {
		for _, m := range lost {
			r.fail("batch: %s", m)
		}
	} else {
		r.logf("batch: no acknowledged write lost (%d final reads)", len(finals))
	}
}

func (l *batchLoad) lastReads() []history.Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return okReads(l.finalReads)
}

func (l *batchLoad) check(h history.History) []history.Report {
	r := l.r
	report := func(what string, problems []string) {
		for i, p := range problems {
			if i == maxProblems {
				r.fail("batch: ... and %d more %s violations (all in the saved history)", len(problems)-maxProblems, what)
				break
			}
			r.fail("batch: %s: %s", what, p)
		}
	}
	atomic := 0
	for _, b := range h.Batches {
		if b.Atomic {
			atomic++
		}
	}
	if problems := history.CheckBatches(h); len(problems) > 0 {
		report("all or nothing", problems)
	} else {
		r.logf("batch: every one of %d atomic batches applied all or nothing (and %d plain batches ran beside)", atomic, len(h.Batches)-atomic)
	}

	l.mu.Lock()
	finals := slices.Clone(l.finals)
	l.mu.Unlock()
	bank := history.CheckBank(h, l.bank(), finals)
	report("bank", bank.Problems)
	switch {
	case bank.Undecided:
		r.logf("batch: !!! too many transfers with an unknown outcome (%d) to tell whether some explain the final balances; not checked", bank.Unknown)
	case bank.OK():
		r.logf("batch: %d snapshots all add up to %d (by node: %v); final balances %v = every one of %d committed transfers and (at least) %d of %d with an unknown outcome (%d shown applied by a read, %d not by a committed transfer; %d rejected)",
			bank.SnapshotCount(), l.bank().Total, bank.Snapshots, bank.Final, bank.Committed, bank.Applied, bank.Unknown, bank.Seen, bank.Superseded, bank.Rejected)
	}

	return []history.Report{r.checkRevisions("batch", h)}
}
