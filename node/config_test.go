package node

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// mapEnv turns a map into the lookup FromEnv takes, so no test reads or
// writes the real process environment (tests stay parallel-safe and do not
// depend on the shell that runs them).
func mapEnv(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}
}

// loadConfig is what main does: parse the environment, then validate.
func loadConfig(env map[string]string) (Config, error) {
	c, err := FromEnv(mapEnv(env))
	if err != nil {
		return c, err
	}
	err = c.Validate()
	return c, err
}

// wantDefaults is the documented configuration of node-1 on an empty
// environment (SEED-CONTRACT.md), before any case modifies it.
// AdvertiseHost is left empty: with wildcard binds it depends on whether the
// test runs in a container, which is not a property of the config.
func wantDefaults(mod func(*Config)) Config {
	c := Config{
		NodeID:            "node-1",
		NodeName:          "Server-1",
		HTTPAddr:          ":8080",
		KVAddr:            ":9080",
		RaftAddr:          "127.0.0.1:9001",
		GossipAddr:        "127.0.0.1:10001",
		Bootstrap:         true,
		DataDir:           "./data/node1",
		ClusterName:       "my-app-cluster",
		Partitions:        16,
		ReplicationFactor: 3,
		MinInSync:         2,
		FailoverGrace:     2 * time.Second,
		RequestTimeout:    5 * time.Second,
		StatusInterval:    15 * time.Second,
		LogLevel:          "info",
		LogFormat:         "text",
		ReadMode:          "lease",
		CacheMB:           32,
		BodyTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		HistoryRevisions:  10000,
		HistoryAge:        time.Hour,
		MaxWatchers:       1000,
	}
	if mod != nil {
		mod(&c)
	}
	return c
}

func TestFromEnvValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want Config
		// wantAdvertise, when set, is the exact AdvertiseHost expected;
		// otherwise the test only requires one to have been derived.
		wantAdvertise string
	}{
		{
			name: "empty environment gives the documented node-1 defaults",
			env:  map[string]string{},
			want: wantDefaults(nil),
		},
		{
			name: "explicit node-1 equals the defaults",
			env:  map[string]string{"NODE_ID": "node-1"},
			want: wantDefaults(nil),
		},
		{
			name: "node-3 derives its ports and data dir from its number and does not bootstrap",
			env:  map[string]string{"NODE_ID": "node-3"},
			want: wantDefaults(func(c *Config) {
				c.NodeID, c.NodeName = "node-3", "Server-3"
				c.HTTPAddr, c.KVAddr = ":8082", ":9082"
				c.RaftAddr, c.GossipAddr = "127.0.0.1:9003", "127.0.0.1:10003"
				c.DataDir = "./data/node3"
				c.Bootstrap = false
			}),
		},
		{
			// A node-1 that is told to join must not start a second
			// cluster of its own.
			name: "node-1 with JOIN_ADDR does not bootstrap",
			env:  map[string]string{"NODE_ID": "node-1", "JOIN_ADDR": "localhost:8081"},
			want: wantDefaults(func(c *Config) {
				c.Bootstrap = false
				c.JoinAddrs = []string{"localhost:8081"}
			}),
		},
		{
			name: "explicit BOOTSTRAP=false on node-1 is respected",
			env:  map[string]string{"BOOTSTRAP": "false"},
			want: wantDefaults(func(c *Config) { c.Bootstrap = false }),
		},
		{
			name: "explicit BOOTSTRAP=true on node-2 is respected",
			env:  map[string]string{"NODE_ID": "node-2", "BOOTSTRAP": "true"},
			want: wantDefaults(func(c *Config) {
				c.NodeID, c.NodeName = "node-2", "Server-2"
				c.HTTPAddr, c.KVAddr = ":8081", ":9081"
				c.RaftAddr, c.GossipAddr = "127.0.0.1:9002", "127.0.0.1:10002"
				c.DataDir = "./data/node2"
				c.Bootstrap = true
			}),
		},
		{
			name: "explicit BOOTSTRAP=true wins over JOIN_ADDR",
			env:  map[string]string{"BOOTSTRAP": "true", "JOIN_ADDR": "localhost:8081"},
			want: wantDefaults(func(c *Config) {
				c.Bootstrap = true
				c.JoinAddrs = []string{"localhost:8081"}
			}),
		},
		{
			name: "JOIN_ADDR is a comma list with spaces and empty entries dropped",
			env:  map[string]string{"NODE_ID": "node-2", "JOIN_ADDR": " localhost:8080 , 127.0.0.1:8082,, "},
			want: wantDefaults(func(c *Config) {
				c.NodeID, c.NodeName = "node-2", "Server-2"
				c.HTTPAddr, c.KVAddr = ":8081", ":9081"
				c.RaftAddr, c.GossipAddr = "127.0.0.1:9002", "127.0.0.1:10002"
				c.DataDir = "./data/node2"
				c.Bootstrap = false
				c.JoinAddrs = []string{"localhost:8080", "127.0.0.1:8082"}
			}),
		},
		{
			name: "explicit KV_ADDR overrides the HTTP+1000 derivation",
			env:  map[string]string{"HTTP_ADDR": ":8080", "KV_ADDR": ":7000"},
			want: wantDefaults(func(c *Config) { c.KVAddr = ":7000" }),
		},
		{
			name: "explicit GOSSIP_ADDR overrides the RAFT+1000 derivation",
			env:  map[string]string{"GOSSIP_ADDR": "127.0.0.1:7946"},
			want: wantDefaults(func(c *Config) { c.GossipAddr = "127.0.0.1:7946" }),
		},
		{
			// Port 0 must stay 0 (pick a free port), not become 1000.
			name: "port 0 derives port 0 for KV and gossip",
			env:  map[string]string{"HTTP_ADDR": "127.0.0.1:0", "RAFT_ADDR": "127.0.0.1:0"},
			want: wantDefaults(func(c *Config) {
				c.HTTPAddr, c.KVAddr = "127.0.0.1:0", "127.0.0.1:0"
				c.RaftAddr, c.GossipAddr = "127.0.0.1:0", "127.0.0.1:0"
			}),
			wantAdvertise: "127.0.0.1",
		},
		{
			name: "every plain setting is read",
			env: map[string]string{
				"NODE_NAME": "alpha", "DATA_DIR": "/var/lib/ck", "CLUSTER_NAME": "prod",
				"PARTITIONS": "64", "REPLICATION_FACTOR": "2", "FAILOVER_GRACE": "750ms",
				"REQUEST_TIMEOUT": "9s", "STATUS_INTERVAL": "0s", "LOG_LEVEL": "debug", "PPROF": "true",
				"CACHE_MB": "128", "MIN_INSYNC": "1",
			},
			want: wantDefaults(func(c *Config) {
				c.NodeName, c.DataDir, c.ClusterName = "alpha", "/var/lib/ck", "prod"
				c.Partitions, c.ReplicationFactor, c.MinInSync = 64, 2, 1
				c.FailoverGrace, c.RequestTimeout, c.StatusInterval = 750*time.Millisecond, 9*time.Second, 0
				c.LogLevel, c.Pprof = "debug", true
				c.CacheMB = 128
			}),
		},
		{
			// The same port on two distinct specific hosts is not a clash.
			name: "same port on different specific hosts is allowed",
			env:  map[string]string{"HTTP_ADDR": "127.0.0.1:7000", "KV_ADDR": "127.0.0.2:7000"},
			want: wantDefaults(func(c *Config) {
				c.HTTPAddr, c.KVAddr = "127.0.0.1:7000", "127.0.0.2:7000"
			}),
			wantAdvertise: "127.0.0.1",
		},
		{
			// Peers must dial the host the node actually listens on;
			// 127.0.0.1 would not reach a RAFT_ADDR bound to 127.0.0.2.
			name: "a specific bind host becomes the advertise host",
			env:  map[string]string{"RAFT_ADDR": "127.0.0.2:9001", "HTTP_ADDR": ":8080"},
			want: wantDefaults(func(c *Config) {
				c.RaftAddr, c.GossipAddr = "127.0.0.2:9001", "127.0.0.2:10001"
			}),
			wantAdvertise: "127.0.0.2",
		},
		{
			name: "explicit ADVERTISE_HOST wins over a specific bind host",
			env:  map[string]string{"RAFT_ADDR": "127.0.0.2:9001", "HTTP_ADDR": ":8080", "ADVERTISE_HOST": "10.1.2.3"},
			want: wantDefaults(func(c *Config) {
				c.RaftAddr, c.GossipAddr = "127.0.0.2:9001", "127.0.0.2:10001"
			}),
			wantAdvertise: "10.1.2.3",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := loadConfig(tc.env)
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantAdvertise != "" && got.AdvertiseHost != tc.wantAdvertise {
				t.Errorf("AdvertiseHost = %q, want %q", got.AdvertiseHost, tc.wantAdvertise)
			}
			if got.AdvertiseHost == "" {
				t.Errorf("AdvertiseHost was not derived")
			}
			// New validates again a config main already validated:
			// Validate must be idempotent.
			again := got
			if err := again.Validate(); err != nil {
				t.Fatalf("second Validate: %v", err)
			}
			if !reflect.DeepEqual(again, got) {
				t.Errorf("second Validate changed the config:\n got %+v\nwant %+v", again, got)
			}
			got.AdvertiseHost = ""
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("config mismatch:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestFromEnvValidateErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		// want lists substrings the error must contain: the setting(s)
		// at fault, so the operator knows what to fix.
		want []string
	}{
		{"unparseable HTTP_ADDR", map[string]string{"HTTP_ADDR": "abc"}, []string{"HTTP_ADDR", "abc"}},
		{"HTTP_ADDR port out of range", map[string]string{"HTTP_ADDR": ":70000"}, []string{"HTTP_ADDR", "70000"}},
		{"HTTP_ADDR non-numeric port", map[string]string{"HTTP_ADDR": ":http"}, []string{"HTTP_ADDR"}},
		{"KV_ADDR port out of range", map[string]string{"KV_ADDR": ":65536"}, []string{"KV_ADDR"}},
		{"RAFT_ADDR without port", map[string]string{"RAFT_ADDR": "127.0.0.1"}, []string{"RAFT_ADDR", "127.0.0.1"}},
		{"GOSSIP_ADDR without port", map[string]string{"GOSSIP_ADDR": "127.0.0.1"}, []string{"GOSSIP_ADDR"}},
		{"PARTITIONS not a number", map[string]string{"PARTITIONS": "x"}, []string{"PARTITIONS", "x"}},
		{"PARTITIONS zero", map[string]string{"PARTITIONS": "0"}, []string{"PARTITIONS"}},
		{"PARTITIONS above the maximum", map[string]string{"PARTITIONS": "5000"}, []string{"PARTITIONS", "5000"}},
		{"REPLICATION_FACTOR zero", map[string]string{"REPLICATION_FACTOR": "0"}, []string{"REPLICATION_FACTOR"}},
		{"REPLICATION_FACTOR not a number", map[string]string{"REPLICATION_FACTOR": "three"}, []string{"REPLICATION_FACTOR", "three"}},
		{"MIN_INSYNC zero", map[string]string{"MIN_INSYNC": "0"}, []string{"MIN_INSYNC"}},
		{"MIN_INSYNC over the limit", map[string]string{"MIN_INSYNC": "8"}, []string{"MIN_INSYNC"}},
		{"CACHE_MB zero", map[string]string{"CACHE_MB": "0"}, []string{"CACHE_MB", "from 1"}},
		{"CACHE_MB above the maximum", map[string]string{"CACHE_MB": "100000"}, []string{"CACHE_MB", "100000"}},
		{"CACHE_MB not a number", map[string]string{"CACHE_MB": "32MB"}, []string{"CACHE_MB", "32MB"}},
		{"CLUSTER_KEY not base64", map[string]string{"CLUSTER_KEY": "not a key!"}, []string{"CLUSTER_KEY", "clusterkit keygen"}},
		{"CLUSTER_KEY too short", map[string]string{"CLUSTER_KEY": "c2hvcnQ="}, []string{"CLUSTER_KEY", "32"}},
		{"INSECURE not a boolean", map[string]string{"INSECURE": "yes please"}, []string{"INSECURE"}},
		{"KV_AUTH unknown", map[string]string{"KV_AUTH": "maybe"}, []string{"KV_AUTH", "required"}},
		{"ADMIN_TOKEN too short", map[string]string{"ADMIN_TOKEN": "secret"}, []string{"ADMIN_TOKEN", "16"}},
		{"ADMIN_TOKEN with a space", map[string]string{"ADMIN_TOKEN": "a token with spaces in it"}, []string{"ADMIN_TOKEN"}},
		{"HTTP_BODY_TIMEOUT too short", map[string]string{"HTTP_BODY_TIMEOUT": "10ms"}, []string{"HTTP_BODY_TIMEOUT"}},
		{"HTTP_IDLE_TIMEOUT not a duration", map[string]string{"HTTP_IDLE_TIMEOUT": "forever"}, []string{"HTTP_IDLE_TIMEOUT"}},
		{"CLUSTER_NAME too long", map[string]string{"CLUSTER_NAME": strings.Repeat("c", 256)}, []string{"CLUSTER_NAME", "255"}},
		{"BOOTSTRAP not a boolean", map[string]string{"BOOTSTRAP": "maybe"}, []string{"BOOTSTRAP", "maybe"}},
		{"PPROF not a boolean", map[string]string{"PPROF": "sure"}, []string{"PPROF"}},
		{"FAILOVER_GRACE not a duration", map[string]string{"FAILOVER_GRACE": "soon"}, []string{"FAILOVER_GRACE", "soon"}},
		{"FAILOVER_GRACE negative", map[string]string{"FAILOVER_GRACE": "-1s"}, []string{"FAILOVER_GRACE"}},
		{"REQUEST_TIMEOUT zero", map[string]string{"REQUEST_TIMEOUT": "0s"}, []string{"REQUEST_TIMEOUT"}},
		{
			name: "HTTP_ADDR and KV_ADDR on the same port",
			env:  map[string]string{"HTTP_ADDR": ":8080", "KV_ADDR": ":8080"},
			want: []string{"HTTP_ADDR", "KV_ADDR", "8080"},
		},
		{
			// A wildcard bind takes the port on every address, so it
			// clashes with a specific host on the same port.
			name: "wildcard HTTP_ADDR and specific RAFT_ADDR on the same port",
			env:  map[string]string{"HTTP_ADDR": ":9001", "RAFT_ADDR": "127.0.0.1:9001"},
			want: []string{"HTTP_ADDR", "RAFT_ADDR", "9001"},
		},
		{
			name: "RAFT_ADDR and GOSSIP_ADDR on the same port",
			env:  map[string]string{"RAFT_ADDR": "127.0.0.1:9001", "GOSSIP_ADDR": "127.0.0.1:9001"},
			want: []string{"RAFT_ADDR", "GOSSIP_ADDR", "9001"},
		},
		{
			name: "bad JOIN_ADDR entry",
			env:  map[string]string{"NODE_ID": "node-2", "JOIN_ADDR": "localhost:8080,node-1"},
			want: []string{"JOIN_ADDR", "node-1"},
		},
		{"LOG_LEVEL unknown", map[string]string{"LOG_LEVEL": "loud"}, []string{"LOG_LEVEL", "loud"}},
		{"READ_MODE unknown", map[string]string{"READ_MODE": "fast"}, []string{"READ_MODE", "fast"}},
		{"NODE_ID with a space", map[string]string{"NODE_ID": "node 1"}, []string{"NODE_ID"}},
		{"NODE_ID with a slash", map[string]string{"NODE_ID": "a/b"}, []string{"NODE_ID"}},
		{"ADVERTISE_HOST with a port", map[string]string{"ADVERTISE_HOST": "example.com:80"}, []string{"ADVERTISE_HOST"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(tc.env)
			if err == nil {
				t.Fatalf("no error for %v", tc.env)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestNodeNumber pins the rule every derived default hangs off.
func TestNodeNumber(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id   string
		want int
	}{
		{"node-1", 1}, {"node-12", 12}, {"node_7", 7}, {"db-node-3", 3},
		{"node", 1}, {"node-x", 1}, {"node-0", 1}, {"node-", 1}, {"", 1},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			t.Parallel()
			if got := nodeNumber(tc.id); got != tc.want {
				t.Errorf("nodeNumber(%q) = %d, want %d", tc.id, got, tc.want)
			}
		})
	}
}

// TestExposure: node-to-node listeners beyond loopback need CLUSTER_KEY
// (or INSECURE=true), and the refusal says what to set.
func TestExposure(t *testing.T) {
	t.Parallel()
	key := "b1xsEODTGJmYNIUKjRd1vtBnu7RdxK40Y6OID0FvhzA="
	tests := []struct {
		name    string
		env     map[string]string
		haveKey bool // a keyring file from an earlier run
		want    string
	}{
		{name: "the quick start: loopback, no key", env: map[string]string{}},
		{name: "loopback by name", env: map[string]string{"RAFT_ADDR": "localhost:9001"}},
		{name: "IPv6 loopback", env: map[string]string{"RAFT_ADDR": "[::1]:9001"}},
		{name: "wildcard RAFT_ADDR without a key", env: map[string]string{"RAFT_ADDR": "0.0.0.0:9001"}, want: "RAFT_ADDR=0.0.0.0:9001"},
		{name: "empty host is a wildcard", env: map[string]string{"RAFT_ADDR": ":9001"}, want: "RAFT_ADDR=:9001"},
		{name: "a LAN address without a key", env: map[string]string{"RAFT_ADDR": "10.0.0.5:9001"}, want: "RAFT_ADDR=10.0.0.5:9001"},
		{name: "only gossip exposed", env: map[string]string{"GOSSIP_ADDR": "0.0.0.0:10001"}, want: "GOSSIP_ADDR=0.0.0.0:10001"},
		{name: "a host name is not loopback", env: map[string]string{"RAFT_ADDR": "node-1:9001"}, want: "RAFT_ADDR=node-1:9001"},
		{name: "with CLUSTER_KEY", env: map[string]string{"RAFT_ADDR": "0.0.0.0:9001", "CLUSTER_KEY": key}},
		{name: "with a keyring file", env: map[string]string{"RAFT_ADDR": "0.0.0.0:9001"}, haveKey: true},
		{name: "INSECURE=true", env: map[string]string{"RAFT_ADDR": "0.0.0.0:9001", "INSECURE": "true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(tt.env)
			if err != nil {
				t.Fatal(err)
			}
			err = c.checkExposure(tt.haveKey || c.ClusterKey != "")
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("started without a key with %s", tt.want)
			}
			for _, w := range []string{tt.want, "CLUSTER_KEY", "INSECURE=true", "clusterkit keygen"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
