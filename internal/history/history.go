// Package history records what concurrent clients did to a key-value store
// (every operation with its call and return time and its outcome) and checks
// the record: linearizability per key with porcupine, and, explicitly, that
// no acknowledged write was lost. Histories of conditional writes are
// checked against revisions too (CheckRevisions), and reads against TTL
// deadlines (CheckTTL). Batches (POST /kv/batch) are recorded as such and
// as their single operations: atomic ones are checked for all or nothing
// (CheckBatches), and the bank workload's for conserving money
// (CheckBank). Range reads (GET /kv/scan, every page) are checked against
// the writes (CheckScans), and what watchers (GET /kv/watch) received
// against the writes and the final state (CheckWatches).
//
// Outcomes follow the KV API's contract:
//
//   - OK: the operation took effect (a read returned a value or "absent").
//   - Failed: the operation certainly did not take effect (503 unavailable,
//     or the connection was refused before anything was sent). Failed
//     operations constrain nothing and are left out of the check.
//   - Unknown: the operation may or may not have taken effect (a timeout, a
//     reset connection, 503 outcome_unknown, a 5xx without a code). An
//     unknown write is kept as a pending operation that may take effect at
//     any time after its call, or never; an unknown read is left out, since
//     a read with no answer constrains nothing.
//   - A write whose condition failed (409 condition_failed) is OK with
//     CondFailed set: it certainly changed nothing, and its answer shows the
//     key's state (Found, Revision).
package history

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"sync"
	"time"
)

// Kind is the type of an operation.
type Kind string

// Operation kinds.
const (
	Read   Kind = "read"
	Write  Kind = "write"
	Delete Kind = "delete"
)

// Outcome is what the client learned about an operation.
type Outcome string

// Outcomes.
const (
	OK      Outcome = "ok"
	Failed  Outcome = "failed"
	Unknown Outcome = "unknown"
)

// Op is one client operation on one key. Times are nanoseconds since the
// recorder started (monotonic clock).
type Op struct {
	ID     int    `json:"id"`
	Client int    `json:"client"`
	Kind   Kind   `json:"kind"`
	Key    string `json:"key"`
	// Value is the value written (Write), or the value read (Read with
	// Found).
	Value string `json:"value,omitempty"`
	// Found is set when the answer said the key was present: a Read that
	// found it, a Delete that deleted something ("deleted": true), a write
	// whose condition failed on an existing key ("exists": true).
	Found   bool    `json:"found,omitempty"`
	Call    int64   `json:"call"`
	Return  int64   `json:"return"`
	Outcome Outcome `json:"outcome"`

	// The request's options. HasIfRevision makes a write conditional on
	// the key's revision being IfRevision (0: the key must not exist);
	// IfExists on the key existing. TTL is the TTL a set asked for (0:
	// none). Stale marks a read with consistency=stale.
	HasIfRevision bool          `json:"has_if_revision,omitempty"`
	IfRevision    uint64        `json:"if_revision,omitempty"`
	IfExists      bool          `json:"if_exists,omitempty"`
	TTL           time.Duration `json:"ttl,omitempty"`
	Stale         bool          `json:"stale,omitempty"`

	// What an OK answer said beyond Found and Value. Revision is the
	// revision a write gave the key (0 for a delete that found nothing), or
	// the one a read found, or with CondFailed the key's current revision
	// (0 if it does not exist). Deadline is the key's TTL deadline from
	// expires_at, in recorder time (Recorder.Wall; 0: none). CondFailed
	// marks a write whose condition did not hold. Partial marks an OK write
	// whose answer's body was cut short: it was applied, but its revision
	// and deadline are unknown.
	Revision   uint64 `json:"revision,omitempty"`
	Deadline   int64  `json:"deadline,omitempty"`
	CondFailed bool   `json:"cond_failed,omitempty"`
	Partial    bool   `json:"partial,omitempty"`
	// Node is the node the request was sent to; Err describes a failed or
	// unknown outcome. Both are for people only.
	Node string `json:"node,omitempty"`
	Err  string `json:"err,omitempty"`
	// Batch is the ID of the batch the operation was part of (batch IDs
	// start at 1; 0: a request of its own).
	Batch int `json:"batch,omitempty"`
}

func (o Op) String() string {
	var s string
	switch o.Kind {
	case Read:
		stale := ""
		if o.Stale {
			stale = ", stale"
		}
		if o.Outcome != OK {
			s = fmt.Sprintf("get(%s%s)", o.Key, stale)
		} else if o.Found {
			s = fmt.Sprintf("get(%s%s) -> %q%s", o.Key, stale, o.Value, o.answer())
		} else {
			s = fmt.Sprintf("get(%s%s) -> absent", o.Key, stale)
		}
	case Write:
		s = fmt.Sprintf("set(%s, %q%s)", o.Key, o.Value, o.options())
	case Delete:
		s = fmt.Sprintf("delete(%s%s)", o.Key, o.options())
	}
	if o.Kind != Read && o.Outcome == OK {
		switch {
		case o.CondFailed:
			exists := "absent"
			if o.Found {
				exists = "exists"
			}
			s += fmt.Sprintf(" -> condition failed (current revision %d, %s)", o.Revision, exists)
		case o.Partial:
			s += " -> applied (answer cut short)"
		case o.Kind == Delete && !o.Found && o.Revision == 0:
			s += " -> nothing to delete"
		case o.Revision != 0 || o.Deadline != 0:
			s += " ->" + o.answer()
		}
	}
	s = fmt.Sprintf("#%d client %d %s [%s, %s] %s", o.ID, o.Client, s, fmtNanos(o.Call), fmtNanos(o.Return), o.Outcome)
	if o.Batch != 0 {
		s += fmt.Sprintf(" in batch %d", o.Batch)
	}
	if o.Node != "" {
		s += " via " + o.Node
	}
	if o.Err != "" {
		s += ": " + o.Err
	}
	return s
}

// options describes a write's conditions and TTL.
func (o Op) options() string {
	s := ""
	if o.HasIfRevision {
		s += fmt.Sprintf(", if_revision=%d", o.IfRevision)
	}
	if o.IfExists {
		s += ", if_exists"
	}
	if o.TTL != 0 {
		s += ", ttl=" + o.TTL.String()
	}
	return s
}

// answer describes the revision and deadline an answer reported.
func (o Op) answer() string {
	s := ""
	if o.Revision != 0 {
		s += fmt.Sprintf(" rev %d", o.Revision)
	}
	if o.Deadline != 0 {
		s += " expires at " + fmtNanos(o.Deadline)
	}
	return s
}

func fmtNanos(ns int64) string {
	if ns == math.MaxInt64 {
		return "∞"
	}
	return time.Duration(ns).Round(time.Microsecond).String()
}

// Event is something the test did to the system (a fault, a heal), kept
// with the history and shown in the visualisation.
type Event struct {
	Start       int64  `json:"start"`
	End         int64  `json:"end"`
	Description string `json:"description"`
}

// History is a recorded run: the operations, the batches, the range reads
// (scans) and what the watchers received, and the test's actions.
type History struct {
	Ops     []Op    `json:"ops"`
	Batches []Batch `json:"batches,omitempty"`
	Scans   []Scan  `json:"scans,omitempty"`
	Watches []Watch `json:"watches,omitempty"`
	Events  []Event `json:"events,omitempty"`
}

// Recorder collects operations from concurrent clients.
type Recorder struct {
	start time.Time

	mu      sync.Mutex
	ops     []Op
	batches []Batch
	scans   []Scan
	watches []Watch
	events  []Event
	clients int
}

// NewRecorder starts a recorder; its clock starts now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Now is the recorder's clock: nanoseconds since it started.
func (r *Recorder) Now() int64 { return int64(time.Since(r.start)) }

// Wall converts a wall-clock time (such as an expires_at the server
// reported) to recorder time. It compares wall clocks, so a step of the
// machine's clock during the run shifts the result by as much.
func (r *Recorder) Wall(t time.Time) int64 { return int64(t.Round(0).Sub(r.start.Round(0))) }

// NewClient returns a fresh client ID. A client whose operation ended with
// an unknown outcome must continue under a new ID, as that operation stays
// pending forever.
func (r *Recorder) NewClient() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := r.clients
	r.clients++
	return id
}

// Add records a finished operation and returns it with its ID set. For an
// unknown outcome the return time is kept as observed; the check treats the
// operation as pending.
func (r *Recorder) Add(op Op) Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	op.ID = len(r.ops)
	r.ops = append(r.ops, op)
	return op
}

// Event records a fault or other action of the test between start and end
// (recorder times; end may equal start).
func (r *Recorder) Event(start, end int64, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, Event{Start: start, End: end, Description: fmt.Sprintf(format, args...)})
}

// History returns a copy of everything recorded so far.
func (r *Recorder) History() History {
	r.mu.Lock()
	defer r.mu.Unlock()
	return History{Ops: slices.Clone(r.ops), Batches: slices.Clone(r.batches), Scans: slices.Clone(r.scans),
		Watches: slices.Clone(r.watches), Events: slices.Clone(r.events)}
}

// Keys lists the keys the history touches, sorted.
func (h History) Keys() []string {
	seen := map[string]bool{}
	var keys []string
	for _, o := range h.Ops {
		if !seen[o.Key] {
			seen[o.Key] = true
			keys = append(keys, o.Key)
		}
	}
	sort.Strings(keys)
	return keys
}

// ByKey returns the operations on key, in recording order.
func (h History) ByKey(key string) []Op {
	var out []Op
	for _, o := range h.Ops {
		if o.Key == key {
			out = append(out, o)
		}
	}
	return out
}

// Counts summarises outcomes per kind, for logs.
func (h History) Counts() string {
	c := map[Kind]map[Outcome]int{}
	condFailed := map[Kind]int{}
	for _, o := range h.Ops {
		if c[o.Kind] == nil {
			c[o.Kind] = map[Outcome]int{}
		}
		c[o.Kind][o.Outcome]++
		if o.CondFailed {
			condFailed[o.Kind]++
		}
	}
	s := ""
	for _, k := range []Kind{Write, Delete, Read} {
		m := c[k]
		if m == nil {
			continue
		}
		if s != "" {
			s += "; "
		}
		s += fmt.Sprintf("%s: %d ok, %d failed, %d unknown", k, m[OK], m[Failed], m[Unknown])
		if n := condFailed[k]; n > 0 {
			s += fmt.Sprintf(" (%d of the ok a failed condition)", n)
		}
	}
	return s
}

// Save writes the history as indented JSON.
func (h History) Save(path string) error {
	b, err := json.MarshalIndent(h, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Load reads a history written by Save.
func Load(path string) (History, error) {
	var h History
	b, err := os.ReadFile(path)
	if err != nil {
		return h, err
	}
	err = json.Unmarshal(b, &h)
	return h, err
}
