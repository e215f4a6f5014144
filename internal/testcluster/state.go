package testcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/clusterkit/clusterkit/peer"
)

// Partition is one entry of a node's partition table.
type Partition struct {
	ID       string   `json:"id"`
	Primary  string   `json:"primary_node"`
	Replicas []string `json:"replica_nodes"`
	InSync   []string `json:"in_sync_replicas"`
	Epoch    uint64   `json:"epoch"`
}

// Member is one node as /cluster lists it.
type Member struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// State is what one node's /cluster says.
type State struct {
	Nodes      []Member
	Partitions map[string]Partition
	RF         int
}

// State fetches the node's view of the cluster.
func (n *Node) State() (State, error) {
	r, err := Get(n.HTTP, "/cluster")
	if err != nil {
		return State{}, err
	}
	if r.Status != 200 {
		return State{}, fmt.Errorf("/cluster: status %d: %s", r.Status, r.Body)
	}
	var out struct {
		Cluster struct {
			Nodes        []Member `json:"nodes"`
			PartitionMap struct {
				Partitions map[string]Partition `json:"partitions"`
			} `json:"partition_map"`
			Config struct {
				RF int `json:"replication_factor"`
			} `json:"config"`
		} `json:"cluster"`
	}
	if err := r.JSON(&out); err != nil {
		return State{}, fmt.Errorf("decode /cluster: %w", err)
	}
	return State{Nodes: out.Cluster.Nodes, Partitions: out.Cluster.PartitionMap.Partitions, RF: out.Cluster.Config.RF}, nil
}

// converged checks one node's view: exactly the expected nodes are active,
// any other listed node owns nothing, and every partition has its primary
// and min(rf, len(expect)) copies, all of expected nodes, all in sync.
func (s State) converged(expect []string, rf int) error {
	var active []string
	for _, m := range s.Nodes {
		if m.Status == "active" {
			active = append(active, m.ID)
		}
	}
	sort.Strings(active)
	want := slices.Sorted(slices.Values(expect))
	if !slices.Equal(active, want) {
		return fmt.Errorf("active nodes %v, want %v (all: %v)", active, want, s.Nodes)
	}
	if len(s.Partitions) == 0 {
		return errors.New("no partitions yet")
	}
	copies := min(rf, len(expect))
	for _, id := range slices.Sorted(maps.Keys(s.Partitions)) {
		p := s.Partitions[id]
		owners := append([]string{p.Primary}, p.Replicas...)
		for _, o := range owners {
			if !slices.Contains(want, o) {
				return fmt.Errorf("%s: owner %q is not one of %v", id, o, want)
			}
		}
		if len(owners) != copies || len(p.InSync) != copies-1 {
			return fmt.Errorf("%s: primary %q, replicas %v, in sync %v; want %d copies, all in sync", id, p.Primary, p.Replicas, p.InSync, copies)
		}
		for _, r := range p.Replicas {
			if !slices.Contains(p.InSync, r) {
				return fmt.Errorf("%s: replica %s is not in sync (in sync: %v)", id, r, p.InSync)
			}
		}
	}
	return nil
}

func sameTable(a, b map[string]Partition) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d partitions against %d", len(a), len(b))
	}
	for id, p := range a {
		q := b[id]
		if p.Primary != q.Primary || p.Epoch != q.Epoch || !slices.Equal(slices.Sorted(slices.Values(p.InSync)), slices.Sorted(slices.Values(q.InSync))) ||
			!slices.Equal(slices.Sorted(slices.Values(p.Replicas)), slices.Sorted(slices.Values(q.Replicas))) {
			return fmt.Errorf("%s: %+v against %+v", id, p, q)
		}
	}
	return nil
}

// Converged reports (as an error) why the given nodes do not yet form a
// settled cluster: every one of them must list exactly these nodes as
// active, have every partition fully replicated (min(rf, len(nodes))
// copies, all in sync, all on these nodes), and agree on the table.
func Converged(nodes []*Node, rf int) error {
	if len(nodes) == 0 {
		return errors.New("no nodes")
	}
	var ids []string
	for _, n := range nodes {
		ids = append(ids, n.ID)
	}
	var first State
	for i, n := range nodes {
		st, err := n.State()
		if err != nil {
			return fmt.Errorf("%s: %w", n.ID, err)
		}
		if err := st.converged(ids, rf); err != nil {
			return fmt.Errorf("%s: %w", n.ID, err)
		}
		if i == 0 {
			first = st
		} else if err := sameTable(first.Partitions, st.Partitions); err != nil {
			return fmt.Errorf("%s and %s disagree on the table: %w", nodes[0].ID, n.ID, err)
		}
	}
	return nil
}

// WaitConverged polls Converged until it holds or timeout passes, and
// returns the last reason otherwise (it does not fail the test).
func WaitConverged(nodes []*Node, rf int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := Converged(nodes, rf)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not converged after %s: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// PartitionOf asks via which partition holds key, and its primary.
func PartitionOf(via *Node, key string) (Partition, error) {
	r, err := Get(via.HTTP, "/partitions/key?key="+url.QueryEscape(key))
	if err != nil {
		return Partition{}, err
	}
	var p Partition
	if r.Status != 200 {
		return p, fmt.Errorf("/partitions/key: status %d: %s", r.Status, r.Body)
	}
	err = r.JSON(&p)
	return p, err
}

// Digest is one partition's summary, as a node reports it over its
// internal port.
type Digest = peer.Digest

// Digests fetches the node's per-partition digests, by partition number,
// over the internal port, as a member of the cluster.
func (n *Node) Digests() (map[int]Digest, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds, err := n.c.Member().Digest(ctx, n.Raft)
	if err != nil {
		return nil, fmt.Errorf("digest of %s: %w", n.ID, err)
	}
	out := map[int]Digest{}
	for _, d := range ds {
		out[d.Partition] = d
	}
	return out, nil
}

// DigestJSON is the node's digests as JSON, for artifacts.
func (n *Node) DigestJSON() ([]byte, error) {
	ds, err := n.Digests()
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(ds, "", "  ")
}

// Node returns the node with the given ID (nil if none).
func (c *Cluster) Node(id string) *Node {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// Isolate cuts n off from every other node of the cluster (the test
// process can still reach it). It needs Options.Netns.
func (c *Cluster) Isolate(n *Node) error {
	if c.Net == nil {
		return errors.New("isolate: the cluster runs on loopback (Options.Netns is off)")
	}
	var errs []error
	for _, o := range c.Nodes {
		if o != n {
			errs = append(errs, c.Net.Cut(n.ID, o.ID))
		}
	}
	return errors.Join(errs...)
}

// Cut cuts the link between a and b. It needs Options.Netns.
func (c *Cluster) Cut(a, b *Node) error {
	if c.Net == nil {
		return errors.New("cut: the cluster runs on loopback (Options.Netns is off)")
	}
	return c.Net.Cut(a.ID, b.ID)
}

// HealAll restores every link (a no-op on loopback).
func (c *Cluster) HealAll() error {
	if c.Net == nil {
		return nil
	}
	return c.Net.HealAll()
}

// GetKey reads key through the KV API at addr (linearizable unless stale).
func GetKey(ctx context.Context, addr, key string, stale bool) (Response, error) {
	path := "/kv/get?key=" + url.QueryEscape(key)
	if stale {
		path += "&consistency=stale"
	}
	return Do(ctx, "GET", addr, path, nil)
}

// ErrText shortens an HTTP answer for messages.
func ErrText(r Response) string {
	return fmt.Sprintf("%d %s", r.Status, strings.TrimSpace(string(r.Body)))
}
