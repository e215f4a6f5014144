package engine

import (
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// CopyStatus is one partition copy this node is sending to a replica as
// its primary: a catch-up from the history ("tail"), a whole copy ("full")
// or the reconcile of an in-sync replica after a change of primary
// ("reconcile"). It is what the dashboard shows as a migration's progress.
type CopyStatus struct {
	Partition int       `json:"partition"`
	Replica   string    `json:"replica"`
	How       string    `json:"how"`
	Sent      int       `json:"sent"`  // keys (full, reconcile) or writes (tail) sent so far
	Total     int       `json:"total"` // what the copy will send in all, as known when it began
	Started   time.Time `json:"started"`
}

// copyTracker holds the copies in flight. A copy's counter is advanced by
// the goroutine sending it and read by status calls, so it is atomic; the
// map changes only when a copy starts or ends.
type copyTracker struct {
	mu     sync.Mutex
	copies map[string]*copyProgress
}

type copyProgress struct {
	partition int
	replica   string
	how       string
	total     int
	started   time.Time
	sent      atomic.Int64
}

// start registers a copy; call done on the result when it ends.
func (t *copyTracker) start(p int, replica, how string, total int) *copyProgress {
	c := &copyProgress{partition: p, replica: replica, how: how, total: total, started: time.Now()}
	t.mu.Lock()
	if t.copies == nil {
		t.copies = map[string]*copyProgress{}
	}
	t.copies[strconv.Itoa(p)+"/"+replica] = c
	t.mu.Unlock()
	return c
}

func (t *copyTracker) done(c *copyProgress) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := strconv.Itoa(c.partition) + "/" + c.replica
	if t.copies[k] == c {
		delete(t.copies, k)
	}
}

// add counts n more items sent; a nil progress counts nothing.
func (c *copyProgress) add(n int) {
	if c != nil {
		c.sent.Add(int64(n))
	}
}

// Copies lists the partition copies this node is sending now, by partition
// and replica.
func (s *Engine) Copies() []CopyStatus { return s.copies.list() }

func (t *copyTracker) list() []CopyStatus {
	t.mu.Lock()
	out := make([]CopyStatus, 0, len(t.copies))
	for _, c := range t.copies {
		out = append(out, CopyStatus{Partition: c.partition, Replica: c.replica, How: c.how,
			Sent: int(c.sent.Load()), Total: c.total, Started: c.started})
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b CopyStatus) int {
		if a.Partition != b.Partition {
			return a.Partition - b.Partition
		}
		if a.Replica < b.Replica {
			return -1
		}
		if a.Replica > b.Replica {
			return 1
		}
		return 0
	})
	return out
}
