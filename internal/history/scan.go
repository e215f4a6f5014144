package history

import (
	"fmt"
	"slices"
	"strings"
)

// ScanItem is one key a scan returned.
type ScanItem struct {
	Key      string `json:"key"`
	Value    string `json:"value,omitempty"`
	HasValue bool   `json:"has_value,omitempty"` // the scan asked for values
	Revision uint64 `json:"revision"`
}

// ScanPage is one page of a scan (one GET /kv/scan), or one failed
// attempt at it.
type ScanPage struct {
	Node   string `json:"node"`
	Call   int64  `json:"call"`
	Return int64  `json:"return"`
	Count  int    `json:"count"`
	// Token is the watch token the page returned: every page of a scan
	// carries its first page's.
	Token string `json:"token,omitempty"`
	// Err is why the attempt failed ("": it did not).
	Err string `json:"err,omitempty"`
}

// Scan is one range read, every page of it: the keys in [Start, End) (no
// end when !HasEnd), Limit at a time.
type Scan struct {
	ID     int    `json:"id"`
	Client int    `json:"client"`
	Start  string `json:"start"`
	End    string `json:"end,omitempty"`
	HasEnd bool   `json:"has_end,omitempty"`
	Limit  int    `json:"limit"`
	Stale  bool   `json:"stale,omitempty"`
	Values bool   `json:"values,omitempty"`
	// Call is when the first page was asked for, Return when the last
	// was answered.
	Call   int64 `json:"call"`
	Return int64 `json:"return"`
	// Outcome is OK when every page was answered, up to one with no next
	// cursor (the range was exhausted); otherwise Failed, and the scan
	// constrains nothing.
	Outcome Outcome    `json:"outcome"`
	Items   []ScanItem `json:"items"`
	Pages   []ScanPage `json:"pages"`
	Err     string     `json:"err,omitempty"`
}

func (s Scan) String() string {
	rng := fmt.Sprintf("[%q, %q)", s.Start, s.End)
	if !s.HasEnd {
		rng = fmt.Sprintf("[%q, ∞)", s.Start)
	}
	kind := "linearizable"
	if s.Stale {
		kind = "stale"
	}
	var nodes []string
	for _, p := range s.Pages {
		if p.Err == "" {
			nodes = append(nodes, p.Node)
		}
	}
	str := fmt.Sprintf("scan %d client %d %s %s limit %d [%s, %s] %s: %d keys in %d pages (via %s)",
		s.ID, s.Client, kind, rng, s.Limit, fmtNanos(s.Call), fmtNanos(s.Return), s.Outcome, len(s.Items), len(nodes), strings.Join(nodes, ","))
	if s.Err != "" {
		str += ": " + s.Err
	}
	return str
}

// Contains reports whether key is in the scan's range.
func (s Scan) Contains(key string) bool {
	return key >= s.Start && (!s.HasEnd || key < s.End)
}

// AddScan records a finished scan and returns it with its ID set (from 1).
func (r *Recorder) AddScan(s Scan) Scan {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.ID = len(r.scans) + 1
	r.scans = append(r.scans, s)
	return s
}

// ScanReport is CheckScans' verdict.
type ScanReport struct {
	// Problems has one message per violation.
	Problems []string
	// Checked counts the scans checked (OK), Stale those of them that
	// were stale, Failed those left out. MustHave counts the keys that a
	// linearizable scan had to return (they existed all through it),
	// MustNot those it must not (deleted before it began and not
	// written again before it ended): how much the run tested.
	Checked, Stale, Failed, MustHave, MustNot int
}

// OK reports whether no problem was found.
func (r ScanReport) OK() bool { return len(r.Problems) == 0 }

// CheckScans checks every scan of h against its writes (single operations
// and the ops of batches); values must be unique per key. A failed scan
// is left out. For every other:
//
//   - its keys are in its range, in strictly increasing byte order (none
//     twice); every page carries the first page's token;
//   - every key it returned was written by a set (not certainly refused)
//     invoked before the scan ended, and with values its value is one of
//     those; an item whose value's set was acknowledged shows that set's
//     revision;
//
// and, unless stale (each partition's part of a page is then a
// linearizable read):
//
//   - it returns every key of its range that existed all through it: an
//     acknowledged set without a TTL returned before the scan began, and
//     no delete that may have taken effect after that set (one not
//     certainly refused nor certainly a no-op, and not acknowledged before
//     the set was invoked) was invoked before the scan ended, nor a set
//     with a TTL;
//   - it returns no key whose delete was acknowledged before the scan
//     began, unless a set that may have taken effect after that delete
//     (not certainly refused, and not acknowledged before the delete was
//     invoked) was invoked before the scan ended;
//   - no item is older than a write to its key acknowledged before the
//     scan began (revisions).
func CheckScans(h History) ScanReport {
	var rep ScanReport
	byKey := map[string][]Op{}
	for _, o := range h.Ops {
		if o.Kind != Read {
			byKey[o.Key] = append(byKey[o.Key], o)
		}
	}
	keys := sortedKeys(byKey)
	for _, s := range h.Scans {
		if s.Outcome != OK {
			rep.Failed++
			continue
		}
		rep.Checked++
		if s.Stale {
			rep.Stale++
		}
		problem := func(format string, args ...any) {
			rep.Problems = append(rep.Problems, s.String()+": "+fmt.Sprintf(format, args...))
		}
		token := ""
		for i, p := range s.Pages {
			if p.Err != "" {
				continue
			}
			if token == "" {
				token = p.Token
			} else if p.Token != token {
				problem("page %d (via %s) carries the token %s, not the first page's %s", i+1, p.Node, shortToken(p.Token), shortToken(token))
			}
		}
		returned := map[string]ScanItem{}
		for i, it := range s.Items {
			if !s.Contains(it.Key) {
				problem("returned %q, outside its range", it.Key)
			}
			if i > 0 && it.Key <= s.Items[i-1].Key {
				problem("returned %q after %q: keys out of order or twice", it.Key, s.Items[i-1].Key)
			}
			returned[it.Key] = it
			checkScanItem(problem, s, it, byKey[it.Key])
		}
		if s.Stale {
			continue
		}
		for _, key := range keys {
			if !s.Contains(key) {
				continue
			}
			ops := byKey[key]
			_, got := returned[key]
			if must, why := mustExist(s, ops); must {
				rep.MustHave++
				if !got {
					problem("missed %q, which existed all through it: %s", key, why)
				}
			}
			if must, why := mustBeAbsent(s, ops); must {
				rep.MustNot++
				if got {
					problem("returned %q (revision %d), which was deleted before it began and not written again: %s", key, returned[key].Revision, why)
				}
			}
		}
	}
	return rep
}

// mayApply reports whether w may have taken effect: not certainly refused.
func mayApply(w Op) bool { return w.Outcome != Failed && !w.CondFailed }

// noop reports whether w is a delete that certainly changed nothing.
func noop(w Op) bool { return w.Kind == Delete && w.Outcome == OK && !w.Partial && !w.Found }

func checkScanItem(problem func(string, ...any), s Scan, it ScanItem, ops []Op) {
	var src *Op
	written := false
	for i, w := range ops {
		if w.Kind != Write || !mayApply(w) || w.Call >= s.Return {
			continue
		}
		written = true
		if it.HasValue && w.Value == it.Value {
			src = &ops[i]
		}
	}
	switch {
	case !written:
		problem("returned %q, which no set invoked before it ended wrote", it.Key)
		return
	case it.HasValue && src == nil:
		problem("returned %q = %q, a value no set invoked before it ended wrote", it.Key, it.Value)
		return
	case src != nil && src.Outcome == OK && !src.Partial && src.Revision != it.Revision:
		problem("returned %q = %q at revision %d, but its set was acknowledged with revision %d: %s", it.Key, it.Value, it.Revision, src.Revision, *src)
	}
	if s.Stale {
		return
	}
	for _, w := range ops {
		if w.Outcome == OK && !w.CondFailed && !w.Partial && w.Revision > it.Revision && w.Return < s.Call {
			problem("returned %q at revision %d, older than %s, acknowledged before the scan began", it.Key, it.Revision, w)
			return
		}
	}
}

// mustExist reports whether the key of ops existed all through s, and
// why.
func mustExist(s Scan, ops []Op) (bool, string) {
	// The latest-invoked acknowledged set without a TTL that returned
	// before s began: if any set shows that the key existed all through
	// s, it does.
	var set *Op
	for i, w := range ops {
		if w.Kind == Write && w.Outcome == OK && !w.CondFailed && w.TTL == 0 && w.Return < s.Call && (set == nil || w.Call > set.Call) {
			set = &ops[i]
		}
	}
	if set == nil {
		return false, ""
	}
	for _, d := range ops {
		// The deletes, and the sets with a TTL, that may have removed
		// the key after the set by the end of the scan.
		removes := d.Kind == Delete && !noop(d) || d.Kind == Write && d.TTL > 0
		if !removes || !mayApply(d) || d.Call >= s.Return {
			continue
		}
		if d.Outcome == OK && d.Return < set.Call {
			continue // certainly before the set
		}
		return false, ""
	}
	return true, fmt.Sprintf("%s, and no delete that may have come after it was invoked before the scan ended", *set)
}

// mustBeAbsent reports whether the key of ops was certainly absent all
// through s, and why.
func mustBeAbsent(s Scan, ops []Op) (bool, string) {
	var del *Op
	for i, d := range ops {
		if d.Kind == Delete && d.Outcome == OK && !d.CondFailed && d.Return < s.Call && (del == nil || d.Call > del.Call) {
			del = &ops[i]
		}
	}
	if del == nil {
		return false, ""
	}
	if slices.ContainsFunc(ops, func(w Op) bool {
		return w.Kind == Write && mayApply(w) && w.Call < s.Return && !(w.Outcome == OK && w.Return < del.Call)
	}) {
		return false, ""
	}
	return true, fmt.Sprintf("%s, and no set that may have come after it was invoked before the scan ended", *del)
}
