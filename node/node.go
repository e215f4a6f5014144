package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterkit/clusterkit/clusterkey"
	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/kvapi"
	"github.com/clusterkit/clusterkit/membership"
	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// ClusterKit is one running node: gossip, Raft, storage and both HTTP APIs.
// Build it with New, then Start it, then Shutdown it.
type ClusterKit struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	mgmtLn, kvLn, raftLn net.Listener
	adv                  advertised

	db      *storage.DB
	raft    *consensus.Store
	members *membership.Membership
	eng     *engine.Engine
	kv      *kvapi.Server
	router  *tableRouter
	control *raftControl
	metrics *prometheus.Registry

	mgmtSrv, kvSrv *http.Server
	// keyring holds the cluster keys (nil: the node runs without one);
	// keyringMu serialises its changes with their saving.
	keyring   *clusterkey.Keyring
	keyringMu sync.Mutex
	// peerLn serves the internal port; peers makes this node's calls.
	peerLn *peer.Listener
	peers  *peer.Client
	// overviewStats shares GET /cluster/overview's fan-out to members.
	overviewStats statsCache
	// mgmtClient reads seeds' management APIs when joining.
	mgmtClient *http.Client

	// tableFloor is the table version this node had acted on when it
	// started: below it the engine serves nothing.
	tableFloor uint64
	// hooks holds the event handlers and the recent-event log.
	hooks *hooks
	// leaving is set once this node is asked to leave, drains or shuts
	// down: it no longer reports ready.
	leaving atomic.Bool
	// removing is set when an operator asked this node to leave for good
	// (POST /cluster/leave): its Raft vote goes too.
	removing atomic.Bool

	reconcileCh chan struct{}
	leaveCh     chan struct{}
	leaveOnce   sync.Once
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	stopOnce    sync.Once
	stopErr     error
}

// advertised holds the addresses peers use to reach this node.
type advertised struct {
	mgmt, kv, raft, gossip string
}

// New validates cfg, binds every listener (so a port clash is reported at
// once, naming the setting), and opens storage, Raft and gossip. Nothing is
// served until Start.
func New(cfg Config, logger *slog.Logger) (ck *ClusterKit, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("self", cfg.NodeID)
	ck = &ClusterKit{cfg: cfg, log: logger, started: time.Now(), reconcileCh: make(chan struct{}, 1),
		leaveCh: make(chan struct{}), mgmtClient: &http.Client{Timeout: 5 * time.Second},
		hooks: newHooks(logger, hookQueueSize)}
	var closers []func() error
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				_ = closers[i]()
			}
		}
	}()
	// The key decides whether the node may start at all: check it before
	// binding anything.
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("DATA_DIR=%s: %w", cfg.DataDir, err)
	}
	if ck.keyring, err = openKeyring(cfg, logger); err != nil {
		return nil, err
	}
	if err := cfg.checkExposure(ck.keyring != nil); err != nil {
		return nil, err
	}
	if exposed := cfg.nodeToNodeExposed(); exposed != "" && ck.keyring == nil {
		logger.Warn("INSECURE=true: node-to-node traffic is neither authenticated nor encrypted; any host that reaches "+exposed+" can join this cluster", "listener", exposed)
	}
	listen := func(setting, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s=%s: cannot listen: %w", setting, addr, err)
		}
		closers = append(closers, ln.Close)
		return ln, nil
	}
	if ck.mgmtLn, err = listen("HTTP_ADDR", cfg.HTTPAddr); err != nil {
		return nil, err
	}
	if ck.kvLn, err = listen("KV_ADDR", cfg.KVAddr); err != nil {
		return nil, err
	}
	if ck.raftLn, err = listen("RAFT_ADDR", cfg.RaftAddr); err != nil {
		return nil, err
	}
	if cfg.TLS.Cert != "" {
		// Both client listeners speak TLS; the joining side of
		// JOIN_ADDR does too, with the same files.
		srvTLS, err := cfg.TLS.ServerConfig()
		if err != nil {
			return nil, err
		}
		ck.mgmtLn, ck.kvLn = tls.NewListener(ck.mgmtLn, srvTLS), tls.NewListener(ck.kvLn, srvTLS)
		cliTLS, err := cfg.TLS.ClientConfig()
		if err != nil {
			return nil, err
		}
		ck.mgmtClient.Transport = &http.Transport{TLSClientConfig: cliTLS}
	}
	ck.adv.mgmt = advertise(cfg.HTTPAddr, ck.mgmtLn, cfg.AdvertiseHost)
	ck.adv.kv = advertise(cfg.KVAddr, ck.kvLn, cfg.AdvertiseHost)
	ck.adv.raft = advertise(cfg.RaftAddr, ck.raftLn, cfg.AdvertiseHost)

	if ck.db, err = storage.Open(filepath.Join(cfg.DataDir, "kv"), storage.Options{
		Logger: logger.With("component", "storage"), CacheBytes: int64(cfg.CacheMB) << 20,
	}); err != nil {
		return nil, fmt.Errorf("DATA_DIR=%s: %w", cfg.DataDir, err)
	}
	closers = append(closers, ck.db.Close)
	if ck.tableFloor, err = ck.db.TableVersion(); err != nil {
		return nil, fmt.Errorf("DATA_DIR=%s: %w", cfg.DataDir, err)
	}

	gossipHost, _, _ := net.SplitHostPort(cfg.GossipAddr)
	advHost := cfg.AdvertiseHost
	if !isUnspecified(gossipHost) {
		advHost = gossipHost
	}
	meta := membership.Meta{ID: cfg.NodeID, Name: cfg.NodeName, MgmtAddr: ck.adv.mgmt, KVAddr: ck.adv.kv, RaftAddr: ck.adv.raft,
		Incarnation: strconv.FormatInt(time.Now().UnixNano(), 36),
		Services:    encodeServices(advertiseServices(cfg.Services, cfg.AdvertiseHost)),
		Store:       ck.db.ID()}
	// memberlist binds the gossip port itself; with port 0 we learn the
	// real one only afterwards, so the gossip address in Meta is derived
	// from the configured one when it is fixed.
	meta.GossipAddr = net.JoinHostPort(advHost, portOf(cfg.GossipAddr))
	mcfg := membership.Config{Meta: meta, Bind: cfg.GossipAddr, AdvertiseHost: advHost, Label: cfg.ClusterName,
		Logger: logger.With("component", "gossip")}
	if ck.keyring != nil {
		mcfg.GossipKeys = ck.keyring.GossipKeys()
	}
	ck.members, err = membership.New(mcfg)
	if err != nil {
		return nil, fmt.Errorf("GOSSIP_ADDR=%s: %w", cfg.GossipAddr, err)
	}
	closers = append(closers, ck.members.Shutdown)
	ck.adv.gossip = ck.members.LocalAddr()

	pcfg := peer.Config{Self: cfg.NodeID, ClusterName: cfg.ClusterName, Logger: logger.With("component", "peer")}
	if ck.keyring != nil {
		pcfg.Security = ck.keyring
	}
	ck.peerLn = peer.NewListener(ck.raftLn, pcfg)
	closers = append(closers, ck.peerLn.Close)
	ck.peers = peer.NewClient(pcfg, ck.resolveInternal)
	ck.raft, err = consensus.Open(consensus.Options{
		NodeID: cfg.NodeID, Stream: ck.peerLn.Raft(), Advertise: ck.adv.raft, DataDir: cfg.DataDir,
		Bootstrap: cfg.Bootstrap, MayBootstrap: ck.mayBootstrap, Logger: logger.With("component", "raft"),
	})
	if err != nil {
		return nil, fmt.Errorf("RAFT_ADDR=%s DATA_DIR=%s: %w", cfg.RaftAddr, cfg.DataDir, err)
	}

	ck.router = &tableRouter{self: cfg.NodeID, fsm: ck.raft.FSM()}
	ck.control = &raftControl{ck: ck}
	ck.eng, err = engine.New(engine.Options{
		Router: ck.router, Control: ck.control, Storage: ck.db, Transport: ck.peers,
		Logger: logger.With("component", "engine"), RequestTimeout: cfg.RequestTimeout,
		ReadMode: cfg.ReadMode, HistoryRevisions: uint64(cfg.HistoryRevisions), HistoryAge: cfg.HistoryAge,
		MaxWatchers: cfg.MaxWatchers,
	})
	if err != nil {
		_ = ck.raft.Close()
		return nil, err
	}
	ck.kv = kvapi.New(kvapi.Options{Engine: ck.eng, Info: ck, Auth: kvAuth{ck: ck}, Logger: logger.With("component", "kv")})
	handlers := peer.Handlers{Data: ck.eng, Control: controlServer{ck: ck}}
	ck.peers.SetLocal(handlers)
	ck.peerLn.SetHandlers(handlers)
	ck.metrics = ck.newMetrics()
	limits := httpapi.Limits{BodyTimeout: cfg.BodyTimeout, IdleTimeout: cfg.IdleTimeout,
		// Long enough for the slowest answer: a client operation with its
		// retries, or a management change through the Raft leader.
		WriteTimeout: cfg.RequestTimeout + 30*time.Second}
	guard := httpapi.Guard(httpapi.NewHosts(append(cfg.AllowedHosts, cfg.AdvertiseHost)...), logger.With("component", "http"))
	ck.mgmtSrv = httpapi.NewServer(guard(ck.mgmtHandler()), limits, logger.With("component", "http", "listener", "mgmt"))
	ck.kvSrv = httpapi.NewServer(guard(ck.kv.Handler()), limits, logger.With("component", "http", "listener", "kv"))
	ck.kvSrv.RegisterOnShutdown(ck.kv.Shutdown)
	return ck, nil
}

// keyringFile is where a node keeps its cluster keys, in DATA_DIR.
const keyringFile = "keyring.json"

func keyringPath(cfg Config) string { return filepath.Join(cfg.DataDir, keyringFile) }

func (ck *ClusterKit) keyringPath() string { return keyringPath(ck.cfg) }

// openKeyring loads the node's keyring from DATA_DIR and CLUSTER_KEY (nil
// when it has neither).
func openKeyring(cfg Config, logger *slog.Logger) (*clusterkey.Keyring, error) {
	var given *clusterkey.Key
	if cfg.ClusterKey != "" {
		k, err := clusterkey.Parse(cfg.ClusterKey)
		if err != nil {
			return nil, fmt.Errorf("CLUSTER_KEY: %w", err)
		}
		given = &k
	}
	path := keyringPath(cfg)
	r, note, err := clusterkey.Startup(path, given)
	if err != nil {
		return nil, fmt.Errorf("DATA_DIR=%s: %w", cfg.DataDir, err)
	}
	if note != "" {
		logger.Warn(note)
	}
	if r != nil {
		logger.Info("cluster key loaded: gossip is encrypted and internal connections are mutually authenticated TLS",
			"primary", r.Primary().Fingerprint(), "keys", len(r.Keys()))
	}
	return r, nil
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// advertise turns a bind address into one peers can dial: the bound port
// (which may have been 0) on the bind host, or on advHost when the bind host
// is a wildcard.
func advertise(bind string, ln net.Listener, advHost string) string {
	host, _, _ := net.SplitHostPort(bind)
	if isUnspecified(host) {
		host = advHost
	}
	port := ln.Addr().(*net.TCPAddr).Port
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// Start serves both APIs, joins the cluster (retrying in the background
// until it succeeds) and starts the background loops. It returns at once.
func (ck *ClusterKit) Start(ctx context.Context) error {
	ctx, ck.cancel = context.WithCancel(context.WithoutCancel(ctx))
	serve := func(name string, srv *http.Server, ln net.Listener) {
		ck.wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				ck.log.Error("http server stopped", "listener", name, "err", err)
			}
		})
	}
	serve("mgmt", ck.mgmtSrv, ck.mgmtLn)
	serve("kv", ck.kvSrv, ck.kvLn)
	ck.hooks.startDispatch(ctx)
	ck.wg.Go(func() { ck.deriveEvents(ctx) })
	ck.wg.Go(func() { ck.eng.Run(ctx) })
	ck.wg.Go(func() { ck.drainMemberEvents(ctx) })
	ck.wg.Go(func() { ck.monitorLeadership(ctx) })
	ck.wg.Go(func() { ck.reconnectLoop(ctx) })
	ck.wg.Go(func() { ck.ensureAuthSettings(ctx) })
	if ck.cfg.StatusInterval > 0 {
		ck.wg.Go(func() { ck.printStatus(ctx) })
	}
	if len(ck.cfg.JoinAddrs) > 0 {
		ck.wg.Go(func() { ck.keepJoined(ctx) })
	}
	ck.log.Info("node started",
		"name", ck.cfg.NodeName, "mgmt", ck.adv.mgmt, "kv", ck.adv.kv, "raft", ck.adv.raft,
		"gossip", ck.adv.gossip, "data_dir", ck.cfg.DataDir, "bootstrap", ck.cfg.Bootstrap, "join", ck.cfg.JoinAddrs)
	return nil
}

// keepJoined joins through JOIN_ADDR, and joins again whenever this node has
// been outside a working cluster (no Raft leader known) for a while: gossip
// can end up split if seeds came up in an unlucky order.
func (ck *ClusterKit) keepJoined(ctx context.Context) {
	const recheck = 5 * time.Second
	for {
		if err := ck.members.Join(ctx, ck.cfg.JoinAddrs, ck.resolveGossipAddrs); err != nil {
			if ctx.Err() == nil {
				ck.log.Error("could not join the cluster", "err", err)
			}
			return
		}
		unhealthySince := time.Time{}
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if ck.healthy() {
				unhealthySince = time.Time{}
				continue
			}
			if unhealthySince.IsZero() {
				unhealthySince = time.Now()
			}
			if time.Since(unhealthySince) > recheck {
				ck.log.Warn("no raft leader known for a while; joining again through JOIN_ADDR", "seeds", ck.cfg.JoinAddrs)
				break
			}
		}
	}
}

// reconnectLoop gossips again with members the cluster state knows but
// gossip does not see alive: a node restarted without JOIN_ADDR (the
// bootstrap node of the quick start) learns its peers from its Raft state
// this way, and gossip heals after a long network cut (Serf's reconnect).
func (ck *ClusterKit) reconnectLoop(ctx context.Context) {
	t := time.NewTicker(3 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seen := map[string]bool{}
		for _, m := range ck.members.Members() {
			if m.State == membership.Alive || m.State == membership.Suspect {
				seen[m.Meta.ID] = true
			}
		}
		var addrs []string
		for id, n := range ck.raft.State().Nodes {
			if id != ck.cfg.NodeID && !seen[id] && n.Status != consensus.StatusLeft && n.GossipAddr != "" {
				addrs = append(addrs, n.GossipAddr)
			}
		}
		if len(addrs) == 0 {
			continue
		}
		if n, err := ck.members.TryJoin(addrs); n > 0 {
			ck.log.Info("gossip reconnected with members known to the cluster state", "contacted", n)
		} else {
			ck.log.Debug("gossip reconnect attempt failed", "addrs", addrs, "err", err)
		}
	}
}

// drainMemberEvents always reads gossip events (memberlist must never wait
// on us) and turns them into a reconcile nudge for the leader loop and a
// sync nudge for the data plane.
func (ck *ClusterKit) drainMemberEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-ck.members.Events():
			ck.nudgeReconcile()
			ck.eng.Kick()
		}
	}
}

func (ck *ClusterKit) nudgeReconcile() {
	select {
	case ck.reconcileCh <- struct{}{}:
	default:
	}
}

// Shutdown leaves the cluster gracefully and stops everything in reverse
// order of start: leadership handed over, gossip leave announced, HTTP
// drained, background loops stopped, Raft, gossip, and storage last.
func (ck *ClusterKit) Shutdown(ctx context.Context) error {
	ck.stopOnce.Do(func() { ck.stopErr = ck.shutdown(ctx) })
	return ck.stopErr
}

func (ck *ClusterKit) shutdown(ctx context.Context) error {
	ck.log.Info("shutting down")
	ck.leaving.Store(true)
	var errs []error
	if servers, _ := ck.raft.Servers(); ck.raft.IsLeader() && len(servers) > 1 {
		if err := ck.raft.TransferLeadership(); err != nil {
			ck.log.Warn("leadership transfer failed", "err", err)
		}
	}
	if err := ck.members.Leave(2 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if ck.removing.Load() {
		ck.awaitRaftRemoval(ctx)
	}
	errs = append(errs, ck.mgmtSrv.Shutdown(ctx), ck.kvSrv.Shutdown(ctx))
	if ck.cancel != nil {
		ck.cancel()
	}
	ck.wg.Wait()
	// Peers' requests in flight may use the store: end them before it
	// closes. Raft closes the internal port itself.
	ck.peerLn.StopServing()
	ck.peers.Close()
	errs = append(errs, ck.raft.Close(), ck.members.Shutdown(), ck.db.Close())
	ck.log.Info("stopped")
	return errors.Join(errs...)
}

// Config returns the validated configuration.
func (ck *ClusterKit) Config() Config { return ck.cfg }

// MgmtAddr and KVAddr return the advertised addresses of the two APIs.
func (ck *ClusterKit) MgmtAddr() string { return ck.adv.mgmt }

// KVAddr returns the advertised address of the KV API.
func (ck *ClusterKit) KVAddr() string { return ck.adv.kv }

// IsLeader reports whether this node is the Raft leader.
func (ck *ClusterKit) IsLeader() bool { return ck.raft.IsLeader() }

// RaftState is "Leader", "Follower", "Candidate" or "Shutdown".
func (ck *ClusterKit) RaftState() string { return ck.raft.RaftState() }

// ClusterNodes counts the members that are not dead and have not left.
func (ck *ClusterKit) ClusterNodes() int {
	n := 0
	for _, m := range ck.raft.State().Nodes {
		if m.Status == consensus.StatusAlive || m.Status == consensus.StatusSuspect {
			n++
		}
	}
	if n == 0 {
		return 1 // this node, before the table knows it
	}
	return n
}
