package engine

import (
	"context"
	"io"

	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// Op is a write (a set or a delete).
type Op = peer.Op

func storageOp(o Op) storage.Op {
	return storage.Op{Delete: o.Delete, Key: []byte(o.Key), Value: []byte(o.Value)}
}

// Transport carries the engine's calls to other nodes, addressed by node
// ID; a call addressed to this node is served locally (package peer does
// both).
type Transport interface {
	Forward(ctx context.Context, node string, req peer.ForwardReq) error
	Read(ctx context.Context, node string, req peer.ReadReq) (string, error)
	Replicate(ctx context.Context, node string, req peer.ReplicateReq) error
	Lease(ctx context.Context, node string, req peer.LeaseReq) (peer.LeaseResp, error)
	Install(ctx context.Context, node string, req peer.InstallReq, send func(io.Writer) error) error
}

var (
	_ Transport        = (*peer.Client)(nil)
	_ peer.DataHandler = (*Engine)(nil)
)
