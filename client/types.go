package client

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Routing chooses the node each request goes to.
type Routing int

const (
	// RoutePrimary sends each key's request to its partition's primary
	// (a stale read to a nearby in-sync copy). The default.
	RoutePrimary Routing = iota
	// RoundRobin sends each request to the next node in turn, as a
	// client that knows nothing of the partition table would.
	RoundRobin
)

// Defaults of Config.
const (
	DefaultMaxConnsPerNode = 64
	DefaultRequestTimeout  = 10 * time.Second
)

// Config configures a Client.
type Config struct {
	// Addrs are management addresses (host:port) of any node(s), as
	// JOIN_ADDR takes them; at least one.
	Addrs []string
	// Token is the bearer token sent on every call (KV and admin); ""
	// sends none.
	Token string
	// TLS, when set, makes every call HTTPS (management and KV ports).
	TLS     *tls.Config
	Routing Routing
	// MaxConnsPerNode is the idle connection pool per node (default 64).
	MaxConnsPerNode int
	// RequestTimeout bounds a call (all its attempts) when ctx has no
	// earlier deadline (default 10s).
	RequestTimeout time.Duration
	Logger         *slog.Logger
}

// Consistency is a read's consistency.
type Consistency string

const (
	// Linearizable reads from the partition's primary: the default.
	Linearizable Consistency = ""
	// Stale reads from a nearby in-sync copy, which may lag.
	Stale Consistency = "stale"
)

// KV is a key's value.
type KV struct {
	Key       string
	Value     string
	Revision  uint64
	ExpiresAt time.Time     // zero: no TTL
	TTL       time.Duration // remaining, when ExpiresAt is set
}

// GetOptions are a get's options (nil: defaults).
type GetOptions struct{ Consistency Consistency }

// SetOptions are a set's options (nil: none).
type SetOptions struct {
	TTL        time.Duration
	KeepTTL    bool
	IfRevision *uint64 // nil: no condition; pointer to 0: the key must not exist
	IfAbsent   bool
	IfExists   bool
	Prev       bool
	MinCopies  int
}

// DeleteOptions are a delete's options (nil: none).
type DeleteOptions struct {
	IfRevision *uint64
	IfExists   bool
	Prev       bool
	MinCopies  int
}

// ExpireOptions are an expire's options (nil: none).
type ExpireOptions struct {
	IfRevision *uint64
	MinCopies  int
}

// Rev returns a pointer to n, for IfRevision.
func Rev(n uint64) *uint64 { return &n }

// WriteResult is the answer to a set, delete or expire.
type WriteResult struct {
	Key       string
	Revision  uint64
	Deleted   bool // delete: whether the key existed
	ExpiresAt time.Time
	Prev      *KV // with Prev: the previous value, nil when there was none
}

// Op is one op of a batch.
type Op struct {
	Op          string // "set", "get" or "delete"
	Key, Value  string
	TTL         time.Duration
	KeepTTL     bool
	IfRevision  *uint64
	IfAbsent    bool
	IfExists    bool
	Prev        bool
	Consistency Consistency // get only
}

// OpResult is one op's answer in a batch.
type OpResult struct {
	Op, Key   string
	Status    int    // the status the single call would answer: 200, 404, 409, 503, ...
	Err       *Error // nil when the op succeeded
	Value     string
	Revision  uint64
	Deleted   bool
	ExpiresAt time.Time
	Prev      *KV
}

// BatchOptions are a batch's options (nil: none).
type BatchOptions struct {
	Atomic    bool
	MinCopies int
}

// ScanOptions choose a range and a page of it.
type ScanOptions struct {
	Prefix      string // or Start/End (End exclusive, "" = no end)
	Start, End  string
	Limit       int // default 100 (the server's)
	Cursor      string
	Values      bool
	Consistency Consistency
}

// ScanPage is one page of a scan.
type ScanPage struct {
	Items      []KV
	NextCursor string // "" when the range is exhausted
	Token      string // watch from here for list-then-watch
}

// WatchOptions choose what a watch follows and from where.
type WatchOptions struct {
	Key, Prefix string        // at most one; neither watches every key
	Since       string        // a token, "now", or "" (= now)
	Progress    time.Duration // progress interval asked of the server; 0 = server default
}

// Event is one event of a watch.
type Event struct {
	Type     string // "set", "delete", "expire", "progress", "resync_required"
	Key      string
	Value    string
	Revision uint64
	Token    string          // resume from here
	Raw      json.RawMessage // the data: line as the server sent it
}

// ErrResyncRequired is what Watcher.Next returns after the
// resync_required event: the server no longer holds the changes after the
// watch's position, so the range must be read again (Scan gives a fresh
// token).
var ErrResyncRequired = errors.New("watch: resync required: read the range again and watch from the scan's token")

// Member is a cluster member as GET /cluster shows it.
type Member struct {
	ID, Name, MgmtAddr, KVAddr, RaftAddr, GossipAddr, Status string
	Since                                                    time.Time
	Services                                                 map[string]string
}

// Partition is one row of the partition table.
type Partition struct {
	ID                           string
	Primary                      string
	Replicas, InSync, CatchingUp []string
	Epoch                        uint64
	State                        string
}

// ClusterInfo is GET /cluster.
type ClusterInfo struct {
	ID, Name                                     string
	Version                                      uint64
	PartitionCount, ReplicationFactor, MinInSync int
	Members                                      []Member
	Partitions                                   []Partition // in partition order
	HashTags                                     bool
}

// Leader is GET /consensus/leader.
type Leader struct {
	ID, Name, Addr string
	Term           uint64
	ElectedAt      time.Time
}

// Token is an API token (Secret only in CreateToken's answer).
type Token struct {
	ID        string
	Scopes    []string
	Secret    string
	CreatedAt time.Time
	Name      string
}

// Error is a failure reported by a node, or a transport failure: Code
// "unavailable" for a connection that failed before the request was sent,
// "outcome_unknown" for a write whose answer was lost.
type Error struct {
	Status          int
	Code            string
	Message         string
	CurrentRevision uint64 // condition_failed
	Exists          bool   // condition_failed
	Node            string // the address that answered (or failed)
	Body            map[string]any
	// cause is the transport error behind a client-side Error.
	cause error
}

func (e *Error) Error() string {
	s := e.Code + ": " + e.Message
	if e.Node != "" {
		s += " (" + e.Node + ")"
	}
	return s
}

// Unwrap returns the transport error behind the Error, if any.
func (e *Error) Unwrap() error { return e.cause }

func codeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// IsNotFound reports whether err is a missing key (or other 404).
func IsNotFound(err error) bool {
	c := codeOf(err)
	return c == "key_not_found" || c == "not_found"
}

// IsConditionFailed reports whether err is a failed condition.
func IsConditionFailed(err error) bool { return codeOf(err) == "condition_failed" }

// IsUnavailable reports whether err means the request was not applied and
// may be sent again later.
func IsUnavailable(err error) bool {
	switch codeOf(err) {
	case "unavailable", "not_ready", "not_leader", "epoch_mismatch", "no_leader", "not_enough_replicas", "too_many_watchers":
		return true
	}
	return false
}

// IsOutcomeUnknown reports whether err is a write that may or may not have
// been applied.
func IsOutcomeUnknown(err error) bool { return codeOf(err) == "outcome_unknown" }

// IsUnauthorized reports whether err is missing or insufficient
// credentials.
func IsUnauthorized(err error) bool {
	c := codeOf(err)
	return c == "unauthorized" || c == "forbidden"
}

func errorf(code, node string, cause error, format string, args ...any) *Error {
	return &Error{Code: code, Node: node, Message: fmt.Sprintf(format, args...), cause: cause}
}
