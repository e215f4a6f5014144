package nemesis

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/internal/history"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// finalDeadline is how soon after healing a final write (and the final
// read before it) must succeed on every key.
const finalDeadline = 10 * time.Second

// run is one scenario on one cluster.
type run struct {
	t      *testing.T
	seed   int64
	rng    *rand.Rand
	p      params
	c      *tc.Cluster
	rec    *history.Recorder
	kv     *kvClient
	load   load
	keys   []string // the load's keys
	values atomic.Int64

	// extraKeys are written by the scenario itself (durability); they
	// get final reads and checks like the workload's keys.
	extraKeys []string

	mu      sync.Mutex
	targets []*tc.Node // nodes clients send requests to
	// expect are the nodes that must be members once everything is
	// healed; left are nodes that left the cluster for good.
	expect []*tc.Node
	left   []*tc.Node
	joined *tc.Node

	lastHeal int64 // recorder time of the last healing action
	failures []string
	// watch is the run's watchers.
	watch *watchSet
	// post are scenario checks run once the cluster has converged.
	post []func()
}

func runScenario(t *testing.T, size int, sc scenario, seed int64, netns bool) {
	start := time.Now()
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6e656d65736973))
	p := shortParams()
	if soak() {
		p = soakParams(rng)
	}
	t.Logf("seed=%d scenario=%s nodes=%d (re-run: go test ./nemesis/ -count=1 -v -run '^%s$' -nemesis.seed=%d)",
		seed, sc.name, size, t.Name(), seed)
	r := &run{t: t, seed: seed, rng: rng, p: p, rec: history.NewRecorder()}
	r.kv = newKVClient(r.rec, func(msg string) { r.fail("harness: %s", msg) })
	defer r.kv.close()
	newLoad := sc.load
	if newLoad == nil {
		newLoad = newRegisterLoad
	}
	r.load = newLoad(r) // names r.keys

	r.c = tc.New(t, binary, size, tc.Options{Env: nodeEnv, Netns: netns, JoinAll: !*flagReadmeJoin})
	where := "loopback"
	if r.c.Net != nil {
		where = "network " + r.c.Net.String()
	}
	r.c.Start()
	r.expect = slices.Clone(r.c.Nodes)
	r.targets = slices.Clone(r.c.Nodes)
	if err := tc.WaitConverged(r.expect, replicationFactor, 60*time.Second); err != nil {
		t.Fatalf("the fresh cluster did not settle (before any fault): %v", err)
	}
	t.Logf("%d nodes up on %s after %s; workload: %d clients on keys %v; %s",
		size, where, time.Since(start).Round(time.Millisecond), p.clients, r.keys, p)

	// Watchers of every key of the run (the durability scenarios' and
	// the loads' but the bank's accounts, which "" covers), from before
	// the workload.
	prefix := fmt.Sprintf("nemesis-%d-", r.seed%100000)
	r.watch = startWatchers(r, watcherCount, prefix, prefix, "")
	r.load.start(p.clients, seed)
	defer r.load.halt()
	r.sleep(p.warmup)
	for round := range p.rounds {
		if p.rounds > 1 {
			r.logf("round %d of %d", round+1, p.rounds)
		}
		sc.run(r)
		r.sleep(p.recovery)
	}
	r.finish()
	t.Logf("done in %s", time.Since(start).Round(time.Millisecond))
}

func (r *run) clientTargets() []*tc.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.targets
}

// fail records a failed check (the test goes on to run the other checks).
func (r *run) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.failures = append(r.failures, msg)
	r.mu.Unlock()
	r.t.Error(msg)
}

// eachKeyUntil runs attempt for every key in parallel until it reports
// success, every 100 ms, failing the run if deadline (on the recorder's
// clock) passes first. Each key has its own client, replaced after an
// unknown outcome, as a real client reconnects.
func (r *run) eachKeyUntil(what string, deadline int64, attempt func(client int, key string) (history.Op, bool)) {
	var wg sync.WaitGroup
	for _, key := range r.keys {
		wg.Go(func() {
			client := r.rec.NewClient()
			for {
				op, done := attempt(client, key)
				if done {
					return
				}
				if op.Outcome == history.Unknown {
					client = r.rec.NewClient()
				}
				if r.rec.Now() > deadline {
					r.fail("%s of %s did not succeed within %s of healing; last attempt: %s", what, key, finalDeadline, op)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
}

// checkRevisions checks h with the register model of revisions and
// conditions, per key, and fails the run if it is not linearizable.
func (r *run) checkRevisions(load string, h history.History) history.Report {
	start := time.Now()
	rep := history.CheckRevisions(h, r.p.checkTimeout)
	if !rep.OK() {
		r.fail("%s: linearizability check (revisions and conditions) failed:\n%s", load, rep)
	} else {
		r.logf("%s: linearizable per key with revisions and conditions: %d keys, %d operations, checked in %s",
			load, len(rep.Keys), len(h.Ops), time.Since(start).Round(time.Millisecond))
	}
	return rep
}

func (r *run) logf(format string, args ...any) {
	r.t.Helper()
	r.t.Logf("[%7s] %s", time.Duration(r.rec.Now()).Round(time.Millisecond), fmt.Sprintf(format, args...))
}

func (r *run) sleep(d time.Duration) { time.Sleep(d) }

// action runs a fault or heal, logs it and records it as a history event.
func (r *run) action(heal bool, desc string, f func()) {
	r.t.Helper()
	start := r.rec.Now()
	f()
	end := r.rec.Now()
	r.rec.Event(start, end, "%s", desc)
	r.logf("nemesis: %s (%s)", desc, time.Duration(end-start).Round(time.Millisecond))
	if heal {
		r.mu.Lock()
		r.lastHeal = end
		r.mu.Unlock()
	}
}

func (r *run) kill(n *tc.Node) { r.action(false, "SIGKILL "+n.ID, n.Kill) }

func (r *run) restart(n *tc.Node) { r.action(true, "restart "+n.ID, n.Start) }

func (r *run) pause(n *tc.Node) { r.action(false, "SIGSTOP "+n.ID, n.Pause) }

func (r *run) resume(n *tc.Node) { r.action(true, "SIGCONT "+n.ID, n.Resume) }

func (r *run) isolate(n *tc.Node) {
	r.action(false, "cut "+n.ID+" off from every other node", func() {
		if err := r.c.Isolate(n); err != nil {
			r.t.Fatalf("isolate %s: %v", n.ID, err)
		}
	})
}

func (r *run) healNet() {
	r.action(true, "heal every link", func() {
		if err := r.c.HealAll(); err != nil {
			r.t.Fatalf("heal: %v", err)
		}
	})
}

// running returns the expected nodes (members that should be up).
func (r *run) members() []*tc.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.expect)
}

// pick returns a random member.
func (r *run) pick() *tc.Node {
	m := r.members()
	return m[r.rng.IntN(len(m))]
}

// ask retries f through random members for up to 10 s.
func (r *run) ask(what string, f func(via *tc.Node) (*tc.Node, error)) *tc.Node {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := f(r.pick())
		if err == nil && n != nil {
			return n
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leader returns the Raft leader.
func (r *run) leader() *tc.Node {
	return r.ask("find the Raft leader", func(via *tc.Node) (*tc.Node, error) { return r.c.Leader(via) })
}

// primaryOf returns the primary of key's partition.
func (r *run) primaryOf(key string) *tc.Node {
	return r.ask("find the primary of "+key, func(via *tc.Node) (*tc.Node, error) {
		p, err := tc.PartitionOf(via, key)
		if err != nil {
			return nil, err
		}
		if n := r.c.Node(p.Primary); n != nil {
			return n, nil
		}
		return nil, fmt.Errorf("%s has no known primary (%+v)", key, p)
	})
}

// busyPrimary is the primary of the partition of the first workload key.
func (r *run) busyPrimary() *tc.Node { return r.primaryOf(r.keys[0]) }

// healAll undoes every fault still in place: resumes paused nodes, heals
// links and restarts expected members that are down.
func (r *run) healAll() {
	for _, n := range r.c.Nodes {
		if n.Paused() {
			r.resume(n)
		}
	}
	if r.c.Net != nil && len(r.c.Net.Cuts()) > 0 {
		r.healNet()
	}
	for _, n := range r.members() {
		if n.Exited() {
			r.fail("%s exited by itself (crash?); last lines of its log:\n%s", n.ID, tail(n.Stderr(), 30))
			n.Kill() // reap it
		}
		if !n.Running() {
			r.restart(n)
		}
	}
}

func tail(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// finalOp retries op through random members until it succeeds (OK) or the
// recorder clock passes deadline.
func (r *run) finalOp(kind history.Kind, key string, deadline int64) (history.Op, error) {
	client := r.rec.NewClient()
	members := r.members()
	var op history.Op
	for attempt := 0; ; attempt++ {
		value := ""
		if kind == history.Write {
			value = fmt.Sprintf("final-%d-%d", r.values.Add(1), attempt)
		}
		// The global source: final operations run concurrently.
		op = r.kv.do(client, members[rand.IntN(len(members))], kind, key, value)
		if op.Outcome == history.OK {
			return op, nil
		}
		if op.Outcome == history.Unknown {
			client = r.rec.NewClient()
		}
		if r.rec.Now() > deadline {
			return op, fmt.Errorf("last attempt: %s", op)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// load is what the clients do during a scenario, and the checks of what
// they did: the register workload by default (registerLoad), or the one a
// scenario names (casLoad, ttlLoad, batchLoad). The faults, the
// convergence and the replica checks are the same whatever the load.
type load interface {
	// start starts the clients on r.keys.
	start(clients int, seed int64)
	// halt stops them and waits for their operations in flight; it may
	// be called again.
	halt()
	// final runs once everything is healed and the clients have
	// stopped: the operations that must succeed by deadline (recorder
	// time), finalDeadline after the last healing action.
	final(deadline int64)
	// settled runs once the cluster has converged (or failed to).
	settled()
	// lastReads are the reads settled made after every write (the OK
	// ones): the state every watcher must end in.
	lastReads() []history.Op
	// check checks the whole history (failing the run on a violation)
	// and returns the porcupine reports it made, for the artifacts.
	check(h history.History) []history.Report
}

// finish heals everything, stops the workload and runs every check: the
// load's, and the watchers' (once they have caught up with the reads the
// load makes after convergence).
func (r *run) finish() {
	t := r.t
	r.healAll()
	r.load.halt()
	h := r.rec.History()
	r.logf("workload stopped: %s", h.Counts())

	r.mu.Lock()
	deadline := r.lastHeal + int64(finalDeadline)
	r.mu.Unlock()
	r.load.final(deadline)
	r.logf("final operations done")

	converged := true
	if err := tc.WaitConverged(r.members(), replicationFactor, r.p.converge); err != nil {
		converged = false
		r.fail("the healed cluster did not converge: %v", err)
	} else {
		r.logf("cluster converged: %d nodes active, every partition fully in sync", len(r.members()))
	}
	r.load.settled()
	r.watch.catchUp(r.load.lastReads())

	if converged {
		if err := r.checkReplicas(); err != nil {
			r.fail("replicas differ: %v", err)
		} else {
			r.logf("every in-sync copy of every partition equals its primary's")
		}
		for _, f := range r.post {
			f()
		}
	}
	for _, n := range r.c.Nodes {
		if n.Exited() {
			r.fail("%s exited by itself (crash?); last lines of its log:\n%s", n.ID, tail(n.Stderr(), 30))
		}
	}

	h = r.rec.History()
	reps := r.load.check(h)
	r.watch.check(h, r.load.lastReads())

	if t.Failed() {
		dir := r.saveArtifacts(h, reps)
		t.Errorf("seed=%d: artifacts (history, visualisation, node logs, summary) in %s", r.seed, dir)
	}
}

// checkReplicas compares, for every partition, the digest of every
// in-sync replica with the primary's, retrying for a while (a table
// change may still be on its way to a node).
func (r *run) checkReplicas() error {
	deadline := time.Now().Add(15 * time.Second)
	for first := true; ; first = false {
		err := r.compareDigests()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		if first {
			r.logf("replica digests differ on the first comparison, retrying: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (r *run) compareDigests() error {
	members := r.members()
	st, err := members[0].State()
	if err != nil {
		return err
	}
	digests := map[string]map[int]tc.Digest{}
	for _, n := range members {
		d, err := n.Digests()
		if err != nil {
			return fmt.Errorf("%s: %w", n.ID, err)
		}
		digests[n.ID] = d
	}
	desc := func(node string, d tc.Digest) string {
		sha := d.SHA256
		if len(sha) > 12 {
			sha = sha[:12]
		}
		return fmt.Sprintf("%s (%s, epoch %d, seq %d, %d keys, sha256 %s)", node, d.Role, d.Epoch, d.Seq, d.Keys, sha)
	}
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(st.Partitions)) {
		p := st.Partitions[id]
		num, err := strconv.Atoi(strings.TrimPrefix(id, "partition-"))
		if err != nil {
			return fmt.Errorf("partition id %q", id)
		}
		pd, ok := digests[p.Primary][num]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: primary %s has no digest", id, p.Primary))
			continue
		}
		if pd.Role != "primary" {
			errs = append(errs, fmt.Errorf("%s: %s is primary in the table but reports role %q", id, p.Primary, pd.Role))
		}
		for _, rep := range p.InSync {
			d, ok := digests[rep][num]
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("%s: in-sync replica %s has no digest", id, rep))
			case d.Role != "in-sync":
				errs = append(errs, fmt.Errorf("%s: %s is in sync in the table but reports role %q", id, rep, d.Role))
			case d.SHA256 != pd.SHA256 || d.Keys != pd.Keys:
				errs = append(errs, fmt.Errorf("%s: copy of %s differs from primary %s", id, desc(rep, d), desc(p.Primary, pd)))
			}
		}
	}
	return errors.Join(errs...)
}

// saveArtifacts keeps everything needed to study a failure and returns
// the directory.
func (r *run) saveArtifacts(h history.History, reps []history.Report) string {
	dir, err := artifactDir(r.t.Name(), r.seed)
	if err != nil {
		r.t.Errorf("artifact directory: %v", err)
		return "(none)"
	}
	if _, err := history.SaveAll(dir, h, nil); err != nil {
		r.t.Errorf("save history: %v", err)
	}
	for _, rep := range reps {
		if _, err := rep.Visualize(dir, false); err != nil {
			r.t.Errorf("visualise: %v", err)
		}
	}
	for _, n := range r.c.Nodes {
		if err := copyFile(filepath.Join(dir, n.ID+".log"), n.LogPath()); err != nil {
			r.t.Errorf("copy log of %s: %v", n.ID, err)
		}
		if !n.Running() || n.Paused() {
			continue
		}
		// Each live node's view of the cluster and digests of its copies.
		for file, get := range map[string]func() (tc.Response, error){
			"cluster":   func() (tc.Response, error) { return tc.Get(n.HTTP, "/cluster") },
			"consensus": func() (tc.Response, error) { return tc.Get(n.HTTP, "/consensus/stats") },
			"digest": func() (tc.Response, error) {
				b, err := n.DigestJSON()
				return tc.Response{Body: b}, err
			},
		} {
			if resp, err := get(); err == nil {
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s.json", n.ID, file)), resp.Body, 0o644)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "test: %s\nseed: %d\nre-run: go test ./nemesis/ -count=1 -v -run '^%s$' -nemesis.seed=%d\nsoak: %v\nparams: %s\nkeys: %v extra keys: %v\n\n",
		r.t.Name(), r.seed, r.t.Name(), r.seed, soak(), r.p, r.keys, r.extraKeys)
	fmt.Fprintf(&b, "failures:\n")
	for _, f := range r.failures {
		fmt.Fprintf(&b, "- %s\n", f)
	}
	fmt.Fprintf(&b, "\nnemesis events (times since the workload's clock started):\n")
	for _, e := range h.Events {
		fmt.Fprintf(&b, "- [%s .. %s] %s\n", time.Duration(e.Start), time.Duration(e.End), e.Description)
	}
	for _, w := range h.Watches {
		fmt.Fprintf(&b, "\nwatcher %d of prefix %q, from %s (token asked for at %s, answered at %s); %d events on %d connections:\n",
			w.ID, w.Prefix, w.From, time.Duration(w.TokenCall), time.Duration(w.TokenReturn), len(w.Events), len(w.Conns))
		for i, c := range w.Conns {
			since := c.Since
			if since == "" {
				since = "since=now"
			}
			fmt.Fprintf(&b, "- connection %d through %s [%s .. %s] %d events, from %s; ended: %s\n",
				i, c.Node, time.Duration(c.Start), time.Duration(c.End), c.Events, since, c.Ended)
		}
	}
	if len(h.Scans) > 0 {
		ok := 0
		for _, sc := range h.Scans {
			if sc.Outcome == history.OK {
				ok++
			}
		}
		fmt.Fprintf(&b, "\nscans: %d, %d of them OK (every page of each in history.json)\n", len(h.Scans), ok)
	}
	fmt.Fprintf(&b, "\noperations: %s\n\nlinearizability:\n", h.Counts())
	for _, rep := range reps {
		fmt.Fprintf(&b, "%s", rep)
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.txt"), []byte(b.String()), 0o644); err != nil {
		r.t.Errorf("write summary: %v", err)
	}
	return dir
}
