package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/peer"
)

// resolveInternal finds a node's internal (Raft port) address: from the
// cluster state, or, for the Raft leader before the state records it, from
// Raft itself.
func (ck *ClusterKit) resolveInternal(node string) (string, bool) {
	if n, ok := ck.raft.State().Nodes[node]; ok && n.RaftAddr != "" {
		return n.RaftAddr, true
	}
	if id, addr := ck.raft.Leader(); id == node && addr != "" {
		return addr, true
	}
	return "", false
}

// controlServer serves the control-plane calls of peers (package peer's
// ControlHandler) on behalf of this node's Raft and gossip.
type controlServer struct{ ck *ClusterKit }

var _ peer.ControlHandler = controlServer{}

// forwardable lists the commands a peer may ask the leader to propose:
// the changes a partition's primary makes to its in-sync set, and what an
// admin asked a node's management API for (the node checked the admin).
// Everything else the leader computes itself.
var forwardable = []consensus.CommandType{consensus.CmdShrinkInSync, consensus.CmdExpandInSync,
	consensus.CmdTokenCreate, consensus.CmdTokenDelete, consensus.CmdTokenBootstrap, consensus.CmdKVAuth}

// ServeApply proposes a command a peer sent; only the leader can.
func (c controlServer) ServeApply(ctx context.Context, cmd []byte) (uint64, error) {
	if len(cmd) == 0 || !slices.Contains(forwardable, consensus.CommandType(cmd[0])) {
		return 0, errcode.New(errcode.BadRequest, "peers may not propose this command")
	}
	idx, err := c.ck.raft.Apply(ctx, cmd)
	return idx, consensusError(err)
}

// ServeDrain marks a node as draining; only the leader can.
func (c controlServer) ServeDrain(ctx context.Context, node string, remove bool) error {
	return consensusError(c.ck.markDraining(ctx, node, remove))
}

// ServeMembers tells a joining node whom to gossip with. Only a node that
// is part of a working cluster (it knows a Raft leader and the cluster is
// initialised) answers: two nodes started before the bootstrap node must
// not join each other and form a cluster of their own.
func (c controlServer) ServeMembers(ctx context.Context) ([]peer.Member, error) {
	if !c.ck.healthy() {
		return nil, errcode.New(errcode.NotReady, "this node is not part of a working cluster yet")
	}
	out := []peer.Member{}
	for _, m := range c.ck.members.Members() {
		out = append(out, peer.Member{ID: m.Meta.ID, GossipAddr: m.Meta.GossipAddr, State: string(m.State)})
	}
	return out, nil
}

// consensusError gives Raft's refusals the codes peers understand.
func consensusError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, consensus.ErrNotLeader):
		return errcode.New(errcode.NotLeader, "%v", err)
	case errors.Is(err, consensus.ErrStaleEpoch):
		return errcode.New(errcode.EpochMismatch, "%v", err)
	case errors.Is(err, consensus.ErrStaleVersion), errors.Is(err, consensus.ErrInvalid):
		return errcode.New(errcode.Conflict, "%v", err)
	}
	return err
}

// applyOnLeader proposes cmd: directly on the leader, otherwise through
// the leader over the internal port. It returns the command's log index.
func (ck *ClusterKit) applyOnLeader(ctx context.Context, cmd consensus.Command) (uint64, error) {
	if ck.raft.IsLeader() {
		idx, err := ck.raft.Apply(ctx, cmd)
		return idx, consensusError(err)
	}
	leaderID, _ := ck.raft.Leader()
	if leaderID == "" {
		return 0, errcode.New(errcode.NotLeader, "no raft leader is known right now")
	}
	return ck.peers.Apply(ctx, leaderID, cmd)
}

// raftControl changes in-sync sets through Raft on behalf of the engine.
type raftControl struct{ ck *ClusterKit }

var _ engine.Control = (*raftControl)(nil)

func (c *raftControl) SetInSync(ctx context.Context, p int, epoch uint64, node string, inSync bool) error {
	t := consensus.CmdShrinkInSync
	if inSync {
		t = consensus.CmdExpandInSync
	}
	cmd, err := consensus.Encode(t, consensus.InSyncCmd{Partition: p, Epoch: epoch, Node: node})
	if err != nil {
		return err
	}
	for {
		idx, err := c.ck.applyOnLeader(ctx, cmd)
		if err == nil {
			return c.ck.raft.WaitApplied(ctx, idx)
		}
		if !errors.Is(err, errcode.ErrNotLeader) {
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

// clusterView is the part of a seed's GET /cluster a joining node reads.
type clusterView struct {
	Cluster struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Nodes []struct {
			ID       string `json:"id"`
			Status   string `json:"status"`
			RaftAddr string `json:"raft_addr"`
		} `json:"nodes"`
	} `json:"cluster"`
}

// resolveGossipAddrs turns the management addresses of JOIN_ADDR into the
// gossip addresses of live members: it reads each seed's public
// GET /cluster for the members' internal addresses, and asks one of them,
// over the internal port (authenticated, and refused across cluster names),
// for the gossip members.
func (ck *ClusterKit) resolveGossipAddrs(ctx context.Context, seeds []string) ([]string, error) {
	var errs []error
	for _, s := range seeds {
		internal, err := ck.seedInternalAddrs(ctx, s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, addr := range internal {
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			members, err := ck.peers.MembersAt(rctx, addr)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("members from %s: %w", addr, err))
				continue
			}
			var out []string
			for _, m := range members {
				if m.ID != ck.cfg.NodeID && (m.State == "alive" || m.State == "suspect") {
					out = append(out, m.GossipAddr)
				}
			}
			if len(out) > 0 {
				return out, nil
			}
			errs = append(errs, fmt.Errorf("%s knows no live members", addr))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("seeds know no live members"))
	}
	return nil, errors.Join(errs...)
}

// seedInternalAddrs reads the internal addresses of the active members a
// seed lists.
func (ck *ClusterKit) seedInternalAddrs(ctx context.Context, seed string) ([]string, error) {
	v, err := ck.seedCluster(ctx, seed)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range v.Cluster.Nodes {
		if n.Status == "active" && n.RaftAddr != "" && n.ID != ck.cfg.NodeID {
			out = append(out, n.RaftAddr)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("seed %s lists no active member yet", seed)
	}
	return out, nil
}

// mgmtURL is the URL of path on another node's management API, which
// speaks TLS when this one does.
func (ck *ClusterKit) mgmtURL(addr, path string) string {
	if ck.cfg.TLS.Cert != "" {
		return "https://" + addr + path
	}
	return "http://" + addr + path
}

// mayBootstrap is asked before this node founds a cluster (BOOTSTRAP and
// no Raft state in DATA_DIR). A bootstrap node whose DATA_DIR was emptied
// would otherwise found a second cluster of the same name beside the one
// its JOIN_ADDR seeds still form, and gossip would then mix the two. So
// when a seed already belongs to an initialised cluster of this name, the
// node joins it instead, as any new node would; with no seed up, or none
// initialised (all nodes starting together), it bootstraps as asked.
func (ck *ClusterKit) mayBootstrap() bool {
	for _, seed := range ck.cfg.JoinAddrs {
		v, err := ck.seedCluster(context.Background(), seed)
		if err != nil || v.Cluster.ID == "" || v.Cluster.Name != ck.cfg.ClusterName {
			continue
		}
		for _, n := range v.Cluster.Nodes {
			if n.ID != ck.cfg.NodeID {
				ck.log.Warn("DATA_DIR holds no Raft state, but a JOIN_ADDR seed already belongs to this cluster: joining it instead of bootstrapping a second one",
					"seed", seed, "cluster_id", v.Cluster.ID, "nodes", len(v.Cluster.Nodes))
				return false
			}
		}
	}
	return true
}

// seedCluster reads a seed's public GET /cluster.
func (ck *ClusterKit) seedCluster(ctx context.Context, seed string) (clusterView, error) {
	var v clusterView
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, ck.mgmtURL(seed, "/cluster"), nil)
	if err != nil {
		return v, err
	}
	resp, err := ck.mgmtClient.Do(req)
	if err != nil {
		return v, fmt.Errorf("seed %s: %w", seed, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return v, fmt.Errorf("seed %s: %w", seed, err)
	}
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("seed %s: GET /cluster answered %d", seed, resp.StatusCode)
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return v, fmt.Errorf("seed %s: decode /cluster: %w", seed, err)
	}
	return v, nil
}
