package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/ring"
)

// tableRouter serves kvapi's view of the partition table from the local FSM.
type tableRouter struct {
	self string
	fsm  *consensus.FSM
}

var _ engine.Router = (*tableRouter)(nil)

func (t *tableRouter) Self() string { return t.self }

func (t *tableRouter) Version() uint64 { return t.fsm.State().Version }

func (t *tableRouter) Partitions() int { return t.fsm.State().Config.Partitions }

func (t *tableRouter) PartitionOf(key string) int {
	return ring.PartitionOf(key, t.fsm.State().Config.Partitions)
}

func (t *tableRouter) Route(p int) (engine.Route, bool) {
	row, ok := t.fsm.State().Partition(p)
	if !ok {
		return engine.Route{}, false
	}
	return engine.Route{Partition: p, Primary: row.Primary, Replicas: row.Replicas, InSync: row.InSync, Epoch: row.Epoch}, true
}

func (t *tableRouter) KVAddr(node string) (string, bool) {
	n, ok := t.fsm.State().Nodes[node]
	return n.KVAddr, ok && n.KVAddr != ""
}

func (t *tableRouter) Alive(node string) bool {
	n, ok := t.fsm.State().Nodes[node]
	return ok && (n.Status == consensus.StatusAlive || n.Status == consensus.StatusSuspect)
}

func (t *tableRouter) Changed() (<-chan struct{}, func()) { return t.fsm.Watch() }

// raftControl changes in-sync sets through Raft: directly on the leader,
// otherwise by asking the leader over the management API.
type raftControl struct{ ck *ClusterKit }

var _ engine.Control = (*raftControl)(nil)

// inSyncRequest is the body of POST /internal/v1/in-sync.
type inSyncRequest struct {
	consensus.InSyncCmd
	InSync bool `json:"in_sync"`
}

type indexResponse struct {
	Index uint64 `json:"index"`
}

func (c *raftControl) SetInSync(ctx context.Context, p int, epoch uint64, node string, inSync bool) error {
	req := inSyncRequest{InSyncCmd: consensus.InSyncCmd{Partition: p, Epoch: epoch, Node: node}, InSync: inSync}
	for {
		idx, err := c.apply(ctx, req)
		if err == nil {
			return c.ck.raft.WaitApplied(ctx, idx)
		}
		if !errors.Is(err, consensus.ErrNotLeader) {
			return err
		}
		// No leader right now (an election is running): wait and retry.
		select {
		case <-ctx.Done():
			return fmt.Errorf("set in-sync: %w (%w)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *raftControl) apply(ctx context.Context, req inSyncRequest) (uint64, error) {
	ck := c.ck
	if ck.raft.IsLeader() {
		return ck.applyInSync(ctx, req)
	}
	leaderID, _ := ck.raft.Leader()
	leader, ok := ck.raft.State().Nodes[leaderID]
	if leaderID == "" || !ok {
		return 0, consensus.ErrNotLeader
	}
	body, _ := json.Marshal(req)
	var out indexResponse
	if err := ck.postJSON(ctx, leader.MgmtAddr, "/internal/v1/in-sync", body, &out); err != nil {
		return 0, err
	}
	return out.Index, nil
}

func (ck *ClusterKit) applyInSync(ctx context.Context, req inSyncRequest) (uint64, error) {
	t := consensus.CmdShrinkInSync
	if req.InSync {
		t = consensus.CmdExpandInSync
	}
	cmd, err := consensus.Encode(t, req.InSyncCmd)
	if err != nil {
		return 0, err
	}
	return ck.raft.Apply(ctx, cmd)
}

// remoteError is an error answer from another node's management API.
type remoteError struct {
	Code    string `json:"code"`
	Message string `json:"error"`
}

func (e *remoteError) Error() string { return e.Code + ": " + e.Message }

// postJSON calls another node's management API.
func (ck *ClusterKit) postJSON(ctx context.Context, addr, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return ck.doJSON(req, out)
}

func (ck *ClusterKit) doJSON(req *http.Request, out any) error {
	resp, err := ck.peerHTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		var re remoteError
		if json.Unmarshal(b, &re) == nil && re.Code != "" {
			if re.Code == codeNotLeader {
				return fmt.Errorf("%s: %w", req.URL, consensus.ErrNotLeader)
			}
			return &re
		}
		return fmt.Errorf("%s %s: status %d", req.Method, req.URL, resp.StatusCode)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", req.Method, req.URL, err)
		}
	}
	return nil
}

// gossipPeer is one entry of GET /internal/v1/members.
type gossipPeer struct {
	ID     string `json:"id"`
	Gossip string `json:"gossip_addr"`
	State  string `json:"state"`
}

// resolveGossipAddrs asks the management API of each seed for the gossip
// addresses of the members it knows, so JOIN_ADDR can name any member's
// management address.
func (ck *ClusterKit) resolveGossipAddrs(ctx context.Context, seeds []string) ([]string, error) {
	var out []string
	var errs []error
	for _, s := range seeds {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+s+"/internal/v1/members", nil)
		var peers []gossipPeer
		err := ck.doJSON(req, &peers)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range peers {
			if p.ID != ck.cfg.NodeID && (p.State == "alive" || p.State == "suspect") {
				out = append(out, p.Gossip)
			}
		}
	}
	if len(out) == 0 {
		if len(errs) == 0 {
			errs = append(errs, errors.New("seeds know no live members"))
		}
		return nil, errors.Join(errs...)
	}
	return out, nil
}
