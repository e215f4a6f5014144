// Command clusterkit runs one node of a ClusterKit cluster. With no
// environment set it starts a usable single-node cluster (node-1, management
// API on :8080, KV API on :9080, data in ./data/node1). See README.md.
//
// `clusterkit bench` is the load tool (package loadgen).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/clusterkit/clusterkit/clusterkey"
	"github.com/clusterkit/clusterkit/loadgen"
	"github.com/clusterkit/clusterkit/node"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "bench":
			os.Exit(loadgen.Main(os.Args[2:], os.Stdout, os.Stderr))
		case "healthcheck":
			os.Exit(healthcheck(os.Args[2:]))
		case "keygen":
			os.Exit(keygen(os.Args[2:]))
		case "tls":
			os.Exit(tlsCmd(os.Args[2:], os.Stdout, os.Stderr))
		case "-h", "-help", "--help", "help":
			fmt.Println("usage: clusterkit            run a node (configured by environment variables; see README.md)")
			fmt.Println("       clusterkit bench -h   the load tool")
			fmt.Println("       clusterkit healthcheck [-addr host:port]   exit 0 if the node at addr (default: this node's HTTP_ADDR) is healthy")
			fmt.Println("       clusterkit keygen      print a new CLUSTER_KEY (base64 of 32 random bytes)")
			fmt.Println("       clusterkit tls ca|cert make a CA and certificates for the client listeners (tls -h)")
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
	select {
	case <-ctx.Done():
		logger.Info("signal received; leaving the cluster")
	case <-ck.LeaveRequested():
		logger.Info("leave requested through the API; leaving the cluster")
	}
	stop() // a second signal kills the process the default way
	dctx, cancelDrain := context.WithTimeout(context.Background(), node.DefaultDrainTimeout)
	if err := ck.Drain(dctx); err != nil {
		logger.Warn("leaving before every partition was handed over", "err", err)
	}
	cancelDrain()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := ck.Shutdown(sctx); err != nil {
		logger.Error("shutdown finished with errors", "err", err)
		return 1
	}
	return 0
}

// healthcheck asks a node's management API whether it is healthy (it knows
// a Raft leader and the cluster is initialised). It exists for container
// health checks, since the image has no shell and no curl. With the node's
// TLS settings in the environment it speaks TLS and presents the node's
// own certificate.
func healthcheck(args []string) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	addr := fs.String("addr", "", "management address (default: 127.0.0.1 and the port of HTTP_ADDR)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for an answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := node.FromEnv(os.LookupEnv)
	if err == nil && *addr == "" {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "healthcheck: %v\n", err)
		return 2
	}
	if *addr == "" {
		_, port, _ := net.SplitHostPort(cfg.HTTPAddr)
		*addr = net.JoinHostPort("127.0.0.1", port)
	}
	hc := &http.Client{Timeout: *timeout}
	scheme := "http"
	if cfg.TLS.Cert != "" {
		tc, err := cfg.TLS.ClientConfig()
		if err != nil {
			fmt.Fprintf(os.Stderr, "healthcheck: %v\n", err)
			return 2
		}
		hc.Transport = &http.Transport{TLSClientConfig: tc}
		scheme = "https"
	}
	resp, err := hc.Get(scheme + "://" + *addr + "/health/detailed")
	if err != nil {
		fmt.Fprintf(os.Stderr, "unhealthy: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "unhealthy: %d %s\n", resp.StatusCode, body)
		return 1
	}
	fmt.Printf("healthy: %s", body)
	return 0
}

// keygen prints a new cluster key, as consul keygen does.
func keygen(args []string) int {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: clusterkit keygen\n\nPrints a new CLUSTER_KEY: the base64 of 32 random bytes. Give every node of a cluster the same one.")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	k, err := clusterkey.Generate()
	if err != nil {
		fmt.Fprintf(os.Stderr, "keygen: %v\n", err)
		return 1
	}
	fmt.Println(k)
	return 0
}
