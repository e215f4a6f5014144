// Command compare drives etcd or ClusterKit with the same load-generation
// code (loadgen.RunTarget) so that their numbers can be set side by side.
// run.sh starts a three-member cluster of each on loopback and calls it.
//
//	compare -system etcd -endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 -c 32 -d 10s -reads 0.9 -preload -json
//	compare -system clusterkit -endpoints 127.0.0.1:19081,127.0.0.1:19082,127.0.0.1:19083 -c 32 -d 10s
//	compare -serve-ceiling 127.0.0.1:17081 -value-size 100   # one ceiling server (see ceiling.go)
//	compare -system ceiling -endpoints 127.0.0.1:17081,127.0.0.1:17082,127.0.0.1:17083 -c 32 -d 10s
//
// For etcd every set is a Put and every get a linearizable Get (the client's
// default, not WithSerializable); a get finds the key when the response has a
// KV. For ClusterKit it is loadgen's HTTP target, the same one that
// `clusterkit bench` uses.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/clusterkit/clusterkit/loadgen"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/status"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	system := fs.String("system", "", "etcd, clusterkit, or ceiling (servers started with -serve-ceiling)")
	serve := fs.String("serve-ceiling", "", "run a ceiling server on this address until SIGTERM, instead of a load")
	endpoints := fs.String("endpoints", "", "comma-separated client addresses (etcd client URLs' host:port, or ClusterKit KV API addresses)")
	c := loadgen.Config{}
	c.RegisterFlags(fs)
	clients := fs.Int("etcd-clients", 1, "etcd only: clientv3 clients (gRPC connections per endpoint), shared round robin by the workers")
	asJSON := fs.Bool("json", false, "print the summary as JSON (loadgen.Result)")
	quiet := fs.Bool("quiet", false, "no progress line")
	check := fs.Bool("check", false, "write and read back one probe key, then exit 0 if both worked")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *serve != "" {
		if err := serveCeiling(*serve, c.ValueSize); err != nil {
			fmt.Fprintln(stderr, "compare:", err)
			return 1
		}
		return 0
	}
	c.Addrs = loadgen.SplitAddrs(*endpoints)
	if len(c.Addrs) == 0 {
		fmt.Fprintln(stderr, "compare: -endpoints is empty")
		return 2
	}

	var t loadgen.Target
	switch *system {
	case "etcd":
		et, err := newEtcdTarget(c.Addrs, *clients, c.Timeout)
		if err != nil {
			fmt.Fprintln(stderr, "compare:", err)
			return 1
		}
		t = et
	case "clusterkit", "ceiling":
		ht, err := loadgen.OpenHTTPTarget(context.Background(), c)
		if err != nil {
			fmt.Fprintln(stderr, "compare:", err)
			return 1
		}
		t = ht
	default:
		fmt.Fprintln(stderr, "compare: -system must be etcd, clusterkit or ceiling")
		return 2
	}
	defer t.Close()

	ctx := context.Background()
	if *check {
		if err := probe(ctx, t); err != nil {
			fmt.Fprintf(stderr, "compare: %s at %s: %v\n", *system, *endpoints, err)
			return 1
		}
		return 0
	}

	var progress io.Writer = stderr
	if *quiet {
		progress = nil
	}
	res, err := loadgen.RunTarget(ctx, c, t, progress)
	if err != nil {
		fmt.Fprintln(stderr, "compare:", err)
		return 1
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "system       %s\n", *system)
	}
	return loadgen.WriteResult(stdout, res, c, *asJSON)
}

// probe writes a key outside the bench key space and reads it back.
func probe(ctx context.Context, t loadgen.Target) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := t.Set(ctx, 0, "compare:probe", []byte("ok")); err != nil {
		return fmt.Errorf("set: %w", err)
	}
	found, err := t.Get(ctx, 0, "compare:probe")
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	if !found {
		return errors.New("get: the probe key just written is missing")
	}
	return nil
}

// etcdTarget is etcd through the official Go client. Each client balances
// its requests over all endpoints; with more than one client, worker w uses
// client w mod n.
type etcdTarget struct {
	clients []*clientv3.Client
	timeout time.Duration
}

var _ loadgen.Target = (*etcdTarget)(nil)

func newEtcdTarget(endpoints []string, n int, timeout time.Duration) (*etcdTarget, error) {
	if n < 1 {
		return nil, errors.New("-etcd-clients must be >= 1")
	}
	t := &etcdTarget{timeout: timeout}
	for range n {
		cl, err := clientv3.New(clientv3.Config{
			Endpoints:   endpoints,
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("etcd client: %w", err)
		}
		t.clients = append(t.clients, cl)
	}
	return t, nil
}

func (t *etcdTarget) client(worker int) *clientv3.Client {
	return t.clients[uint(worker)%uint(len(t.clients))]
}

func (t *etcdTarget) Set(ctx context.Context, worker int, key string, value []byte) error {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	_, err := t.client(worker).Put(ctx, key, string(value))
	return kindError(err)
}

func (t *etcdTarget) Get(ctx context.Context, worker int, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	resp, err := t.client(worker).Get(ctx, key) // linearizable
	if err != nil {
		return false, kindError(err)
	}
	return len(resp.Kvs) > 0, nil
}

func (t *etcdTarget) Close() error {
	var errs []error
	for _, cl := range t.clients {
		errs = append(errs, cl.Close())
	}
	return errors.Join(errs...)
}

// kindError labels an etcd client error for the summary: etcd_<code> for
// an error the server named (rpctypes), timeout for a passed deadline,
// grpc_<code> for other gRPC failures.
func kindError(err error) error {
	if err == nil {
		return nil
	}
	var ee rpctypes.EtcdError
	switch {
	case errors.As(err, &ee):
		return &loadgen.KindError{Kind: "etcd_" + ee.Code().String(), Err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &loadgen.KindError{Kind: "timeout", Err: err}
	}
	if s, ok := status.FromError(err); ok {
		return &loadgen.KindError{Kind: "grpc_" + s.Code().String(), Err: err}
	}
	return err
}
