// Command clusterkit runs one node of a ClusterKit cluster. With no
// environment set it starts a usable single-node cluster (node-1, management
// API on :8080, KV API on :9080, data in ./data/node1). See README.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/clusterkit/clusterkit/node"
)

func main() {
	os.Exit(run())
}

func run() int {
	cfg, err := node.FromEnv(os.LookupEnv)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "clusterkit: invalid configuration: %v\n", err)
		return 2
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(cfg.LogLevel)))
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ck, err := node.New(cfg, logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "clusterkit: cannot start: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := ck.Start(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "clusterkit: cannot start: %v\n", err)
		return 1
	}
	<-ctx.Done()
	stop() // a second signal kills the process the default way
	logger.Info("signal received; leaving the cluster")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := ck.Shutdown(sctx); err != nil {
		logger.Error("shutdown finished with errors", "err", err)
		return 1
	}
	return 0
}
