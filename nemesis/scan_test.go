package nemesis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/internal/history"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// The scan load's key set and scanners.
const (
	// scanKeys keys, spread over the partitions, each created and
	// deleted again and again (sets and deletes equally likely), so that
	// about half exist at any time.
	scanKeys            = 24
	scanSetP, scanDelP  = 0.4, 0.4
	scanners            = 2
	scanLimitMin        = 2
	scanLimitMax        = 5
	scanPageAttempts    = 5
	scanPagesMax        = 1000
	scanFinalLimit      = 3
	scanStaleOneIn      = 5 // one scan in scanStaleOneIn is stale
	scanNoValuesOneIn   = 4 // one in scanNoValuesOneIn asks for no values
	scanPauseMin        = 10 * time.Millisecond
	scanPauseMax        = 30 * time.Millisecond
	scanPageRetryPause  = 50 * time.Millisecond
	scanFinalRetryPause = 200 * time.Millisecond
)

// newScanLoad is the register load on a key set whose keys are created
// and deleted over time, with scanners beside the clients: each loops
// scanning the key set's prefix with a small limit (2-5, so that a scan
// spans several pages), every page through another random node (a page
// that fails is retried through others, up to 5 attempts, or the scan is
// recorded as failed), mostly linearizable, one in 5 stale, one in 4
// without values. After convergence every member scans the key set once
// more. history.CheckScans then checks every scan against the writes:
// a key that existed all through a scan is returned, a key deleted before
// it and not written again is not, nothing is returned twice, out of
// order, outside the range, older than a write acknowledged before the
// scan, or that no set wrote. The watchers, the final reads and writes
// and the linearizability check are the register load's.
func newScanLoad(r *run) load {
	for i := range scanKeys {
		r.keys = append(r.keys, fmt.Sprintf("nemesis-%d-s%02d", r.seed%100000, i))
	}
	l := newRegisterLoadOn(r, "scan")
	l.w.setP, l.w.deleteP = scanSetP, scanDelP
	l.scans = &scanSet{r: r, prefix: fmt.Sprintf("nemesis-%d-s", r.seed%100000)}
	return l
}

// scanSet is a run's scanners.
type scanSet struct {
	r      *run
	prefix string
	stop   chan struct{}
	wg     sync.WaitGroup
}

func (s *scanSet) start(seed int64) {
	s.stop = make(chan struct{})
	for i := range scanners {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(2000+i)))
		s.wg.Go(func() { s.scanner(rng) })
	}
}

func (s *scanSet) halt() {
	if s.stop != nil {
		close(s.stop)
		s.wg.Wait()
		s.stop = nil
	}
}

func (s *scanSet) scanner(rng *rand.Rand) {
	r := s.r
	client := r.rec.NewClient()
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		limit := scanLimitMin + rng.IntN(scanLimitMax-scanLimitMin+1)
		r.rec.AddScan(r.scan(client, r.clientTargets(), rng.IntN, s.prefix, limit, rng.IntN(scanStaleOneIn) == 0, rng.IntN(scanNoValuesOneIn) != 0))
		select {
		case <-s.stop:
			return
		case <-time.After(scanPauseMin + time.Duration(rng.Int64N(int64(scanPauseMax-scanPauseMin)))):
		}
	}
}

// prefixEnd is the first key after every key with prefix p (false: none).
func prefixEnd(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// scan reads every page of the keys with prefix, limit at a time, each
// page through another node picked with pick (retrying a page that fails
// through others, up to scanPageAttempts times), and returns the scan (not
// recorded).
func (r *run) scan(client int, nodes []*tc.Node, pick func(int) int, prefix string, limit int, stale, values bool) (s history.Scan) {
	s = history.Scan{Client: client, Start: prefix, Limit: limit, Stale: stale, Values: values}
	s.End, s.HasEnd = prefixEnd(prefix)
	q := url.Values{"prefix": {prefix}, "limit": {strconv.Itoa(limit)}}
	if !values {
		q.Set("values", "false")
	}
	if stale {
		q.Set("consistency", "stale")
	}
	s.Call = r.rec.Now()
	defer func() { s.Return = r.rec.Now() }() // s is the named result
	last := -1
	failures := 0
	for len(s.Pages) < scanPagesMax {
		i := pick(len(nodes))
		if i == last && len(nodes) > 1 {
			i = (i + 1 + pick(len(nodes)-1)) % len(nodes)
		}
		last = i
		node := nodes[i]
		page := history.ScanPage{Node: node.ID, Call: r.rec.Now()}
		ans, status, err := scanPage(context.Background(), r.kv.hc, node, q)
		page.Return, page.Count, page.Token = r.rec.Now(), len(ans.Items), ans.Token
		switch {
		case err == nil && status == http.StatusOK:
		case err == nil && status >= 400 && status < 500:
			page.Err = fmt.Sprintf("%d %s: %s", status, ans.Code, ans.Error)
			s.Pages = append(s.Pages, page)
			r.fail("scan: unexpected answer to page %d of a scan of %q through %s: %s", len(s.Pages), prefix, node.ID, page.Err)
			s.Outcome, s.Err = history.Failed, page.Err
			return s
		default:
			page.Err = fmt.Sprintf("%d %s: %s (%v)", status, ans.Code, ans.Error, err)
			s.Pages = append(s.Pages, page)
			if failures++; failures >= scanPageAttempts {
				s.Outcome, s.Err = history.Failed, fmt.Sprintf("%d attempts at page %d failed; the last: %s", failures, len(s.Pages), page.Err)
				return s
			}
			time.Sleep(scanPageRetryPause)
			continue
		}
		failures = 0
		s.Pages = append(s.Pages, page)
		if ans.Count != len(ans.Items) {
			r.fail("scan: a page through %s says count %d but holds %d items", node.ID, ans.Count, len(ans.Items))
		}
		for _, it := range ans.Items {
			item := history.ScanItem{Key: it.Key, Revision: it.Revision}
			switch {
			case values && it.Value == nil:
				r.fail("scan: a page through %s (values=true) has %q without a value", node.ID, it.Key)
			case !values && it.Value != nil:
				r.fail("scan: a page through %s (values=false) has %q with a value", node.ID, it.Key)
			case values:
				item.Value, item.HasValue = *it.Value, true
			}
			s.Items = append(s.Items, item)
		}
		if ans.NextCursor == "" {
			s.Outcome = history.OK
			return s
		}
		q.Set("cursor", ans.NextCursor)
	}
	r.fail("scan: a scan of %q with limit %d did not end after %d pages", prefix, limit, scanPagesMax)
	s.Outcome, s.Err = history.Failed, "too many pages"
	return s
}

// final scans the key set through every member, linearizably, retrying
// until a scan succeeds or the deadline (recorder time) passes: every key
// must be there (each had a final write).
func (s *scanSet) final(deadline int64) {
	r := s.r
	var wg sync.WaitGroup
	for _, n := range r.members() {
		wg.Go(func() {
			client := r.rec.NewClient()
			for {
				sc := r.rec.AddScan(r.scan(client, []*tc.Node{n}, rand.IntN, s.prefix, scanFinalLimit, false, true))
				if sc.Outcome == history.OK {
					return
				}
				if r.rec.Now() > deadline {
					r.fail("scan: no scan through %s succeeded after convergence; the last: %s", n.ID, sc)
					return
				}
				time.Sleep(scanFinalRetryPause)
			}
		})
	}
	wg.Wait()
}

func (s *scanSet) check(h history.History) {
	r := s.r
	rep := history.CheckScans(h)
	for i, p := range rep.Problems {
		if i == maxProblems {
			r.fail("scan: ... and %d more scan violations (all in the saved history)", len(rep.Problems)-maxProblems)
			break
		}
		r.fail("scan: %s", p)
	}
	if rep.Checked-rep.Stale == 0 {
		r.fail("scan: not one linearizable scan succeeded (%d failed)", rep.Failed)
	}
	if rep.OK() {
		pages := 0
		for _, sc := range h.Scans {
			pages += len(sc.Pages)
		}
		r.logf("scan: %d scans (%d stale; %d page attempts) agree with the writes: %d times a key that existed all through a scan was returned, %d times one deleted before was not; %d scans failed (not checked)",
			rep.Checked, rep.Stale, pages, rep.MustHave, rep.MustNot, rep.Failed)
	}
}
