package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/clusterkit/clusterkit/auth"
	"github.com/clusterkit/clusterkit/clusterkey"
	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/internal/certs"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/storage"
)

// Defaults for settings that do not derive from the node number.
const (
	DefaultClusterName       = "my-app-cluster"
	DefaultPartitions        = 16
	DefaultReplicationFactor = 3
	// DefaultMinInSync is the copy floor: copies a write must be on.
	DefaultMinInSync      = consensus.DefaultMinInSync
	DefaultFailoverGrace  = 2 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultStatusInterval = 15 * time.Second
	DefaultCacheMB        = storage.DefaultCacheBytes >> 20
	// MaxCacheMB bounds CACHE_MB (64 GiB): a larger value is a typo.
	MaxCacheMB = 64 << 10
	// MaxPartitions bounds PARTITIONS; the table lives in every node's
	// memory and in every Raft snapshot.
	MaxPartitions = 4096
	// MaxClusterNameBytes bounds CLUSTER_NAME, which labels every gossip
	// packet (memberlist allows 255 bytes).
	MaxClusterNameBytes = 255
	// MaxHistoryRevisions bounds HISTORY_REVISIONS (per partition).
	MaxHistoryRevisions = 10_000_000
	// MaxMaxWatchers bounds MAX_WATCHERS: each watch holds a connection
	// and a goroutine.
	MaxMaxWatchers = 100_000
)

// Config is everything a node needs, from environment variables (see
// FromEnv) with defaults, checked by Validate.
type Config struct {
	NodeID            string
	NodeName          string
	HTTPAddr          string // management API bind
	KVAddr            string // KV API bind
	RaftAddr          string // Raft bind
	GossipAddr        string // memberlist bind (UDP and TCP)
	AdvertiseHost     string // host peers dial; derived when empty
	Bootstrap         bool
	JoinAddrs         []string // management addresses of existing members
	DataDir           string
	ClusterName       string
	Partitions        int
	ReplicationFactor int
	// MinInSync is the copy floor (MIN_INSYNC), fixed at bootstrap.
	MinInSync int

	// FailoverGrace is how long a node must stay dead before the leader
	// moves its partitions: damping for gossip false positives.
	FailoverGrace time.Duration
	// RequestTimeout bounds one client KV operation.
	RequestTimeout time.Duration
	// StatusInterval is the period of the console status block (0: off).
	StatusInterval time.Duration
	// LogLevel is debug, info, warn or error.
	LogLevel string
	// LogFormat is "text" (default) or "json" (LOG_FORMAT): the handler
	// NewLogger builds.
	LogFormat string
	// Services is this node's service metadata (SERVICES): names of the
	// embedding program's own endpoints and their host:port, published
	// for every node in GET /cluster and Node.Services. A wildcard or
	// empty host is published with ADVERTISE_HOST.
	Services map[string]string
	// Pprof mounts /debug/pprof on the management API.
	Pprof bool
	// ReadMode is how the primary proves it may answer a linearizable
	// read: "lease" (default) or "confirm" (a round trip per read).
	ReadMode string
	// CacheMB is the storage block cache, in MiB.
	CacheMB int
	// ClusterKey is CLUSTER_KEY (base64 of 32 bytes; empty: none). With
	// it, gossip is encrypted and every internal connection is mutually
	// authenticated TLS; a process without it cannot join.
	ClusterKey string
	// Insecure lets node-to-node listeners bind beyond loopback without a
	// cluster key.
	Insecure bool
	// AdminToken (ADMIN_TOKEN) becomes the cluster's first admin token
	// when it has none. While it is set, or the cluster has an admin token,
	// management mutations need one, even from loopback.
	AdminToken string
	// KVAuth (KV_AUTH=required) turns on KV authentication for the whole
	// cluster: every /kv/* call needs a token whose scope covers the key.
	KVAuth bool
	// AllowedHosts are DNS names (with dots) that the client APIs answer
	// to besides IP addresses, localhost, names without dots, this
	// machine's host name and ADVERTISE_HOST; "*" allows every name.
	AllowedHosts []string
	// TLS is the client listeners' TLS (TLS_CERT_FILE, TLS_KEY_FILE and,
	// to require client certificates signed by it, TLS_CA_FILE).
	TLS certs.Files
	// BodyTimeout bounds reading one client request, body included.
	BodyTimeout time.Duration
	// IdleTimeout closes an idle keep-alive client connection.
	IdleTimeout time.Duration
	// HistoryRevisions and HistoryAge bound each partition's retained
	// history (HISTORY_REVISIONS, HISTORY_AGE): watches resume and
	// replicas catch up from it.
	HistoryRevisions int
	HistoryAge       time.Duration
	// MaxWatchers bounds this node's open watch streams (MAX_WATCHERS).
	MaxWatchers int
}

// nodeNumber extracts N from "node-N" (1 when the ID has no number).
func nodeNumber(id string) int {
	i := strings.LastIndexAny(id, "-_")
	if i >= 0 {
		if n, err := strconv.Atoi(id[i+1:]); err == nil && n > 0 {
			return n
		}
	}
	return 1
}

// DefaultConfig returns the defaults for the node called id.
func DefaultConfig(id string) Config {
	n := nodeNumber(id)
	return Config{
		NodeID:            id,
		NodeName:          fmt.Sprintf("Server-%d", n),
		HTTPAddr:          fmt.Sprintf(":%d", 8079+n),
		RaftAddr:          fmt.Sprintf("127.0.0.1:%d", 9000+n),
		DataDir:           fmt.Sprintf("./data/node%d", n),
		ClusterName:       DefaultClusterName,
		Partitions:        DefaultPartitions,
		ReplicationFactor: DefaultReplicationFactor,
		MinInSync:         DefaultMinInSync,
		FailoverGrace:     DefaultFailoverGrace,
		RequestTimeout:    DefaultRequestTimeout,
		StatusInterval:    DefaultStatusInterval,
		LogLevel:          "info",
		LogFormat:         "text",
		ReadMode:          "lease",
		CacheMB:           DefaultCacheMB,
		BodyTimeout:       httpapi.DefaultBodyTimeout,
		IdleTimeout:       httpapi.DefaultIdleTimeout,
		HistoryRevisions:  engine.DefaultHistoryRevisions,
		HistoryAge:        engine.DefaultHistoryAge,
		MaxWatchers:       engine.DefaultMaxWatchers,
	}
}

// FromEnv builds a Config from environment variables (lookup is os.LookupEnv
// in production, a map in tests). Values that cannot be parsed are errors
// naming the variable; derived defaults are filled in by Validate.
func FromEnv(lookup func(string) (string, bool)) (Config, error) {
	get := func(k string) string { v, _ := lookup(k); return strings.TrimSpace(v) }
	id := get("NODE_ID")
	if id == "" {
		id = "node-1"
	}
	c := DefaultConfig(id)
	str := func(k string, dst *string) {
		if v := get(k); v != "" {
			*dst = v
		}
	}
	str("NODE_NAME", &c.NodeName)
	str("HTTP_ADDR", &c.HTTPAddr)
	str("KV_ADDR", &c.KVAddr)
	str("RAFT_ADDR", &c.RaftAddr)
	str("GOSSIP_ADDR", &c.GossipAddr)
	str("ADVERTISE_HOST", &c.AdvertiseHost)
	str("DATA_DIR", &c.DataDir)
	str("CLUSTER_NAME", &c.ClusterName)
	str("LOG_LEVEL", &c.LogLevel)
	str("LOG_FORMAT", &c.LogFormat)
	str("READ_MODE", &c.ReadMode)
	str("CLUSTER_KEY", &c.ClusterKey)
	str("ADMIN_TOKEN", &c.AdminToken)
	str("TLS_CERT_FILE", &c.TLS.Cert)
	str("TLS_KEY_FILE", &c.TLS.Key)
	str("TLS_CA_FILE", &c.TLS.CA)
	for _, a := range strings.Split(get("JOIN_ADDR"), ",") {
		if a = strings.TrimSpace(a); a != "" {
			c.JoinAddrs = append(c.JoinAddrs, a)
		}
	}
	for _, h := range strings.Split(get("ALLOWED_HOSTS"), ",") {
		if h = strings.TrimSpace(h); h != "" {
			c.AllowedHosts = append(c.AllowedHosts, h)
		}
	}
	var errs []error
	if v := get("SERVICES"); v != "" {
		svcs, err := ParseServices(v)
		if err != nil {
			errs = append(errs, err)
		}
		c.Services = svcs
	}
	switch v := get("KV_AUTH"); v {
	case "", "open":
	case "required":
		c.KVAuth = true
	default:
		errs = append(errs, fmt.Errorf("KV_AUTH=%q: want required or open", v))
	}
	integer := func(k string, dst *int) {
		if v := get(k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: not an integer", k, v))
				return
			}
			*dst = n
		}
	}
	integer("PARTITIONS", &c.Partitions)
	integer("REPLICATION_FACTOR", &c.ReplicationFactor)
	integer("MIN_INSYNC", &c.MinInSync)
	integer("CACHE_MB", &c.CacheMB)
	integer("HISTORY_REVISIONS", &c.HistoryRevisions)
	integer("MAX_WATCHERS", &c.MaxWatchers)
	boolean := func(k string, dst *bool) bool {
		v := get(k)
		if v == "" {
			return false
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: not a boolean (true/false)", k, v))
			return false
		}
		*dst = b
		return true
	}
	// BOOTSTRAP defaults to true for node-1 when it has nobody to join.
	if !boolean("BOOTSTRAP", &c.Bootstrap) {
		c.Bootstrap = c.NodeID == "node-1" && len(c.JoinAddrs) == 0
	}
	boolean("PPROF", &c.Pprof)
	boolean("INSECURE", &c.Insecure)
	duration := func(k string, dst *time.Duration) {
		if v := get(k); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: not a duration (e.g. 2s, 500ms)", k, v))
				return
			}
			*dst = d
		}
	}
	duration("FAILOVER_GRACE", &c.FailoverGrace)
	duration("REQUEST_TIMEOUT", &c.RequestTimeout)
	duration("STATUS_INTERVAL", &c.StatusInterval)
	duration("HTTP_BODY_TIMEOUT", &c.BodyTimeout)
	duration("HTTP_IDLE_TIMEOUT", &c.IdleTimeout)
	duration("HISTORY_AGE", &c.HistoryAge)
	return c, errors.Join(errs...)
}

// splitAddr parses host:port, allowing an empty host and port 0.
func splitAddr(setting, addr string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%s=%q: want host:port or :port: %v", setting, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("%s=%q: port must be a number from 0 to 65535", setting, addr)
	}
	return h, n, nil
}

func isUnspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// Validate fills in derived defaults (KV_ADDR, GOSSIP_ADDR, ADVERTISE_HOST)
// and checks every setting, naming the first bad one.
func (c *Config) Validate() error {
	if c.NodeID == "" {
		return errors.New("NODE_ID must not be empty")
	}
	if strings.ContainsAny(c.NodeID, " \t\n/") || len(c.NodeID) > 64 {
		return fmt.Errorf("NODE_ID=%q: use up to 64 characters without spaces or slashes", c.NodeID)
	}
	if c.NodeName == "" {
		c.NodeName = c.NodeID
	}
	httpHost, httpPort, err := splitAddr("HTTP_ADDR", c.HTTPAddr)
	if err != nil {
		return err
	}
	if c.KVAddr == "" {
		switch {
		case httpPort == 0:
			c.KVAddr = net.JoinHostPort(httpHost, "0")
		case httpPort+1000 > 65535:
			return fmt.Errorf("HTTP_ADDR=%q: KV_ADDR defaults to its port + 1000, which is above 65535; set KV_ADDR", c.HTTPAddr)
		default:
			c.KVAddr = net.JoinHostPort(httpHost, strconv.Itoa(httpPort+1000))
		}
	}
	kvHost, kvPort, err := splitAddr("KV_ADDR", c.KVAddr)
	if err != nil {
		return err
	}
	raftHost, raftPort, err := splitAddr("RAFT_ADDR", c.RaftAddr)
	if err != nil {
		return err
	}
	if c.GossipAddr == "" {
		switch {
		case raftPort == 0:
			c.GossipAddr = net.JoinHostPort(raftHost, "0")
		case raftPort+1000 > 65535:
			return fmt.Errorf("RAFT_ADDR=%q: GOSSIP_ADDR defaults to its port + 1000, which is above 65535; set GOSSIP_ADDR", c.RaftAddr)
		default:
			c.GossipAddr = net.JoinHostPort(raftHost, strconv.Itoa(raftPort+1000))
		}
	}
	gossipHost, gossipPort, err := splitAddr("GOSSIP_ADDR", c.GossipAddr)
	if err != nil {
		return err
	}
	type listener struct {
		setting, host string
		port          int
	}
	ls := []listener{{"HTTP_ADDR", httpHost, httpPort}, {"KV_ADDR", kvHost, kvPort}, {"RAFT_ADDR", raftHost, raftPort}, {"GOSSIP_ADDR", gossipHost, gossipPort}}
	for i, a := range ls {
		for _, b := range ls[i+1:] {
			if a.port != 0 && a.port == b.port && (a.host == b.host || isUnspecified(a.host) || isUnspecified(b.host)) {
				return fmt.Errorf("%s=%s and %s=%s use the same port %d", a.setting, net.JoinHostPort(a.host, strconv.Itoa(a.port)), b.setting, net.JoinHostPort(b.host, strconv.Itoa(b.port)), a.port)
			}
		}
	}
	if c.AdvertiseHost == "" {
		c.AdvertiseHost = defaultAdvertiseHost(httpHost, kvHost, raftHost, gossipHost)
	}
	if strings.ContainsAny(c.AdvertiseHost, " :/") && net.ParseIP(c.AdvertiseHost) == nil {
		return fmt.Errorf("ADVERTISE_HOST=%q: want a host name or IP address without a port", c.AdvertiseHost)
	}
	for _, j := range c.JoinAddrs {
		if _, _, err := splitAddr("JOIN_ADDR", j); err != nil {
			return err
		}
	}
	if c.DataDir == "" {
		return errors.New("DATA_DIR must not be empty")
	}
	if c.ClusterName == "" {
		return errors.New("CLUSTER_NAME must not be empty")
	}
	if len(c.ClusterName) > MaxClusterNameBytes {
		return fmt.Errorf("CLUSTER_NAME=%q: at most %d bytes (it labels every gossip packet)", c.ClusterName, MaxClusterNameBytes)
	}
	if c.AdminToken != "" {
		if err := auth.ValidSecret(c.AdminToken); err != nil {
			return fmt.Errorf("ADMIN_TOKEN: %v", err)
		}
	}
	switch {
	case (c.TLS.Cert == "") != (c.TLS.Key == ""):
		return fmt.Errorf("TLS_CERT_FILE=%q and TLS_KEY_FILE=%q: set both, or neither", c.TLS.Cert, c.TLS.Key)
	case c.TLS.CA != "" && c.TLS.Cert == "":
		return fmt.Errorf("TLS_CA_FILE=%q requires client certificates over TLS: set TLS_CERT_FILE and TLS_KEY_FILE too", c.TLS.CA)
	case c.TLS.Cert != "":
		if _, err := c.TLS.ServerConfig(); err != nil {
			return err
		}
	}
	if c.ClusterKey != "" {
		if _, err := clusterkey.Parse(c.ClusterKey); err != nil {
			return fmt.Errorf("CLUSTER_KEY: %v; want the base64 of 32 random bytes (clusterkit keygen prints one)", err)
		}
	}
	if c.Partitions < 1 || c.Partitions > MaxPartitions {
		return fmt.Errorf("PARTITIONS=%d: must be from 1 to %d", c.Partitions, MaxPartitions)
	}
	if c.ReplicationFactor < 1 || c.ReplicationFactor > 7 {
		return fmt.Errorf("REPLICATION_FACTOR=%d: must be from 1 to 7", c.ReplicationFactor)
	}
	if c.MinInSync < 1 || c.MinInSync > 7 {
		return fmt.Errorf("MIN_INSYNC=%d: must be from 1 to 7", c.MinInSync)
	}
	if c.FailoverGrace < 0 {
		return fmt.Errorf("FAILOVER_GRACE=%s: must not be negative", c.FailoverGrace)
	}
	if c.RequestTimeout <= 0 {
		return fmt.Errorf("REQUEST_TIMEOUT=%s: must be positive", c.RequestTimeout)
	}
	if c.BodyTimeout < time.Second || c.BodyTimeout > time.Hour {
		return fmt.Errorf("HTTP_BODY_TIMEOUT=%s: must be from 1s to 1h", c.BodyTimeout)
	}
	if c.IdleTimeout < time.Second || c.IdleTimeout > time.Hour {
		return fmt.Errorf("HTTP_IDLE_TIMEOUT=%s: must be from 1s to 1h", c.IdleTimeout)
	}
	if c.StatusInterval < 0 {
		return fmt.Errorf("STATUS_INTERVAL=%s: must not be negative", c.StatusInterval)
	}
	if c.CacheMB < 1 || c.CacheMB > MaxCacheMB {
		return fmt.Errorf("CACHE_MB=%d: must be from 1 to %d", c.CacheMB, MaxCacheMB)
	}
	if c.HistoryRevisions < 1 || c.HistoryRevisions > MaxHistoryRevisions {
		return fmt.Errorf("HISTORY_REVISIONS=%d: must be from 1 to %d", c.HistoryRevisions, MaxHistoryRevisions)
	}
	if c.HistoryAge < time.Second || c.HistoryAge > 30*24*time.Hour {
		return fmt.Errorf("HISTORY_AGE=%s: must be from 1s to 720h", c.HistoryAge)
	}
	if c.MaxWatchers < 1 || c.MaxWatchers > MaxMaxWatchers {
		return fmt.Errorf("MAX_WATCHERS=%d: must be from 1 to %d", c.MaxWatchers, MaxMaxWatchers)
	}
	if c.ReadMode != "lease" && c.ReadMode != "confirm" {
		return fmt.Errorf("READ_MODE=%q: want lease or confirm", c.ReadMode)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "":
		c.LogFormat = "text"
	case "text", "json":
	default:
		return fmt.Errorf("LOG_FORMAT=%q: want text or json", c.LogFormat)
	}
	return validateServices(c.Services)
}

// NewLogger builds the logger LOG_LEVEL and LOG_FORMAT ask for, writing to
// w: slog's text handler by default, its JSON handler (one object a line)
// with LOG_FORMAT=json.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(c.LogLevel))) // checked by Validate; info if not
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// nodeToNodeExposed returns the first node-to-node listener (internal port
// or gossip) bound beyond loopback, as "SETTING=addr", or "" if both are on
// loopback. A wildcard bind or a host name other than localhost counts as
// beyond loopback.
func (c *Config) nodeToNodeExposed() string {
	for _, l := range []struct{ setting, addr string }{{"RAFT_ADDR", c.RaftAddr}, {"GOSSIP_ADDR", c.GossipAddr}} {
		host, _, _ := net.SplitHostPort(l.addr)
		if host == "localhost" {
			continue
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			continue
		}
		return l.setting + "=" + l.addr
	}
	return ""
}

// checkExposure refuses node-to-node listeners beyond loopback without a
// cluster key (haveKey: CLUSTER_KEY, or a keyring file from an earlier
// run), unless INSECURE is set: anyone who can reach them could otherwise
// join the cluster and rewrite its data.
func (c *Config) checkExposure(haveKey bool) error {
	exposed := c.nodeToNodeExposed()
	if exposed == "" || haveKey || c.Insecure {
		return nil
	}
	return fmt.Errorf("%s is not a loopback address, so any host that reaches it could join this cluster: set CLUSTER_KEY (clusterkit keygen prints one) on every node, or INSECURE=true to run without one", exposed)
}

// defaultAdvertiseHost picks the host peers should dial: the first specific
// bind host; otherwise, inside a container, this host's own address (the
// loopback address would point each container at itself); otherwise
// 127.0.0.1.
func defaultAdvertiseHost(hosts ...string) string {
	for _, h := range hosts {
		if !isUnspecified(h) {
			return h
		}
	}
	if inContainer() {
		if name, err := os.Hostname(); err == nil {
			if addrs, err := net.LookupHost(name); err == nil {
				for _, a := range addrs {
					if ip := net.ParseIP(a); ip != nil && !ip.IsLoopback() {
						return a
					}
				}
			}
		}
	}
	return "127.0.0.1"
}

func inContainer() bool {
	_, err := os.Stat("/.dockerenv")
	return err == nil || os.Getenv("container") != ""
}
