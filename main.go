// Command clusterkit runs one node of a ClusterKit cluster. With no
// environment set it starts a usable single-node cluster (node-1, management
// API on :8080, KV API on :9080, data in ./data/node1). See README.md.
//
// `clusterkit bench` is the load tool (package loadgen).
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

	"github.com/clusterkit/clusterkit/loadgen"
	"github.com/clusterkit/clusterkit/node"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "bench":
			os.Exit(loadgen.Main(os.Args[2:], os.Stdout, os.Stderr))
		case "-h", "-help", "--help", "help":
			fmt.Println("usage: clusterkit            run a node (configured by environment variables; see README.md)")
			fmt.Println("       clusterkit bench -h   the load tool")
			os.Exit(0)
		default:
			fmt.Fprintf(os.Stderr, "clusterkit: unknown command %q (a node is configured by environment variables; see README.md)\n", os.Args[1])
			os.Exit(2)
		}
	}
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
