package consensus

import "testing"

func TestMinCopiesFollowsClusterSize(t *testing.T) {
	nodes := func(statuses ...NodeStatus) map[string]NodeInfo {
		out := map[string]NodeInfo{}
		for i, s := range statuses {
			id := string(rune('a' + i))
			out[id] = NodeInfo{ID: id, Status: s}
		}
		return out
	}
	tests := []struct {
		name    string
		min, rf int
		nodes   map[string]NodeInfo
		want    int
	}{
		{"one-node cluster writes alone", 2, 3, nodes(StatusAlive), 1},
		{"replication factor one", 2, 1, nodes(StatusAlive, StatusAlive, StatusAlive), 1},
		{"three nodes", 2, 3, nodes(StatusAlive, StatusAlive, StatusAlive), 2},
		{"dead nodes still count", 2, 3, nodes(StatusAlive, StatusDead, StatusDead), 2},
		{"nodes that left do not", 2, 3, nodes(StatusAlive, StatusLeft, StatusLeft), 1},
		{"unset is the default", 0, 3, nodes(StatusAlive, StatusAlive, StatusAlive), DefaultMinInSync},
		{"floor of three", 3, 3, nodes(StatusAlive, StatusAlive, StatusSuspect), 3},
		{"floor above the replication factor", 5, 3, nodes(StatusAlive, StatusAlive, StatusAlive, StatusAlive, StatusAlive), 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &State{Config: ClusterConfig{Partitions: 16, ReplicationFactor: tt.rf, MinInSync: tt.min}, Nodes: tt.nodes}
			if got := s.MinCopies(); got != tt.want {
				t.Fatalf("MinCopies = %d, want %d", got, tt.want)
			}
		})
	}
}
