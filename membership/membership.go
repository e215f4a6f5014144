// Package membership discovers peers and detects failures with
// hashicorp/memberlist (SWIM gossip). It turns memberlist's callbacks into
// Member states and a stream of events, logs every transition (alive,
// suspect, dead, left) with the node and the time it took, and never lets
// memberlist block on a slow consumer.
package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/clusterkit/clusterkit/internal/logbridge"
)

// leaveIntentPrefix starts the user message a node sends before leaving.
const leaveIntentPrefix = "clusterkit-leave:"

// leaveIntentGrace is how long a departure memberlist reports without a
// leave intent waits for one before it is recorded as a death. The intent
// travels on its own TCP stream and may be processed just after the
// gossiped dead message of the same leave.
const leaveIntentGrace = 500 * time.Millisecond

// leaveIntentTTL bounds how long a leave intent stays valid.
const leaveIntentTTL = time.Minute

// Meta is what every node advertises about itself through gossip.
type Meta struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	MgmtAddr   string `json:"mgmt"`
	KVAddr     string `json:"kv"`
	RaftAddr   string `json:"raft"`
	GossipAddr string `json:"gossip"`
	// Incarnation is different for every start of the node's process, so
	// the cluster can tell a restarted node from one that never went away.
	Incarnation string `json:"inc,omitempty"`
	// Services is the node's service metadata (SERVICES), opaque here: the
	// node package encodes it as "name=host:port,..." sorted by name. A
	// string keeps Meta comparable, and nodes that predate it decode it
	// as empty.
	Services string `json:"svc,omitempty"`
	// Store is the identity of the node's data directory (storage.DB.ID):
	// the same across restarts on the same disk, new when the data is gone.
	Store string `json:"store,omitempty"`
}

// State is a member's health as seen by this node.
type State string

// Member states.
const (
	Alive   State = "alive"
	Suspect State = "suspect"
	Dead    State = "dead"
	Left    State = "left"
)

// Member is one node as this node currently sees it.
type Member struct {
	Meta  Meta
	State State
	// Since is when this node saw State begin.
	Since time.Time
	// LastAck is when this node last got an answer to a probe of the
	// member (zero if it never probed it).
	LastAck time.Time
}

// Event reports a change of a member's state.
type Event struct {
	Member Member
	// Previous is the state before the change ("" for a new member).
	Previous State
}

// Config configures gossip.
type Config struct {
	Meta Meta
	// Bind is host:port for gossip (UDP and TCP); port 0 picks one.
	Bind string
	// AdvertiseHost is the host peers use to reach this node.
	AdvertiseHost string
	// Label is put on every gossip packet and stream (memberlist's label),
	// and gossip with another label is refused: the cluster name, so two
	// clusters never merge.
	Label string
	// GossipKeys, when set, encrypt and authenticate gossip (AES-GCM,
	// memberlist's keyring): the first encrypts, all decrypt.
	GossipKeys [][]byte
	Logger     *slog.Logger
	// ProbeInterval, ProbeTimeout and SuspicionMult tune failure detection;
	// zero values take LAN defaults tuned for fast detection.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	SuspicionMult int
}

// Membership wraps a memberlist instance.
type Membership struct {
	ml      *memberlist.Memberlist
	keyring *memberlist.Keyring // nil when gossip is not encrypted
	log     *slog.Logger
	meta    []byte
	self    string
	events  chan Event

	mu      sync.Mutex
	members map[string]*Member
	// leaving records graceful-leave announcements by node ID: memberlist
	// reports a leave and a death through the same callback and does not
	// keep the public Node.State field up to date, so (like Serf) we send
	// our own leave intent before leaving.
	leaving  map[string]time.Time
	label    string
	refusals refusalLog
	// departures counts memberlist's join and leave notifications per
	// node, so that a death decided after leaveIntentGrace is dropped if
	// the node came back meanwhile.
	departures map[string]uint64
}

// New starts gossip on cfg.Bind. It does not join anyone yet.
func New(cfg Config) (*Membership, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	meta, err := json.Marshal(cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("encode node meta: %w", err)
	}
	if len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("node meta is %d bytes, memberlist allows %d", len(meta), memberlist.MetaMaxSize)
	}
	host, portStr, err := net.SplitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address %q: %w", cfg.Bind, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("gossip bind port %q: %w", portStr, err)
	}
	m := &Membership{
		log:     cfg.Logger,
		meta:    meta,
		self:    cfg.Meta.ID,
		events:  make(chan Event, 1024),
		members: map[string]*Member{},
		leaving: map[string]time.Time{},
		label:   cfg.Label,
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Meta.ID
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr = host
	mc.BindPort = port
	adv, err := resolveIP(cfg.AdvertiseHost)
	if err != nil {
		return nil, err
	}
	mc.AdvertiseAddr = adv
	mc.AdvertisePort = port
	mc.ProbeInterval = orDefault(cfg.ProbeInterval, 500*time.Millisecond)
	mc.ProbeTimeout = orDefault(cfg.ProbeTimeout, 250*time.Millisecond)
	mc.SuspicionMult = 3
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	mc.GossipInterval = 100 * time.Millisecond
	mc.PushPullInterval = 15 * time.Second
	// A node restarted with a new address (a container) may reclaim its
	// name once memberlist has declared the old incarnation dead.
	mc.DeadNodeReclaimTime = time.Second
	mc.Label = cfg.Label
	if len(cfg.GossipKeys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.GossipKeys, cfg.GossipKeys[0])
		if err != nil {
			return nil, fmt.Errorf("gossip keyring: %w", err)
		}
		mc.Keyring = kr
		m.keyring = kr
	}
	mc.Delegate = &delegate{m: m}
	mc.Events = &eventDelegate{m: m}
	mc.Ping = &pingDelegate{m: m}
	mc.Logger = logbridge.StdLogHook(cfg.Logger.With("lib", "memberlist"), m.observeLogLine)
	if port == 0 {
		// memberlist picks a free TCP port and binds UDP to the same one,
		// but advertises the configured port unless told otherwise.
		mc.AdvertisePort = 0
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.Bind, err)
	}
	m.ml = ml
	if port == 0 {
		// Only now is the real port known: advertise it.
		h, _, _ := net.SplitHostPort(cfg.Meta.GossipAddr)
		if h == "" {
			h = adv
		}
		meta := cfg.Meta
		meta.GossipAddr = net.JoinHostPort(h, strconv.Itoa(int(ml.LocalNode().Port)))
		b, err := json.Marshal(meta)
		if err != nil {
			_ = ml.Shutdown()
			return nil, fmt.Errorf("encode node meta: %w", err)
		}
		m.mu.Lock()
		m.meta = b
		m.mu.Unlock()
		if err := ml.UpdateNode(time.Second); err != nil {
			_ = ml.Shutdown()
			return nil, fmt.Errorf("advertise gossip port: %w", err)
		}
	}
	return m, nil
}

// resolveIP turns a host name into an IP address: memberlist advertises IPs
// only. Peers still learn the name through Meta.
func resolveIP(host string) (string, error) {
	if host == "" || net.ParseIP(host) != nil {
		return host, nil
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return "", fmt.Errorf("resolve advertise host %q: %w", host, err)
	}
	for _, ip := range ips {
		if ip.To4() != nil {
			return ip.String(), nil
		}
	}
	if len(ips) == 0 {
		return "", fmt.Errorf("advertise host %q has no addresses", host)
	}
	return ips[0].String(), nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// SetGossipKeys replaces the gossip keyring with keys, the first of which
// becomes the one gossip is encrypted with (a key rotation).
func (m *Membership) SetGossipKeys(keys [][]byte) error {
	kr := m.keyring
	if kr == nil || len(keys) == 0 {
		return errors.New("gossip runs without encryption: a keyring needs CLUSTER_KEY at start")
	}
	for _, k := range keys {
		if err := kr.AddKey(k); err != nil {
			return fmt.Errorf("gossip keyring: %w", err)
		}
	}
	if err := kr.UseKey(keys[0]); err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	for _, k := range kr.GetKeys() {
		if !slices.ContainsFunc(keys, func(x []byte) bool { return string(x) == string(k) }) {
			if err := kr.RemoveKey(k); err != nil {
				return fmt.Errorf("gossip keyring: %w", err)
			}
		}
	}
	return nil
}

// LocalAddr returns the gossip address peers reach this node on.
func (m *Membership) LocalAddr() string {
	n := m.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Events delivers member state changes. The channel is buffered; if the
// consumer falls behind, events are dropped (and logged) rather than
// stalling gossip, so consumers must also reconcile from Members().
func (m *Membership) Events() <-chan Event { return m.events }

// Members returns every member this node has seen, including dead and left
// ones, sorted by ID.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, mem := range m.members {
		out = append(out, *mem)
	}
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.Meta.ID < b.Meta.ID:
			return -1
		case a.Meta.ID > b.Meta.ID:
			return 1
		}
		return 0
	})
	return out
}

// Join contacts the given gossip addresses, retrying with capped
// exponential backoff until one answers or ctx ends. resolve, when not nil,
// is called first on every attempt to turn seeds (e.g. management
// addresses) into gossip addresses.
func (m *Membership) Join(ctx context.Context, seeds []string, resolve func(context.Context, []string) ([]string, error)) error {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		addrs := seeds
		var err error
		if resolve != nil {
			addrs, err = resolve(ctx, seeds)
		}
		if err == nil {
			var n int
			n, err = m.ml.Join(addrs)
			if n > 0 {
				m.log.Info("joined cluster", "contacted", n, "attempt", attempt)
				return nil
			}
			if err == nil {
				err = errors.New("no member answered")
			}
		}
		m.log.Warn("join failed, retrying", "seeds", seeds, "attempt", attempt, "retry_in", backoff, "err", err)
		jitter := time.Duration(rand.Int64N(int64(backoff) / 4))
		select {
		case <-ctx.Done():
			return fmt.Errorf("join %v: %w", seeds, ctx.Err())
		case <-time.After(backoff + jitter):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// TryJoin makes one attempt to contact the given gossip addresses and
// returns how many answered.
func (m *Membership) TryJoin(addrs []string) (int, error) {
	n, err := m.ml.Join(addrs)
	if err != nil {
		return n, fmt.Errorf("gossip join %v: %w", addrs, err)
	}
	return n, nil
}

// NumAlive is the number of members currently alive or suspect.
func (m *Membership) NumAlive() int { return m.ml.NumMembers() }

// Leave announces a graceful departure and waits up to timeout for it to
// spread.
func (m *Membership) Leave(timeout time.Duration) error {
	msg := append([]byte(leaveIntentPrefix), m.self...)
	for _, n := range m.ml.Members() {
		if n.Name != m.self {
			if err := m.ml.SendReliable(n, msg); err != nil {
				m.log.Debug("leave intent not delivered", "node", n.Name, "err", err)
			}
		}
	}
	if err := m.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip leave: %w", err)
	}
	return nil
}

// Shutdown stops gossip.
func (m *Membership) Shutdown() error {
	if err := m.ml.Shutdown(); err != nil {
		return fmt.Errorf("gossip shutdown: %w", err)
	}
	return nil
}

// transition records a new state for a member and emits an event.
func (m *Membership) transition(meta Meta, st State) {
	m.mu.Lock()
	m.transitionLocked(meta, st)
}

// transitionFrom moves member id from state from to state to, keeping its
// metadata; the check and the change are one atomic step, so a concurrent
// callback (a death) cannot be overwritten by a decision taken on a state
// that no longer holds.
func (m *Membership) transitionFrom(id string, from, to State) {
	m.mu.Lock()
	cur, ok := m.members[id]
	if !ok || cur.State != from {
		m.mu.Unlock()
		return
	}
	m.transitionLocked(cur.Meta, to)
}

// transitionLocked is called with m.mu held and releases it.
func (m *Membership) transitionLocked(meta Meta, st State) {
	now := time.Now()
	cur, ok := m.members[meta.ID]
	var prev State
	var since time.Time
	if ok {
		prev, since = cur.State, cur.Since
		if prev == st && cur.Meta == meta {
			m.mu.Unlock()
			return
		}
		if prev == st {
			cur.Meta = meta
			snapshot := *cur
			m.mu.Unlock()
			m.emit(Event{Member: snapshot, Previous: prev})
			return
		}
	}
	mem := &Member{Meta: meta, State: st, Since: now}
	if ok {
		mem.LastAck = cur.LastAck
	}
	m.members[meta.ID] = mem
	snapshot := *mem // mem is shared: read it only under m.mu
	m.mu.Unlock()

	if meta.ID != m.self {
		attrs := []any{"node", meta.ID, "name", meta.Name, "at", now.Format(time.RFC3339Nano)}
		if ok {
			attrs = append(attrs, "previous", string(prev), "previous_for", now.Sub(since).Round(time.Millisecond).String())
		}
		// How long the node has been silent: the time failure detection
		// took, measured from the last answer it gave us.
		if (st == Suspect || st == Dead) && !snapshot.LastAck.IsZero() {
			attrs = append(attrs, "after", now.Sub(snapshot.LastAck).Round(time.Millisecond).String())
		}
		msg := "member " + string(st)
		if st == Alive && !ok {
			msg = "member joined"
		}
		if st == Alive || st == Left {
			m.log.Info(msg, attrs...)
		} else {
			m.log.Warn(msg, attrs...)
		}
	}
	m.emit(Event{Member: snapshot, Previous: prev})
}

func (m *Membership) emit(ev Event) {
	select {
	case m.events <- ev:
	default:
		m.log.Warn("membership event dropped: consumer is behind", "node", ev.Member.Meta.ID, "state", ev.Member.State)
	}
}

// observeLogLine reads memberlist's log lines for what it has no callback
// for. It reports whether the line should still be logged as it is.
//
//   - "Suspect X has failed, no acks received": this node's probe of X
//     failed and X is now suspect (memberlist's EventDelegate covers join,
//     update and leave only).
//   - gossip refused for another label (cluster name) or a key it cannot
//     decrypt: memberlist logs one error per packet; we log one clear line
//     per sender and minute instead.
func (m *Membership) observeLogLine(line string) bool {
	const pre, post = "Suspect ", " has failed, no acks received"
	if i := strings.Index(line, pre); i >= 0 && strings.HasSuffix(line, post) {
		m.transitionFrom(line[i+len(pre):len(line)-len(post)], Alive, Suspect)
		return true
	}
	var reason string
	lower := strings.ToLower(line)
	switch {
	case strings.Contains(lower, "unacceptable label"):
		label := "(none)"
		if i := strings.Index(line, `label "`); i >= 0 {
			if j := strings.Index(line[i+7:], `"`); j >= 0 {
				label = strconv.Quote(line[i+7 : i+7+j])
			}
		}
		reason = fmt.Sprintf("it gossips for cluster %s, this node's cluster is %q (CLUSTER_NAME)", label, m.label)
	case strings.Contains(lower, "decrypt packet failed"), strings.Contains(lower, "no installed keys could decrypt"):
		reason = "its gossip is not encrypted with a key of this node's keyring (CLUSTER_KEY)"
	case strings.Contains(lower, "not encrypted"), strings.Contains(lower, "encryption is configured"):
		reason = "its gossip is not encrypted, and this node requires CLUSTER_KEY"
	default:
		return true
	}
	from := "unknown"
	if i := strings.LastIndex(line, "from="); i >= 0 {
		from = strings.TrimSpace(line[i+len("from="):])
	}
	if m.refusals.allow(hostOnly(from)+reason, time.Now()) {
		m.log.Warn("refused gossip", "from", from, "reason", reason)
	}
	return false
}

// refusalLog lets one line per sender and reason through per minute.
type refusalLog struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (r *refusalLog) allow(key string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil || len(r.last) > 1024 {
		r.last = map[string]time.Time{}
	}
	if t, ok := r.last[key]; ok && now.Sub(t) < time.Minute {
		return false
	}
	r.last[key] = now
	return true
}

func hostOnly(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// pingDelegate clears suspicion: a node that answers our probe is alive.
type pingDelegate struct{ m *Membership }

func (p *pingDelegate) AckPayload() []byte { return nil }

func (p *pingDelegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	p.m.mu.Lock()
	if cur, ok := p.m.members[other.Name]; ok {
		cur.LastAck = time.Now()
	}
	p.m.mu.Unlock()
	p.m.transitionFrom(other.Name, Suspect, Alive)
}

func decodeMeta(n *memberlist.Node) (Meta, error) {
	var meta Meta
	if err := json.Unmarshal(n.Meta, &meta); err != nil {
		return Meta{}, fmt.Errorf("decode meta of %s: %w", n.Name, err)
	}
	if meta.ID == "" {
		meta.ID = n.Name
	}
	return meta, nil
}

type delegate struct{ m *Membership }

func (d *delegate) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	return d.m.meta
}
func (d *delegate) NotifyMsg(b []byte) {
	id, ok := strings.CutPrefix(string(b), leaveIntentPrefix)
	if !ok {
		return
	}
	now := time.Now()
	d.m.mu.Lock()
	if cur, ok := d.m.members[id]; ok && cur.State == Dead && now.Sub(cur.Since) < leaveIntentTTL {
		// The intent lost the race even against the grace period: the
		// node did leave.
		d.m.transitionLocked(cur.Meta, Left)
		return
	}
	d.m.leaving[id] = now
	d.m.mu.Unlock()
}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

type eventDelegate struct{ m *Membership }

func (e *eventDelegate) handle(n *memberlist.Node, st State) {
	meta, err := decodeMeta(n)
	if err != nil {
		e.m.log.Warn("ignoring member with unreadable metadata", "node", n.Name, "err", err)
		return
	}
	e.m.mu.Lock()
	if e.m.departures == nil {
		e.m.departures = map[string]uint64{}
	}
	e.m.departures[n.Name]++
	gen := e.m.departures[n.Name]
	if st != Dead {
		e.m.transitionLocked(meta, st)
		return
	}
	if e.m.takeIntentLocked(n.Name) {
		e.m.transitionLocked(meta, Left)
		return
	}
	e.m.mu.Unlock()
	// No intent yet: give one in flight a chance before calling it a death.
	time.AfterFunc(leaveIntentGrace, func() {
		e.m.mu.Lock()
		if e.m.departures[n.Name] != gen {
			e.m.mu.Unlock() // the node rejoined meanwhile
			return
		}
		st := Dead
		if e.m.takeIntentLocked(n.Name) {
			st = Left
		}
		e.m.transitionLocked(meta, st)
	})
}

// takeIntentLocked consumes a valid leave intent of node id.
func (m *Membership) takeIntentLocked(id string) bool {
	at, ok := m.leaving[id]
	delete(m.leaving, id)
	return ok && time.Since(at) < leaveIntentTTL
}

func (e *eventDelegate) NotifyJoin(n *memberlist.Node)   { e.handle(n, Alive) }
func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) { e.handle(n, Alive) }
func (e *eventDelegate) NotifyLeave(n *memberlist.Node)  { e.handle(n, Dead) }
