package history

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// input and output are what porcupine sees of an operation.
type input struct {
	Kind  Kind
	Value string
}

type output struct {
	Found   bool
	Value   string
	Pending bool
}

// register is the state of one key: absent, or present with a value.
type register struct {
	Present bool
	Value   string
}

// Model is a porcupine model of a key-value store as independent registers,
// partitioned by key: every key starts absent; a write sets it, a delete
// makes it absent, and a read must return its current state.
var Model = porcupine.Model{
	Partition: byKey,
	Init:      func() any { return register{} },
	Step: func(state, in, out any) (bool, any) {
		st := state.(register)
		i := in.(input)
		switch i.Kind {
		case Write:
			return true, register{Present: true, Value: i.Value}
		case Delete:
			return true, register{}
		default:
			o := out.(output)
			if o.Found != st.Present || (o.Found && o.Value != st.Value) {
				return false, st
			}
			return true, st
		}
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(input), out.(output)
		switch i.Kind {
		case Write:
			if o.Pending {
				return fmt.Sprintf("set(%q) unknown outcome", i.Value)
			}
			return fmt.Sprintf("set(%q)", i.Value)
		case Delete:
			if o.Pending {
				return "delete() unknown outcome"
			}
			return "delete()"
		default:
			if !o.Found {
				return "get() -> absent"
			}
			return fmt.Sprintf("get() -> %q", o.Value)
		}
	},
	DescribeState: func(state any) string {
		st := state.(register)
		if !st.Present {
			return "absent"
		}
		return fmt.Sprintf("%q", st.Value)
	},
	DescribeOperationMetadata: describeMeta,
}

type meta struct {
	key  string
	desc string
}

// byKey partitions operations by key: keys are independent.
func byKey(ops []porcupine.Operation) [][]porcupine.Operation {
	parts := map[string][]porcupine.Operation{}
	var keys []string
	for _, o := range ops {
		k := o.Metadata.(meta).key
		if _, ok := parts[k]; !ok {
			keys = append(keys, k)
		}
		parts[k] = append(parts[k], o)
	}
	sort.Strings(keys)
	out := make([][]porcupine.Operation, 0, len(keys))
	for _, k := range keys {
		out = append(out, parts[k])
	}
	return out
}

func describeMeta(m any) string {
	if m == nil {
		return ""
	}
	return m.(meta).desc
}

// pendingTime is the return time given to operations with an unknown
// outcome: after every other operation's call and return.
func pendingTime(ops []Op) int64 {
	var last int64
	for _, o := range ops {
		last = max(last, o.Call, o.Return)
	}
	return last + 1
}

// Operations converts ops into porcupine operations for Model: failed
// operations, writes whose condition failed (they changed nothing; Model
// has no revisions to check their answer against) and reads without an
// answer are dropped, and writes with an unknown outcome become pending
// (their return time is after every other operation's).
func Operations(ops []Op) []porcupine.Operation {
	pending := pendingTime(ops)
	out := make([]porcupine.Operation, 0, len(ops))
	for _, o := range ops {
		if o.Outcome == Failed || o.CondFailed || (o.Kind == Read && o.Outcome != OK) {
			continue
		}
		p := porcupine.Operation{
			ClientId: o.Client,
			Input:    input{Kind: o.Kind, Value: o.Value},
			Call:     o.Call,
			Return:   o.Return,
			Metadata: meta{key: o.Key, desc: o.String()},
		}
		if o.Kind == Read {
			p.Input = input{Kind: Read}
			p.Output = output{Found: o.Found, Value: o.Value}
		} else {
			p.Output = output{Pending: o.Outcome == Unknown}
			if o.Outcome == Unknown {
				p.Return = pending
			}
		}
		out = append(out, p)
	}
	return out
}

// KeyResult is the linearizability verdict for one key.
type KeyResult struct {
	Key     string
	Result  porcupine.CheckResult
	Ops     int // operations checked
	Pending int // writes with an unknown outcome among them
	Elapsed time.Duration

	info porcupine.LinearizationInfo
}

// Report is the linearizability verdict for a history.
type Report struct {
	Keys    []KeyResult
	Timeout time.Duration

	events []Event
	model  porcupine.Model // the model checked against, for Visualize
}

// OK reports whether every key was found linearizable. A check that timed
// out (porcupine's Unknown) is not OK.
func (r Report) OK() bool {
	for _, k := range r.Keys {
		if k.Result != porcupine.Ok {
			return false
		}
	}
	return true
}

// String describes the verdict per key.
func (r Report) String() string {
	s := ""
	for _, k := range r.Keys {
		verdict := string(k.Result)
		switch k.Result {
		case porcupine.Illegal:
			verdict = "NOT LINEARIZABLE"
		case porcupine.Unknown:
			verdict = fmt.Sprintf("UNKNOWN (checker timed out after %s)", r.Timeout)
		}
		s += fmt.Sprintf("key %q: %s (%d ops, %d pending writes, %s)\n", k.Key, verdict, k.Ops, k.Pending, k.Elapsed.Round(time.Millisecond))
	}
	return s
}

// Check checks every key of h for linearizability against Model, each
// with the given timeout (0: none).
func Check(h History, timeout time.Duration) Report {
	return checkModel(h, timeout, Model, func(ops []Op) ([]porcupine.Operation, int) {
		po := Operations(ops)
		pending := 0
		for _, o := range po {
			if o.Output.(output).Pending {
				pending++
			}
		}
		return po, pending
	})
}

// checkModel checks every key of h against model; convert gives a key's
// porcupine operations and how many of them are pending.
func checkModel(h History, timeout time.Duration, model porcupine.Model, convert func([]Op) ([]porcupine.Operation, int)) Report {
	rep := Report{Timeout: timeout, events: h.Events, model: model}
	for _, key := range h.Keys() {
		ops, pending := convert(h.ByKey(key))
		start := time.Now()
		res, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
		rep.Keys = append(rep.Keys, KeyResult{Key: key, Result: res, Ops: len(ops), Pending: pending, Elapsed: time.Since(start), info: info})
	}
	return rep
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// Visualize writes porcupine's HTML visualisation of every key that is not
// OK into dir (or of every key if all is set) and returns the files.
func (r Report) Visualize(dir string, all bool) ([]string, error) {
	var files []string
	for _, k := range r.Keys {
		if k.Result == porcupine.Ok && !all {
			continue
		}
		info := k.info
		var ann []porcupine.Annotation
		for _, e := range r.events {
			ann = append(ann, porcupine.Annotation{Tag: "nemesis", Start: e.Start, End: e.End, Description: e.Description})
		}
		info.AddAnnotations(ann)
		path := filepath.Join(dir, "linearizability-"+unsafeChars.ReplaceAllString(k.Key, "_")+".html")
		if err := porcupine.VisualizePath(r.model, info, path); err != nil {
			return files, fmt.Errorf("visualise key %q: %w", k.Key, err)
		}
		files = append(files, path)
	}
	return files, nil
}

// LostWrites checks, for each final read in finals (a successful read of a
// key made after every other operation on it had returned or been given
// up), that no acknowledged write is lost: the value read must come from a
// write that no acknowledged write followed in real time. It returns one
// message per violation (also for a value that no operation ever wrote).
//
// Linearizability of the history including the final reads implies this;
// it is checked on its own to name the lost write plainly.
func LostWrites(h History, finals []Op) []string {
	var problems []string
	for _, f := range finals {
		if f.Kind != Read || f.Outcome != OK {
			problems = append(problems, fmt.Sprintf("key %q: final read %s did not succeed", f.Key, f))
			continue
		}
		var writes []Op
		for _, o := range h.ByKey(f.Key) {
			// A write whose condition failed changed nothing.
			if o.Kind != Read && o.Outcome != Failed && !o.CondFailed && o.ID != f.ID && o.Call < f.Call {
				writes = append(writes, o)
			}
		}
		ret := func(o Op) int64 {
			if o.Outcome == Unknown {
				return math.MaxInt64 // may take effect at any time
			}
			return o.Return
		}
		// The write the final read observed: the one that wrote its value
		// (values are unique), or for "absent" the latest-ending delete,
		// or the initial state.
		var source *Op
		initial := Op{ID: -1, Return: math.MinInt64}
		if f.Found {
			for i := range writes {
				if writes[i].Kind == Write && writes[i].Value == f.Value {
					source = &writes[i]
					break
				}
			}
			if source == nil {
				problems = append(problems, fmt.Sprintf("key %q: final read %s returned a value no operation wrote", f.Key, f))
				continue
			}
		} else {
			source = &initial
			for i := range writes {
				if writes[i].Kind == Delete && ret(writes[i]) > ret(*source) {
					source = &writes[i]
				}
			}
		}
		for _, w := range writes {
			if w.Outcome == OK && w.ID != source.ID && ret(*source) < w.Call {
				what := "the initial absent state"
				if source.ID >= 0 {
					what = source.String()
				}
				problems = append(problems, fmt.Sprintf("key %q: acknowledged write lost: %s was acknowledged, but the final read %s shows %s, which it had overwritten",
					f.Key, w, f, what))
				break
			}
		}
	}
	return problems
}

// SaveAll writes the history as JSON and, if rep is not nil, the
// visualisation of each failing key into dir. It returns the files written.
func SaveAll(dir string, h History, rep *Report) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "history.json")
	if err := h.Save(path); err != nil {
		return nil, err
	}
	files := []string{path}
	if rep != nil {
		vf, err := rep.Visualize(dir, false)
		files = append(files, vf...)
		if err != nil {
			return files, err
		}
	}
	return files, nil
}
