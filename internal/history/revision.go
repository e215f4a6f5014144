package history

import (
	"fmt"
	"time"

	"github.com/anishathalye/porcupine"
)

// revInput and revOutput are what porcupine sees of an operation under
// RevisionModel.
type revInput struct {
	Kind          Kind
	Value         string // Write
	HasIfRevision bool
	IfRevision    uint64
	IfExists      bool
}

type revOutput struct {
	Pending    bool // the outcome is unknown: the rest is empty
	CondFailed bool
	// Found: a read found the key, a delete deleted it, or a failed
	// condition found it existing.
	Found    bool
	Value    string // Read with Found
	Revision uint64 // as Op.Revision
}

// revState is one key under RevisionModel: absent or present with a value,
// and Rev, the revision of the last write to the key — a delete's too, as
// the next write's revision must be greater still.
//
// A write with an unknown outcome that took effect did so at a revision
// nobody was told: Exact is then false and Rev only the least that
// revision can be (one more than the state's before). The first answer
// that shows the key's revision (a read, a failed condition, a write's
// if_revision that held) pins it. A state is comparable, as porcupine's
// default equality needs.
type revState struct {
	Exists bool
	Value  string
	Rev    uint64
	Exact  bool
}

// current is the revision conditions are checked against: a key that does
// not exist has revision 0 (if_revision=0 means "must not exist").
func (s revState) current() uint64 {
	if !s.Exists {
		return 0
	}
	return s.Rev
}

// pin returns s with its revision known to be rev, if it can be.
func (s revState) pin(rev uint64) (revState, bool) {
	if s.Exact {
		return s, rev == s.Rev
	}
	if rev < s.Rev {
		return s, false
	}
	s.Rev, s.Exact = rev, true
	return s, true
}

// holds reports whether in's conditions hold in s. With an existing key
// and if_revision, s must be exact (pinned) for the answer to mean
// anything.
func (s revState) holds(in revInput) bool {
	if in.IfExists && !s.Exists {
		return false
	}
	if in.HasIfRevision {
		return s.current() == in.IfRevision
	}
	return true
}

// assume returns s refined by the assumption that in's conditions held
// (held) or did not, and whether that assumption is possible in s.
func (s revState) assume(in revInput, held bool) (revState, bool) {
	if s.Exists && !s.Exact && in.HasIfRevision {
		if held {
			return s.pin(in.IfRevision)
		}
		// The unknown revision may differ from IfRevision unless no
		// revision it can be does (it is at least s.Rev). That it does
		// differ is not kept: the state is looser than it could be,
		// which can only accept more, never reject a valid history.
		return s, true
	}
	return s, s.holds(in) == held
}

// revStep is RevisionModel's step: the states s can move to with in and
// its answer out (none: the answer is impossible in s).
func revStep(s revState, in revInput, out revOutput) []any {
	switch {
	case in.Kind == Read:
		if out.Found != s.Exists {
			return nil
		}
		if !out.Found {
			return []any{s}
		}
		if out.Value != s.Value {
			return nil
		}
		if p, ok := s.pin(out.Revision); ok {
			return []any{p}
		}
		return nil

	case out.Pending:
		// Either the conditions held and the write took effect (at a
		// revision greater than the key's), or they did not and nothing
		// changed. Not taking effect at all is porcupine's to choose:
		// the operation can be linearized after everything else.
		var next []any
		if p, ok := s.assume(in, true); ok {
			if in.Kind == Delete && !p.Exists {
				next = append(next, p) // nothing to delete
			} else {
				value := ""
				if in.Kind == Write {
					value = in.Value
				}
				next = append(next, revState{Exists: in.Kind == Write, Value: value, Rev: p.Rev + 1})
			}
		}
		if p, ok := s.assume(in, false); ok {
			next = append(next, p)
		}
		return next

	case out.CondFailed:
		// Nothing changed, and the answer shows the state: whether the
		// key exists and its current revision.
		if out.Found != s.Exists {
			return nil
		}
		p := s
		if s.Exists {
			var ok bool
			if p, ok = s.pin(out.Revision); !ok {
				return nil
			}
		} else if out.Revision != 0 {
			return nil
		}
		if p.holds(in) {
			return nil // the condition did hold: the write should have applied
		}
		return []any{p}

	default: // applied
		p, ok := s.assume(in, true)
		if !ok {
			return nil
		}
		if in.Kind == Delete && !p.Exists {
			// Nothing to delete: no change, and no revision.
			if out.Found || out.Revision != 0 {
				return nil
			}
			return []any{p}
		}
		if in.Kind == Delete && !out.Found {
			return nil // the key existed, so the delete deleted it
		}
		// Revisions strictly increase: greater than the key's last one
		// (when Rev is only a lower bound, the key's revision was at
		// least Rev, so the write's must still be greater).
		if out.Revision <= p.Rev {
			return nil
		}
		next := revState{Rev: out.Revision, Exact: true}
		if in.Kind == Write {
			next.Exists, next.Value = true, in.Value
		}
		return []any{next}
	}
}

// RevisionModel is a porcupine model of a key-value store as independent
// registers with revisions and conditional writes, partitioned by key.
// Every key starts absent at revision 0. A write (set or delete) may be
// conditional on the key's revision (if_revision, 0: the key must not
// exist) or on its existing (if_exists); when its conditions hold it takes
// effect with a revision the server assigns, which must be greater than
// the key's previous one (revisions are a partition's write order, so they
// strictly increase though not by one); when they do not, it must answer
// condition_failed with the key's current revision and existence, and
// change nothing. A delete of an absent key changes nothing and answers
// revision 0. A read must return the current value and revision.
//
// Writes with an unknown outcome are pending: they may take effect at any
// time after their call (with their conditions checked then), or never.
// TTLs are not modelled: check histories of keys without TTLs only.
var RevisionModel = revisionModel()

func revisionModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: byKey,
		Init:      func() []any { return []any{revState{Exact: true}} },
		Step: func(state, in, out any) []any {
			return revStep(state.(revState), in.(revInput), out.(revOutput))
		},
		DescribeOperation: func(in, out any) string {
			i, o := in.(revInput), out.(revOutput)
			cond := ""
			if i.HasIfRevision {
				cond += fmt.Sprintf(" if_revision=%d", i.IfRevision)
			}
			if i.IfExists {
				cond += " if_exists"
			}
			var s string
			switch i.Kind {
			case Write:
				s = fmt.Sprintf("set(%q%s)", i.Value, cond)
			case Delete:
				s = fmt.Sprintf("delete(%s)", cond)
			default:
				if !o.Found {
					return "get() -> absent"
				}
				return fmt.Sprintf("get() -> %q rev %d", o.Value, o.Revision)
			}
			switch {
			case o.Pending:
				return s + " unknown outcome"
			case o.CondFailed:
				return fmt.Sprintf("%s -> condition failed (rev %d, exists %v)", s, o.Revision, o.Found)
			case i.Kind == Delete && !o.Found:
				return s + " -> nothing to delete"
			}
			return fmt.Sprintf("%s -> rev %d", s, o.Revision)
		},
		DescribeState: func(state any) string {
			s := state.(revState)
			rev := fmt.Sprintf("rev %d", s.Rev)
			if !s.Exact {
				rev = fmt.Sprintf("rev >= %d", s.Rev)
			}
			if !s.Exists {
				return "absent, last " + rev
			}
			return fmt.Sprintf("%q %s", s.Value, rev)
		},
		DescribeOperationMetadata: describeMeta,
	}
	return nm.ToModel()
}

// RevisionOperations converts ops into porcupine operations for
// RevisionModel: failed operations and reads without an answer are
// dropped; writes with an unknown outcome, and applied ones whose answer
// was cut short (Partial: their revision is unknown), become pending.
func RevisionOperations(ops []Op) []porcupine.Operation {
	pending := pendingTime(ops)
	out := make([]porcupine.Operation, 0, len(ops))
	for _, o := range ops {
		if o.Outcome == Failed || (o.Kind == Read && o.Outcome != OK) {
			continue
		}
		p := porcupine.Operation{
			ClientId: o.Client,
			Input:    revInput{Kind: o.Kind, Value: o.Value, HasIfRevision: o.HasIfRevision, IfRevision: o.IfRevision, IfExists: o.IfExists},
			Call:     o.Call,
			Return:   o.Return,
			Metadata: meta{key: o.Key, desc: o.String()},
		}
		switch {
		case o.Kind == Read:
			p.Input = revInput{Kind: Read}
			p.Output = revOutput{Found: o.Found, Value: o.Value, Revision: o.Revision}
		case o.Outcome == Unknown || o.Partial:
			p.Output, p.Return = revOutput{Pending: true}, pending
		default:
			p.Output = revOutput{CondFailed: o.CondFailed, Found: o.Found, Revision: o.Revision}
		}
		out = append(out, p)
	}
	return out
}

// CheckRevisions checks every key of h for linearizability against
// RevisionModel, each with the given timeout (0: none).
func CheckRevisions(h History, timeout time.Duration) Report {
	return checkModel(h, timeout, RevisionModel, func(ops []Op) ([]porcupine.Operation, int) {
		po := RevisionOperations(ops)
		pending := 0
		for _, o := range po {
			if o.Output.(revOutput).Pending {
				pending++
			}
		}
		return po, pending
	})
}
