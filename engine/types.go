package engine

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/clusterkit/clusterkit/storage"
)

// Limits on the data every layer accepts.
const (
	// MaxKeyBytes is the longest key accepted, in bytes.
	MaxKeyBytes = 1024
	// MaxValueBytes is the longest value accepted, in bytes (after JSON
	// decoding).
	MaxValueBytes = 1 << 20
	// MaxBodyBytes caps a request body. A value of MaxValueBytes written
	// entirely as \uXXXX escapes takes six times its size.
	MaxBodyBytes = 7 << 20

	// MinTTL and MaxTTL bound a key's TTL. Below a second, the clock
	// skew bound (see README) would be most of the TTL.
	MinTTL = time.Second
	MaxTTL = 10 * 365 * 24 * time.Hour

	// MaxBatchOps caps the ops of one batch request, and MaxBatchBytes
	// the sum of their key and value lengths. A batch of one partition
	// is committed in one round, which takes up to maxBatchOps.
	MaxBatchOps   = 500
	MaxBatchBytes = 4 << 20

	// maxCopies bounds min_copies: REPLICATION_FACTOR is at most 7.
	maxCopies = 7
)

// Route is one partition's row of the partition table as the data plane
// needs it.
type Route struct {
	Partition int
	Primary   string
	Replicas  []string
	InSync    []string
	Epoch     uint64
}

// Owners returns the primary followed by the replicas.
func (r Route) Owners() []string {
	if r.Primary == "" {
		return slices.Clone(r.Replicas)
	}
	return append([]string{r.Primary}, r.Replicas...)
}

// Router is this node's view of the cluster's partition table.
type Router interface {
	// Self is this node's ID.
	Self() string
	// Partitions is the partition count, 0 until the cluster is initialised.
	Partitions() int
	// PartitionOf maps a key to its partition.
	PartitionOf(key string) int
	// Route returns the current row for partition p.
	Route(p int) (Route, bool)
	// Alive reports whether node is believed to be up.
	Alive(node string) bool
	// Version is the table's version; it grows with every change.
	Version() uint64
	// Changed delivers a value after every table change; see
	// consensus.FSM.Watch for the semantics.
	Changed() (<-chan struct{}, func())
	// MinCopies is the cluster's copy floor: how many copies, the
	// primary's included, a write must be on before it is acknowledged.
	MinCopies() int
	// ReplicationFactor is the cluster's replication factor.
	ReplicationFactor() int
	// ClusterID is the cluster's identity, fixed at bootstrap.
	ClusterID() string
	// StoreOf is the data-directory identity the cluster has recorded for
	// node ("" if none yet).
	StoreOf(node string) string
}

// Control is the cluster's configuration manager: it changes a partition's
// in-sync set on behalf of the partition's primary at epoch, and returns
// only once this node's copy of the table shows the change.
type Control interface {
	SetInSync(ctx context.Context, partition int, epoch uint64, node string, inSync bool) error
}

// Storage is the node's durable copy of its partitions.
type Storage interface {
	Meta(p int) (storage.Meta, error)
	Get(p int, key []byte) (storage.Record, bool, error)
	ApplyBatch(p int, epoch, first uint64, ops []storage.Op) (storage.Meta, error)
	ApplyReplicated(p int, epoch, first uint64, ops []storage.Op, keys uint64) error
	SetEpoch(p int, epoch uint64) error
	Advance(p int, seq uint64) error
	Expired(p int, now int64, limit int) ([][]byte, error)
	Snapshot(p int, begin func(storage.Meta) error, fn func(k, v []byte) error) error
	SnapshotLog(p int, begin func(storage.Meta) error, fn func(k, v []byte) error, logBegin func(floor uint64) error, logFn func(seq uint64, raw []byte) error) error
	StageInstall(p int, epoch, seq uint64, next func() (storage.KV, bool, error), log func() (uint64, func() (storage.LogRecord, bool, error), error)) (*storage.Staged, error)
	ReadLog(p int, after, upTo uint64, limit, maxBytes int, keep func(key []byte) bool) ([]storage.LogEntry, uint64, error)
	TrimLog(p int, keep uint64, olderThan int64) (uint64, error)
	Scan(p int, start, end []byte, exclusive bool, limit, maxBytes int, values bool, now int64) ([]storage.Item, bool, error)
	Keys(p int, limit int) ([]string, error)
	Drop(p int) error
	TableVersion() (uint64, error)
	SetTableVersion(v uint64) error
	// ID is the store's identity (storage.DB.ID).
	ID() string
}

var _ Storage = (*storage.DB)(nil)

// Key names a (partition, node) pair, for bookkeeping.
func (r Route) Key(node string) string { return fmt.Sprintf("%d/%s", r.Partition, node) }

// IsInSync reports whether node is an in-sync replica.
func (r Route) IsInSync(node string) bool { return slices.Contains(r.InSync, node) }

// HasReplica reports whether node is a replica (in sync or not).
func (r Route) HasReplica(node string) bool { return slices.Contains(r.Replicas, node) }
