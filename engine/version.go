package engine

import (
	"fmt"
	"sync"

	"github.com/clusterkit/clusterkit/errcode"
)

// tableGuard keeps the data plane from acting on a partition table older
// than one it acted on before: after a restart, Raft first restores its
// last snapshot, which can predate changes this node already obeyed (a
// demotion, say). The highest version acted on is persisted before it is
// used, and nothing is served until the table has caught up with it.
type tableGuard struct {
	mu        sync.Mutex
	persisted uint64 // highest version recorded in storage
	floor     uint64 // the recorded version found at startup
}

func newTableGuard(st Storage) (*tableGuard, error) {
	v, err := st.TableVersion()
	if err != nil {
		return nil, fmt.Errorf("read recorded table version: %w", err)
	}
	return &tableGuard{persisted: v, floor: v}, nil
}

// check returns nil if the current table may be acted on, recording its
// version first if it is new.
func (s *Engine) checkTable() error {
	if err := s.checkStore(); err != nil {
		return err
	}
	v := s.router.Version()
	g := s.guard
	g.mu.Lock()
	defer g.mu.Unlock()
	if v < g.floor {
		return errcode.New(errcode.NotReady, "partition table at version %d here, behind version %d this node already acted on; catching up", v, g.floor)
	}
	if v > g.persisted {
		if err := s.store.SetTableVersion(v); err != nil {
			return fmt.Errorf("record table version: %w", err)
		}
		g.persisted = v
	}
	return nil
}

// checkStore refuses to act on the table while it counts copies of this
// node's previous data directory: a node whose DATA_DIR was emptied or
// replaced and that came back under the same NODE_ID may still be listed
// in sync, or as a primary, and acting on that (above all, reconciling as
// a primary) would make its empty copy the truth. The leader takes the
// node out of every in-sync set when it records the new identity
// (consensus.forgetCopies), and from then on the node is an ordinary
// replica that gets copies.
func (s *Engine) checkStore() error {
	if rec := s.router.StoreOf(s.router.Self()); rec != "" && rec != s.store.ID() {
		return errcode.New(errcode.NotReady, "this node's data directory is new (store %s) and the cluster still counts the copies of its old one (store %s); waiting for the leader to take them out of the in-sync sets", s.store.ID(), rec)
	}
	return nil
}
