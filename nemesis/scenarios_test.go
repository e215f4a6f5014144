package nemesis

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/internal/history"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// scenario is one kind of fault. run injects it once (a round) while the
// workload runs, and normally heals it too; whatever it leaves broken is
// healed before the checks.
type scenario struct {
	name string
	// netns: the scenario cuts links and needs network namespaces.
	netns bool
	// soakOnly: run only with -nemesis.soak.
	soakOnly bool
	// load makes the run's load (nil: the register workload); it names
	// r.keys, which busyPrimary and the faults aim at.
	load func(r *run) load
	run  func(r *run)
}

var scenarios = []scenario{
	{name: "kill-random", run: func(r *run) { killFor(r, r.pick()) }},
	{name: "kill-leader", run: func(r *run) { killFor(r, r.leader()) }},
	{name: "kill-primary", run: func(r *run) { killFor(r, r.busyPrimary()) }},
	// Shorter than failure detection: nobody should notice much.
	{name: "pause-short", run: func(r *run) { pauseFor(r, r.pick(), r.p.pauseShort) }},
	// Longer than failure detection and failover: the paused primary is
	// replaced, and must not act as primary when it wakes up.
	{name: "pause-long", run: func(r *run) { pauseFor(r, r.busyPrimary(), r.p.pauseLong) }},
	{name: "cut-short", netns: true, run: func(r *run) { isolateFor(r, r.pick(), r.p.cutShort) }},
	// Long enough that the others fail over and go on writing without
	// it: it must be caught up by a copy when it returns. The busy
	// partition's primary is cut off while clients can still reach it.
	{name: "cut-long", netns: true, run: func(r *run) { isolateFor(r, r.busyPrimary(), r.p.cutLong) }},
	{name: "join", run: joinOrLeave},
	{name: "leave", run: leaveOrReturn},
	{name: "durability-kill-one", run: durabilityKillOne},
	{name: "durability-kill-all", run: durabilityKillAll},
	{name: "mixed", soakOnly: true, run: mixed},

	// The CAS load (conditional increments) and the TTL load, in the
	// short pass under the faults that test them most, and under the
	// others in the soak. A killed primary's successor must neither lose
	// an acknowledged increment nor apply one twice, nor reuse a
	// revision; a short cut of the primary then leaves increments with
	// an unknown outcome, which must be applied once or not at all (one
	// cluster for both faults keeps the short pass short). A primary
	// paused for longer than failover wakes up behind a successor that
	// must know every deadline, and must itself serve nothing stale.
	{name: "cas-kill-cut-primary", load: newCASLoad, run: killThenCut},
	// The same through the Go client package: what it reports as not
	// applied was not, and it never sends a write twice.
	{name: "client-cas-kill-cut-primary", load: newClientCASLoad, run: killThenCut},
	// Locks taken with if_revision=0 and given back with a delete
	// conditioned on the holder's revision, under the same faults: a
	// conditional delete must neither delete a lock someone else took
	// since, nor leave two holders.
	{name: "lock-kill-cut-primary", load: newLockLoad, run: killThenCut},
	{name: "lock-pause-long", soakOnly: true, load: newLockLoad, run: func(r *run) { pauseFor(r, r.busyPrimary(), r.p.pauseLong) }},
	{name: "lock-mixed", soakOnly: true, load: newLockLoad, run: mixed},
	{name: "ttl-pause-long", load: newTTLLoad, run: func(r *run) { pauseFor(r, r.busyPrimary(), r.p.pauseLong) }},
	{name: "cas-pause-long", soakOnly: true, load: newCASLoad, run: func(r *run) { pauseFor(r, r.busyPrimary(), r.p.pauseLong) }},
	{name: "cas-cut-long", netns: true, soakOnly: true, load: newCASLoad, run: func(r *run) { isolateFor(r, r.busyPrimary(), r.p.cutLong) }},
	{name: "cas-mixed", soakOnly: true, load: newCASLoad, run: mixed},
	{name: "ttl-kill-primary", soakOnly: true, load: newTTLLoad, run: func(r *run) { killFor(r, r.busyPrimary()) }},
	{name: "ttl-cut-long", netns: true, soakOnly: true, load: newTTLLoad, run: func(r *run) { isolateFor(r, r.busyPrimary(), r.p.cutLong) }},
	{name: "ttl-mixed", soakOnly: true, load: newTTLLoad, run: mixed},

	// The batch load (bank transfers in atomic batches, and plain
	// batches), in the short pass under the CAS load's faults: a killed
	// primary's successor must have every committed transfer whole and no
	// half of any, and the short cut leaves transfers with an unknown
	// outcome, each applied whole or not at all. The others in the soak.
	{name: "batch-kill-cut-primary", load: newBatchLoad, run: killThenCut},
	{name: "batch-pause-long", soakOnly: true, load: newBatchLoad, run: func(r *run) { pauseFor(r, r.busyPrimary(), r.p.pauseLong) }},
	{name: "batch-cut-long", netns: true, soakOnly: true, load: newBatchLoad, run: func(r *run) { isolateFor(r, r.busyPrimary(), r.p.cutLong) }},
	{name: "batch-mixed", soakOnly: true, load: newBatchLoad, run: mixed},

	// The scan load (keys created and deleted all the time, scanned page
	// by page through random nodes), in the short pass under the CAS
	// load's faults: a page whose partition's primary was killed must
	// wait for its successor, never skip its keys, and the short cut
	// leaves writes with an unknown outcome that scans may or may not
	// show. The others in the soak. (The watchers follow every run of the
	// register load too, under each of its faults.)
	{name: "scan-kill-cut-primary", load: newScanLoad, run: killThenCut},
	{name: "scan-pause-long", soakOnly: true, load: newScanLoad, run: func(r *run) { pauseFor(r, r.busyPrimary(), r.p.pauseLong) }},
	{name: "scan-cut-long", netns: true, soakOnly: true, load: newScanLoad, run: func(r *run) { isolateFor(r, r.busyPrimary(), r.p.cutLong) }},
	{name: "scan-mixed", soakOnly: true, load: newScanLoad, run: mixed},
}

func killFor(r *run, n *tc.Node) {
	r.kill(n)
	r.sleep(r.p.killDown)
	r.restart(n)
}

func pauseFor(r *run, n *tc.Node, d time.Duration) {
	r.pause(n)
	r.sleep(d)
	r.resume(n)
}

func isolateFor(r *run, n *tc.Node, d time.Duration) {
	r.isolate(n)
	r.sleep(d)
	r.healNet()
}

// killThenCut kills the busy primary and restarts it, then (with network
// namespaces; without, the kill alone) cuts off the busy partition's
// primary, whichever node it is by then, for a short while.
func killThenCut(r *run) {
	killFor(r, r.busyPrimary())
	if r.c.Net != nil {
		r.sleep(r.p.recovery / 2) // traffic in between, as after every round
		isolateFor(r, r.busyPrimary(), r.p.cutShort)
	}
}

// mixed injects one random fault per round (soak only).
func mixed(r *run) {
	faults := []func(){
		func() { killFor(r, r.pick()) },
		func() { killFor(r, r.leader()) },
		func() { killFor(r, r.busyPrimary()) },
		func() { pauseFor(r, r.pick(), r.p.pauseShort) },
		func() { pauseFor(r, r.pick(), r.p.pauseLong) },
	}
	if r.c.Net != nil {
		faults = append(faults,
			func() { isolateFor(r, r.pick(), r.p.cutShort) },
			func() { isolateFor(r, r.pick(), r.p.cutLong) })
	}
	faults[r.rng.IntN(len(faults))]()
}

// joinOrLeave starts one more node during traffic; in a later round (soak)
// that node leaves again.
func joinOrLeave(r *run) {
	if n := r.joined; n != nil {
		r.joined = nil
		leave(r, n)
		return
	}
	n := r.c.AddNode(nodeEnv...)
	r.action(true, "start "+n.ID+" (joins during traffic)", n.Start)
	r.mu.Lock()
	r.expect = append(r.expect, n)
	r.targets = append(slices.Clone(r.targets), n)
	r.mu.Unlock()
	r.joined = n
}

// leaveOrReturn stops a random node with SIGTERM (graceful leave) during
// traffic; in a later round (soak) it comes back.
func leaveOrReturn(r *run) {
	if len(r.left) > 0 {
		n := r.left[0]
		r.left = r.left[1:]
		r.action(true, "restart "+n.ID+" (returns after leaving)", n.Start)
		r.mu.Lock()
		r.expect = append(r.expect, n)
		r.mu.Unlock()
		return
	}
	leave(r, r.pick())
}

func leave(r *run, n *tc.Node) {
	r.mu.Lock()
	r.expect = slices.DeleteFunc(r.expect, func(o *tc.Node) bool { return o == n })
	r.mu.Unlock()
	exited := false
	// Clients keep sending to it: those requests are refused (failed).
	r.action(true, "SIGTERM "+n.ID+" (graceful leave during traffic)", func() { exited = n.Stop(20 * time.Second) })
	if !exited {
		r.fail("%s did not exit within 20 s of SIGTERM (graceful leave); it was killed", n.ID)
	}
	r.left = append(r.left, n)
}

// durabilityKeys returns n fresh keys, all with primary owner (if not nil).
func durabilityKeys(r *run, owner *tc.Node, n int) []string {
	var keys []string
	for tries := 0; len(keys) < n && tries < 1000; tries++ {
		key := fmt.Sprintf("nemesis-%d-dur%d", r.seed%100000, len(r.extraKeys)+tries)
		if slices.Contains(r.extraKeys, key) {
			continue
		}
		if owner != nil {
			p, err := tc.PartitionOf(r.pick(), key)
			if err != nil || p.Primary != owner.ID {
				continue
			}
		}
		keys = append(keys, key)
	}
	if len(keys) < n {
		r.t.Fatalf("found only %d keys with primary %v", len(keys), owner)
	}
	r.extraKeys = append(r.extraKeys, keys...)
	return keys
}

// burst writes every key once, concurrently, through random members
// (retrying writes that certainly failed), and returns the acknowledged
// writes.
func burst(r *run, keys []string) []history.Op {
	members := r.members()
	var mu sync.Mutex
	var acked []history.Op
	var wg sync.WaitGroup
	for _, key := range keys {
		wg.Go(func() {
			client := r.rec.NewClient()
			for range 20 {
				op := r.kv.do(client, members[rand.IntN(len(members))], history.Write, key, fmt.Sprintf("d%d", r.values.Add(1)))
				switch op.Outcome {
				case history.OK:
					mu.Lock()
					acked = append(acked, op)
					mu.Unlock()
					return
				case history.Unknown:
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if len(acked) == 0 {
		r.fail("durability: none of %d writes was acknowledged before the crash", len(keys))
	}
	return acked
}

func lastReturn(ops []history.Op) int64 {
	var last int64
	for _, o := range ops {
		last = max(last, o.Return)
	}
	return last
}

// durabilityKillOne writes keys whose primary is one node, SIGKILLs that
// node the moment the last write is acknowledged, checks that every
// acknowledged write is readable through the survivors (after failover),
// restarts the node, and once it is in sync again checks its own copy.
func durabilityKillOne(r *run) {
	target := r.pick()
	keys := durabilityKeys(r, target, 12)
	acked := burst(r, keys)
	r.kill(target)
	r.logf("%s killed %s after the last of %d acknowledged writes (of %d) it was primary for",
		target.ID, time.Duration(r.rec.Now()-lastReturn(acked)).Round(time.Microsecond), len(acked), len(keys))

	var survivors []*tc.Node
	for _, n := range r.members() {
		if n != target {
			survivors = append(survivors, n)
		}
	}
	var wg sync.WaitGroup
	for _, w := range acked {
		wg.Go(func() {
			client := r.rec.NewClient()
			deadline := time.Now().Add(20 * time.Second)
			for {
				op := r.kv.do(client, survivors[rand.IntN(len(survivors))], history.Read, w.Key, "")
				if op.Outcome == history.OK {
					if !op.Found || op.Value != w.Value {
						r.fail("durability: acknowledged %s lost after SIGKILL of its primary %s: %s", w, target.ID, op)
					}
					return
				}
				if time.Now().After(deadline) {
					r.fail("durability: %s not readable through the survivors within 20 s of SIGKILL of its primary %s: %s", w, target.ID, op)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	r.logf("all %d acknowledged writes readable through the survivors", len(acked))
	r.restart(target)
	r.post = append(r.post, func() {
		// The restarted node's own copy (a stale read is served
		// locally by an in-sync owner).
		for _, w := range acked {
			resp, err := tc.GetKey(r.t.Context(), target.KV, w.Key, true)
			if err != nil || resp.Status != 200 || resp.Map()["value"] != w.Value {
				r.fail("durability: after restart and catch-up, %s answers %v %v to a stale read of %s, want %q", target.ID, err, tc.ErrText(resp), w.Key, w.Value)
			}
		}
	})
}

// durabilityKillAll SIGKILLs every node at once right after a burst of
// acknowledged writes, then restarts them all: every acknowledged write
// must survive (it was fsynced on every in-sync copy before the
// acknowledgement).
func durabilityKillAll(r *run) {
	keys := durabilityKeys(r, nil, 12)
	acked := burst(r, keys)
	members := r.members()
	r.action(false, "SIGKILL every node", func() {
		var wg sync.WaitGroup
		for _, n := range members {
			wg.Go(n.Kill)
		}
		wg.Wait()
	})
	r.logf("every node killed %s after the last of %d acknowledged writes (of %d)",
		time.Duration(r.rec.Now()-lastReturn(acked)).Round(time.Microsecond), len(acked), len(keys))
	r.sleep(time.Second)
	r.action(true, "restart every node", func() {
		for _, n := range members {
			n.Start()
		}
	})
}
