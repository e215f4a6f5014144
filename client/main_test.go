package client

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/internal/testcluster"
	"github.com/clusterkit/clusterkit/node"
)

// binary is the clusterkit executable the process tests run, built once.
var binary string

// ExampleNodeAddr is the management address of the one-node cluster the
// examples use; TestMain starts it in-process. (Exported so that the
// external example package can read it; it exists in test builds only.)
var ExampleNodeAddr string

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "clusterkit-client-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if binary, err = testcluster.Build(dir); err != nil {
		return 0, err
	}
	ck, err := startExampleNode(dir)
	if err != nil {
		return 0, err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ck.Shutdown(ctx)
	}()
	ExampleNodeAddr = ck.MgmtAddr()
	return m.Run(), nil
}

// startExampleNode starts a one-node cluster in this process, on free
// loopback ports, and waits until it serves writes.
func startExampleNode(dir string) (*node.ClusterKit, error) {
	cfg := node.DefaultConfig("node-1")
	cfg.HTTPAddr, cfg.KVAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Bootstrap = true
	cfg.DataDir = dir + "/example-node"
	cfg.StatusInterval = 0
	ck, err := node.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	if err := ck.Start(context.Background()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		err := func() error {
			c, err := New(ctx, Config{Addrs: []string{ck.MgmtAddr()}, RequestTimeout: time.Second})
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Set(ctx, "example:ready", "1", nil)
			if err == nil {
				_, err = c.Delete(ctx, "example:ready", nil)
			}
			return err
		}()
		if err == nil {
			return ck, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("the example node does not serve writes: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
