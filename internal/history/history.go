// Package history records what concurrent clients did to a key-value store
// (every operation with its call and return time and its outcome) and checks
// the record: linearizability per key with porcupine, and, explicitly, that
// no acknowledged write was lost.
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
	// Found is set for a Read that saw the key present.
	Found   bool    `json:"found,omitempty"`
	Call    int64   `json:"call"`
	Return  int64   `json:"return"`
	Outcome Outcome `json:"outcome"`
	// Node is the node the request was sent to; Err describes a failed or
	// unknown outcome. Both are for people only.
	Node string `json:"node,omitempty"`
	Err  string `json:"err,omitempty"`
}

func (o Op) String() string {
	var s string
	switch o.Kind {
	case Read:
		if o.Outcome != OK {
			s = fmt.Sprintf("get(%s)", o.Key)
		} else if o.Found {
			s = fmt.Sprintf("get(%s) -> %q", o.Key, o.Value)
		} else {
			s = fmt.Sprintf("get(%s) -> absent", o.Key)
		}
	case Write:
		s = fmt.Sprintf("set(%s, %q)", o.Key, o.Value)
	case Delete:
		s = fmt.Sprintf("delete(%s)", o.Key)
	}
	s = fmt.Sprintf("#%d client %d %s [%s, %s] %s", o.ID, o.Client, s, fmtNanos(o.Call), fmtNanos(o.Return), o.Outcome)
	if o.Node != "" {
		s += " via " + o.Node
	}
	if o.Err != "" {
		s += ": " + o.Err
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

// History is a recorded run.
type History struct {
	Ops    []Op    `json:"ops"`
	Events []Event `json:"events,omitempty"`
}

// Recorder collects operations from concurrent clients.
type Recorder struct {
	start time.Time

	mu      sync.Mutex
	ops     []Op
	events  []Event
	clients int
}

// NewRecorder starts a recorder; its clock starts now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Now is the recorder's clock: nanoseconds since it started.
func (r *Recorder) Now() int64 { return int64(time.Since(r.start)) }

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
	return History{Ops: slices.Clone(r.ops), Events: slices.Clone(r.events)}
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
	for _, o := range h.Ops {
		if c[o.Kind] == nil {
			c[o.Kind] = map[Outcome]int{}
		}
		c[o.Kind][o.Outcome]++
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
