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
