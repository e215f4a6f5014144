package engine

import (
	"fmt"
	"time"

	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// round decides one replication round on the primary: it checks each op's
// conditions against the partition as every earlier op left it (this
// round's included), and turns the ops that apply into log entries. Entry
// i of the round becomes write number first+i, which is the revision it
// gives its key.
type round struct {
	store   Storage
	p       int
	first   uint64
	now     int64 // Unix ms: the one clock reading the round's deadlines use
	keys    uint64
	entries []peer.Entry
	results [][]peer.Result
	// state holds the keys this round has read or written.
	state map[string]keyState
}

// keyState is what a round knows of a key. Expired keys still in storage
// count as present here (they are stored) but not as existing.
type keyState struct {
	stored bool
	rec    storage.Record
}

func (k keyState) live(now int64) bool { return k.stored && !k.rec.Expired(now) }

func newRound(st Storage, p int, m storage.Meta, now time.Time) *round {
	return &round{store: st, p: p, first: m.Seq + 1, now: now.UnixMilli(), keys: m.Keys, state: map[string]keyState{}}
}

func (r *round) get(key string) (keyState, error) {
	if k, ok := r.state[key]; ok {
		return k, nil
	}
	rec, ok, err := r.store.Get(r.p, []byte(key))
	if err != nil {
		return keyState{}, fmt.Errorf("read %q: %w", key, err)
	}
	k := keyState{stored: ok, rec: rec}
	r.state[key] = k
	return k, nil
}

// add decides w's ops. An atomic request adds its entries only if every op
// applies; otherwise none of them, and its failed ops say why. A request
// that fails (storage could not be read) adds nothing either.
func (r *round) add(w *pendingWrite) error {
	mark, keys := len(r.entries), r.keys
	saved := map[string]keyState{}
	rollback := func() {
		r.entries, r.keys = r.entries[:mark], keys
		for k, v := range saved {
			r.state[k] = v
		}
	}
	results := make([]peer.Result, len(w.ops))
	failed := false
	for i, op := range w.ops {
		if _, ok := saved[op.Key]; !ok {
			k, err := r.get(op.Key)
			if err != nil {
				rollback()
				return err
			}
			saved[op.Key] = k
		}
		res, err := r.apply(op)
		if err != nil {
			rollback()
			return err
		}
		results[i] = res
		// A read that finds nothing is an answer, not a failure.
		failed = failed || (res.Code != "" && !op.Get)
	}
	if w.atomic && failed {
		rollback()
		for i := range results {
			if results[i].Code == "" || w.ops[i].Get {
				results[i] = peer.Result{Code: peer.ResultAborted}
			}
		}
	}
	r.results = append(r.results, results)
	return nil
}

func (r *round) nextRevision() uint64 { return r.first + uint64(len(r.entries)) }

// write appends e, after an expiry entry for the key if it is stored but
// past its deadline, so that every change has its own revision.
func (r *round) write(k keyState, e peer.Entry) uint64 {
	if k.stored && !k.live(r.now) {
		r.entries = append(r.entries, peer.Entry{Delete: true, Expired: true, Key: e.Key, PrevExpiresAt: k.rec.ExpiresAt})
		r.keys--
		k = keyState{}
	}
	if k.stored {
		e.PrevExpiresAt = k.rec.ExpiresAt
	}
	rev := r.nextRevision()
	r.entries = append(r.entries, e)
	switch {
	case e.Delete && k.stored:
		r.keys--
	case !e.Delete && !k.stored:
		r.keys++
	}
	if e.Delete {
		r.state[e.Key] = keyState{}
	} else {
		r.state[e.Key] = keyState{stored: true, rec: storage.Record{Value: []byte(e.Value), Revision: rev, ExpiresAt: e.ExpiresAt}}
	}
	return rev
}

// apply decides one op.
func (r *round) apply(op Op) (peer.Result, error) {
	k, err := r.get(op.Key)
	if err != nil {
		return peer.Result{}, err
	}
	live := k.live(r.now)
	cur := uint64(0)
	if live {
		cur = k.rec.Revision
	}
	res := peer.Result{Exists: live, Revision: cur}
	if op.Prev && live {
		res.Prev = &peer.Versioned{Value: string(k.rec.Value), Revision: cur}
	}
	if op.Get {
		if !live {
			return peer.Result{Code: peer.ResultNotFound}, nil
		}
		res.ExpiresAt = k.rec.ExpiresAt
		res.Prev = &peer.Versioned{Value: string(k.rec.Value), Revision: cur}
		return res, nil
	}
	if op.Expire {
		// The sweep: delete the key only if it is (still) past its
		// deadline; a refresh or a new value since wins.
		if k.stored && !live {
			r.entries = append(r.entries, peer.Entry{Delete: true, Expired: true, Key: op.Key, PrevExpiresAt: k.rec.ExpiresAt})
			r.keys--
			r.state[op.Key] = keyState{}
		}
		return peer.Result{}, nil
	}
	if (op.HasIfRevision && cur != op.IfRevision) || (op.IfExists && !live) {
		res.Code = peer.ResultConditionFailed
		res.Prev = nil
		return res, nil
	}
	switch {
	case op.Delete:
		if !live {
			return res, nil // nothing to delete: no change, no revision
		}
		res.Revision = r.write(k, peer.Entry{Delete: true, Key: op.Key})
	case op.Touch:
		if !live {
			res.Code = peer.ResultNotFound
			return res, nil
		}
		e := peer.Entry{Key: op.Key, Value: string(k.rec.Value)}
		if op.TTLMillis > 0 {
			e.ExpiresAt = r.now + op.TTLMillis
		}
		res.Revision, res.ExpiresAt = r.write(k, e), e.ExpiresAt
	default:
		e := peer.Entry{Key: op.Key, Value: op.Value}
		switch {
		case op.TTLMillis > 0:
			e.ExpiresAt = r.now + op.TTLMillis
		case op.KeepTTL && live:
			e.ExpiresAt = k.rec.ExpiresAt
		}
		res.Revision, res.ExpiresAt = r.write(k, e), e.ExpiresAt
	}
	return res, nil
}
