package loadgen

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/clusterkit/clusterkit/client"
)

// ClientTarget drives a ClusterKit cluster through the Go client package
// (github.com/clusterkit/clusterkit/client), as an application using it
// would: its own HTTP/1.1 transport, its routing, table refresh and
// retries. It is the -client mode of the bench command.
type ClientTarget struct {
	c     *client.Client
	stale bool
	ttl   client.SetOptions
}

var (
	_ CASTarget   = (*ClientTarget)(nil)
	_ BatchTarget = (*ClientTarget)(nil)
)

// The routings of Config.ClientRouting.
const (
	ClientRoutePrimary    = "primary"
	ClientRouteRoundRobin = "round-robin"
)

// OpenClientTarget connects a client.Client to the cluster whose node's
// management address is c.Client.
func OpenClientTarget(ctx context.Context, c Config) (*ClientTarget, error) {
	cfg := client.Config{Addrs: SplitAddrs(c.Client), Token: c.Token, TLS: c.TLS, RequestTimeout: c.Timeout,
		MaxConnsPerNode: max(c.Concurrency, client.DefaultMaxConnsPerNode)}
	switch c.ClientRouting {
	case "", ClientRoutePrimary:
	case ClientRouteRoundRobin:
		cfg.Routing = client.RoundRobin
	default:
		return nil, fmt.Errorf("-client-routing %q: want %s or %s", c.ClientRouting, ClientRoutePrimary, ClientRouteRoundRobin)
	}
	cl, err := client.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &ClientTarget{c: cl, stale: c.Stale, ttl: client.SetOptions{TTL: c.TTL}}, nil
}

// kindOf names a client error for the summary: the server's code, or
// "transport" for one the client made.
func kindOf(err error) error {
	var e *client.Error
	if errors.As(err, &e) {
		kind := e.Code
		if e.Status != 0 {
			kind = "http_" + strconv.Itoa(e.Status) + "_" + e.Code
		}
		return &KindError{Kind: kind, Err: err}
	}
	return err
}

func (t *ClientTarget) Set(ctx context.Context, worker int, key string, value []byte) error {
	o := t.ttl
	_, err := t.c.Set(ctx, key, string(value), &o)
	return kindOf(err)
}

func (t *ClientTarget) Get(ctx context.Context, worker int, key string) (bool, error) {
	o := client.GetOptions{}
	if t.stale {
		o.Consistency = client.Stale
	}
	_, err := t.c.Get(ctx, key, &o)
	if client.IsNotFound(err) {
		return false, nil
	}
	return err == nil, kindOf(err)
}

func (t *ClientTarget) GetRevision(ctx context.Context, worker int, key string) (uint64, bool, error) {
	kv, err := t.c.Get(ctx, key, nil)
	if client.IsNotFound(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, kindOf(err)
	}
	return kv.Revision, true, nil
}

func (t *ClientTarget) SetIf(ctx context.Context, worker int, key string, value []byte, rev uint64) (bool, error) {
	o := t.ttl
	o.IfRevision = client.Rev(rev)
	_, err := t.c.Set(ctx, key, string(value), &o)
	if client.IsConditionFailed(err) {
		return true, nil
	}
	return false, kindOf(err)
}

func (t *ClientTarget) SetBatch(ctx context.Context, worker int, keys []string, value []byte) ([]error, error) {
	ops := make([]client.Op, len(keys))
	for i, k := range keys {
		ops[i] = client.Op{Op: "set", Key: k, Value: string(value), TTL: t.ttl.TTL}
	}
	res, err := t.c.Batch(ctx, ops, nil)
	if err != nil {
		return nil, kindOf(err)
	}
	var failed []error
	for i, r := range res {
		if r.Err != nil {
			if failed == nil {
				failed = make([]error, len(keys))
			}
			failed[i] = kindOf(r.Err)
		}
	}
	return failed, nil
}

func (t *ClientTarget) Close() error { return t.c.Close() }
