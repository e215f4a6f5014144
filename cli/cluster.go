package cli

import (
	"context"
	"flag"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/clusterkit/clusterkit/client"
)

func clusterCommands() []*cmd {
	return []*cmd{
		{name: "members", summary: "list the cluster's members and their status", setup: membersCmd},
		{name: "partitions", summary: "list the partitions and their owners", setup: partitionsCmd},
		{name: "status", args: "[NODE]", summary: "print a node's status block (default: the node at -addr)", setup: statusCmd,
			help: "NODE is an ID, a name or a management address. The block is the one the node prints on its console."},
		{name: "leave", args: "[NODE]", summary: "make a node hand its partitions over, leave the cluster and stop", setup: leaveCmd,
			help: "NODE is an ID, a name or a management address; without it, the node at -addr leaves.\nWith -wait the command returns once the cluster shows the node as left."},
	}
}

// nodeAtAddr is the ID of the node at the first -addr.
func nodeAtAddr(ctx context.Context, e *env, cl *client.Client) (string, error) {
	addr := e.g.addrs()[0]
	h, err := cl.Health(ctx, addr)
	if err != nil && h == nil {
		return "", fmt.Errorf("ask %s which node it is: %w", addr, err)
	}
	id, _ := h["node_id"].(string)
	if id == "" {
		return "", fmt.Errorf("%s did not say which node it is", addr)
	}
	return id, nil
}

// resolveNode turns an ID, a name or a management address into a
// member's ID.
func resolveNode(ctx context.Context, e *env, cl *client.Client, arg string) (string, error) {
	if arg == "" {
		return nodeAtAddr(ctx, e, cl)
	}
	members, err := cl.Members(ctx)
	if err != nil {
		return "", fmt.Errorf("members: %w", err)
	}
	for _, m := range members {
		if m.ID == arg {
			return m.ID, nil
		}
	}
	for _, m := range members {
		if strings.EqualFold(m.Name, arg) || sameAddr(m.MgmtAddr, arg) {
			return m.ID, nil
		}
	}
	return "", &exitError{code: ExitNotFound, name: "not_found", msg: fmt.Sprintf("no member %q (give an ID, a name or a management address; clusterkit members lists them)", arg)}
}

// sameAddr compares host:port addresses, taking localhost and 127.0.0.1
// (and an empty host) as the same.
func sameAddr(a, b string) bool {
	if a == b {
		return true
	}
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	local := func(h string) bool { return h == "" || h == "localhost" || h == "127.0.0.1" || h == "::1" }
	return ha == hb || (local(ha) && local(hb))
}

type memberJSON struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Status     string            `json:"status"`
	Leader     bool              `json:"leader"`
	MgmtAddr   string            `json:"mgmt_addr"`
	KVAddr     string            `json:"kv_addr"`
	RaftAddr   string            `json:"raft_addr"`
	GossipAddr string            `json:"gossip_addr"`
	Since      string            `json:"since,omitempty"`
	Services   map[string]string `json:"services,omitempty"`
}

func membersCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		cl, err := e.clientWithArgs(ctx, args, 0, 0, "no arguments")
		if err != nil {
			return err
		}
		members, err := cl.Members(ctx)
		if err != nil {
			return fmt.Errorf("members: %w", err)
		}
		sort.Slice(members, func(i, j int) bool { return members[i].ID < members[j].ID })
		leader := ""
		if l, err := cl.Leader(ctx); err == nil {
			leader = l.ID
		}
		if e.g.json {
			out := make([]memberJSON, len(members))
			for i, m := range members {
				out[i] = memberJSON{ID: m.ID, Name: m.Name, Status: m.Status, Leader: m.ID == leader, MgmtAddr: m.MgmtAddr,
					KVAddr: m.KVAddr, RaftAddr: m.RaftAddr, GossipAddr: m.GossipAddr, Since: fmtTime(m.Since), Services: m.Services}
			}
			return e.printJSON(map[string]any{"members": out, "count": len(out), "leader": leader})
		}
		rows := make([][]string, len(members))
		for i, m := range members {
			role := "-"
			switch {
			case m.ID == leader:
				role = "leader"
			case m.Status != "active" && m.Status != "suspect":
			case leader == "":
				role = "?" // no leader known right now
			default:
				role = "follower"
			}
			rows[i] = []string{m.ID, m.Name, m.Status, role, m.MgmtAddr, m.KVAddr, since(m.Since)}
		}
		return e.table([]string{"ID", "NAME", "STATUS", "RAFT", "MANAGEMENT", "KV", "SINCE"}, rows)
	}
}

// since formats how long ago t was, for a table.
func since(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

type partitionJSON struct {
	ID         string   `json:"id"`
	Primary    string   `json:"primary_node"`
	Replicas   []string `json:"replica_nodes"`
	InSync     []string `json:"in_sync_replicas"`
	CatchingUp []string `json:"catching_up"`
	Epoch      uint64   `json:"epoch"`
	State      string   `json:"state,omitempty"`
}

func partitionsCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		cl, err := e.clientWithArgs(ctx, args, 0, 0, "no arguments")
		if err != nil {
			return err
		}
		parts, err := cl.Partitions(ctx)
		if err != nil {
			return fmt.Errorf("partitions: %w", err)
		}
		sort.SliceStable(parts, func(i, j int) bool { return partNum(parts[i].ID) < partNum(parts[j].ID) })
		if e.g.json {
			out := make([]partitionJSON, len(parts))
			for i, p := range parts {
				out[i] = partitionJSON{ID: p.ID, Primary: p.Primary, Replicas: nonNil(p.Replicas), InSync: nonNil(p.InSync),
					CatchingUp: nonNil(p.CatchingUp), Epoch: p.Epoch, State: p.State}
			}
			return e.printJSON(map[string]any{"partitions": out, "count": len(out)})
		}
		rows := make([][]string, len(parts))
		for i, p := range parts {
			rows[i] = []string{p.ID, p.Primary, list(p.Replicas), list(p.InSync), list(p.CatchingUp),
				strconv.FormatUint(p.Epoch, 10), p.State}
		}
		return e.table([]string{"PARTITION", "PRIMARY", "REPLICAS", "IN-SYNC", "CATCHING-UP", "EPOCH", "STATE"}, rows)
	}
}

func partNum(id string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(id, "partition-"))
	if err != nil {
		return 1 << 30
	}
	return n
}

func list(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

// num formats a JSON number (float64 after decoding) or anything else.
func num(v any) string {
	switch x := v.(type) {
	case nil:
		return "?"
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	default:
		return fmt.Sprint(x)
	}
}

// nodeArg connects and resolves a command's optional NODE argument (an
// ID, a name or a management address; none: the node at -addr) to an ID.
func nodeArg(ctx context.Context, e *env, args []string) (*client.Client, string, error) {
	cl, err := e.clientWithArgs(ctx, args, 0, 1, "at most one NODE")
	if err != nil {
		return nil, "", err
	}
	target := ""
	if len(args) == 1 {
		target = args[0]
	}
	id, err := resolveNode(ctx, e, cl, target)
	return cl, id, err
}

func statusCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		cl, id, err := nodeArg(ctx, e, args)
		if err != nil {
			return err
		}
		// A node without a Raft leader answers 503 with its body: the
		// block is all the more useful then.
		h, err := cl.Health(ctx, id)
		if err != nil && h == nil {
			return fmt.Errorf("health of %s: %w", id, err)
		}
		info, err := cl.Cluster(ctx)
		if err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		stats, err := cl.Stats(ctx, id)
		if err != nil {
			return fmt.Errorf("stats of %s: %w", id, err)
		}
		members := info.Members
		sort.Slice(members, func(i, j int) bool { return members[i].ID < members[j].ID })
		if e.g.json {
			ms := make([]memberJSON, len(members))
			for i, m := range members {
				ms[i] = memberJSON{ID: m.ID, Name: m.Name, Status: m.Status, MgmtAddr: m.MgmtAddr, KVAddr: m.KVAddr,
					RaftAddr: m.RaftAddr, GossipAddr: m.GossipAddr, Since: fmtTime(m.Since)}
			}
			return e.printJSON(map[string]any{"node_id": id, "node_name": h["node_name"], "cluster": info.Name,
				"total_nodes": h["node_count"], "partitions": h["partition_count"], "local_keys": stats["local_keys"],
				"leader": h["is_leader"], "raft_state": h["raft_state"], "healthy": h["healthy"], "members": ms})
		}
		var b strings.Builder
		b.WriteString("=== Cluster Status ===\n")
		fmt.Fprintf(&b, "Node: %s (%s)\n", h["node_name"], id)
		fmt.Fprintf(&b, "Cluster: %s\n", info.Name)
		fmt.Fprintf(&b, "Total Nodes: %s\n", num(h["node_count"]))
		fmt.Fprintf(&b, "Partitions: %s\n", num(h["partition_count"]))
		fmt.Fprintf(&b, "Local Keys: %s\n", num(stats["local_keys"]))
		fmt.Fprintf(&b, "Leader: %s\n", num(h["is_leader"]))
		fmt.Fprintf(&b, "Raft State: %s\n", num(h["raft_state"]))
		for _, m := range members {
			fmt.Fprintf(&b, "  - %s (%s) at %s [%s]\n", m.Name, m.ID, m.MgmtAddr, m.Status)
		}
		b.WriteString("======================\n")
		_, err = fmt.Fprint(e.out, b.String())
		return err
	}
}

func leaveCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	wait := fs.Bool("wait", false, "wait until the cluster shows the node as left (within -timeout)")
	return func(ctx context.Context, e *env, args []string) error {
		cl, id, err := nodeArg(ctx, e, args)
		if err != nil {
			return err
		}
		if err := cl.Leave(ctx, id); err != nil {
			return asWrite(fmt.Errorf("leave %s: %w", id, err))
		}
		if !*wait {
			if e.g.json {
				return e.printJSON(map[string]any{"status": "leaving", "node_id": id})
			}
			_, err := fmt.Fprintf(e.out, "%s is leaving: it hands its partitions over, leaves the cluster and stops\n", id)
			return err
		}
		for {
			members, err := cl.Members(ctx)
			if err == nil {
				left := true
				for _, m := range members {
					if m.ID == id && m.Status != "left" {
						left = false
					}
				}
				if left {
					if e.g.json {
						return e.printJSON(map[string]any{"status": "left", "node_id": id})
					}
					_, err := fmt.Fprintf(e.out, "%s has left the cluster\n", id)
					return err
				}
			}
			select {
			case <-ctx.Done():
				return &exitError{code: ExitUnavailable, name: "timeout",
					msg: fmt.Sprintf("%s was asked to leave but has not left within -timeout %s; clusterkit members shows where it is", id, e.g.timeout)}
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}
