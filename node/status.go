package node

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

func timeSince(t time.Time) float64 { return time.Since(t).Seconds() }

// StatusBlock renders the console status block.
func (ck *ClusterKit) StatusBlock() string {
	st := ck.raft.State()
	var b strings.Builder
	b.WriteString("=== Cluster Status ===\n")
	name := st.Config.Name
	if name == "" {
		name = ck.cfg.ClusterName
	}
	parts := st.Config.Partitions
	fmt.Fprintf(&b, "Cluster: %s\n", name)
	fmt.Fprintf(&b, "Total Nodes: %d\n", ck.ClusterNodes())
	fmt.Fprintf(&b, "Partitions: %d\n", parts)
	fmt.Fprintf(&b, "Local Keys: %d\n", ck.eng.LocalKeys())
	fmt.Fprintf(&b, "Leader: %t\n", ck.raft.IsLeader())
	fmt.Fprintf(&b, "Raft State: %s\n", ck.raft.RaftState())
	if exposed := ck.cfg.nodeToNodeExposed(); exposed != "" && ck.keyring == nil {
		fmt.Fprintf(&b, "WARNING: INSECURE=true: %s accepts node-to-node traffic from anyone, unauthenticated and unencrypted; set CLUSTER_KEY\n", exposed)
	}
	for _, n := range st.SortedNodes() {
		fmt.Fprintf(&b, "  - %s (%s) at %s [%s]\n", n.Name, n.ID, n.MgmtAddr, apiStatus(n.Status))
	}
	b.WriteString("======================\n")
	return b.String()
}

// printStatus writes the status block to stdout every StatusInterval.
func (ck *ClusterKit) printStatus(ctx context.Context) {
	ck.printStatusTo(ctx, os.Stdout)
}

func (ck *ClusterKit) printStatusTo(ctx context.Context, w io.Writer) {
	t := time.NewTicker(ck.cfg.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = io.WriteString(w, ck.StatusBlock())
		}
	}
}
