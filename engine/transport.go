package engine

import (
	"context"
	"io"

	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// Op is a client write (a set, delete or TTL change, maybe conditional).
type Op = peer.Op

// Result is the outcome of one Op.
type Result = peer.Result

func storageOp(e peer.Entry) storage.Op {
	return storage.Op{Delete: e.Delete, Expired: e.Expired, Key: []byte(e.Key), Value: []byte(e.Value), ExpiresAt: e.ExpiresAt, PrevExpiresAt: e.PrevExpiresAt}
}

// Transport carries the engine's calls to other nodes, addressed by node
// ID; a call addressed to this node is served locally (package peer does
// both).
type Transport interface {
	Forward(ctx context.Context, node string, req peer.ForwardReq) (peer.ForwardResp, error)
	Read(ctx context.Context, node string, req peer.ReadReq) (peer.ReadResp, error)
	Replicate(ctx context.Context, node string, req peer.ReplicateReq) error
	Lease(ctx context.Context, node string, req peer.LeaseReq) (peer.LeaseResp, error)
	Install(ctx context.Context, node string, req peer.InstallReq, send func(io.Writer) error) error
	Log(ctx context.Context, node string, req peer.LogReq) (peer.LogResp, error)
	Scan(ctx context.Context, node string, req peer.ScanReq) (peer.ScanResp, error)
	CopyInfo(ctx context.Context, node string, req peer.CopyInfoReq) (peer.CopyInfo, error)
}

var (
	_ Transport        = (*peer.Client)(nil)
	_ peer.DataHandler = (*Engine)(nil)
)
