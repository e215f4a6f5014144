// Command clusterkit runs one node of a ClusterKit cluster. With no
// environment set it starts a usable single-node cluster (node-1, management
// API on :8080, KV API on :9080, data in ./data/node1). See README.md.
//
// `clusterkit bench` is the load tool (package loadgen); `clusterkit kv`,
// `members`, `status` and the other operator commands are package cli
// (`clusterkit help` lists them all).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/clusterkit/clusterkit/cli"
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
		default:
			os.Exit(runCLI(os.Args[1:]))
		}
	}
	os.Exit(run())
}

// runCLI runs the operator commands (package cli) and help. SIGINT or
// SIGTERM cancels the command's context: kv watch then exits 0, any
// other command stops waiting.
func runCLI(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The commands above keep their own dispatch; they are listed here
	// so that help shows them and `help NAME` runs `NAME -h`.
	other := []cli.Command{
		{Name: "bench", Args: "[flags]", Summary: "the load tool (bench -h)",
			Run: func(_ context.Context, a []string, out, errw io.Writer) int { return loadgen.Main(a, out, errw) }},
		{Name: "healthcheck", Args: "[-addr host:port] [-path /ready]", Summary: "exit 0 if the node at addr (default: this node's HTTP_ADDR) is healthy (or, with -path /ready, serves its partitions)",
			Run: func(_ context.Context, a []string, _, _ io.Writer) int { return healthcheck(a) }},
		{Name: "keygen", Summary: "print a new CLUSTER_KEY (base64 of 32 random bytes)",
			Run: func(_ context.Context, a []string, _, _ io.Writer) int { return keygen(a) }},
		{Name: "tls", Args: "ca|cert", Summary: "make a CA and certificates for the client listeners (tls -h)",
			Run: func(_ context.Context, a []string, out, errw io.Writer) int { return tlsCmd(a, out, errw) }},
	}
	return cli.Run(ctx, args, os.Stdout, os.Stderr, other...)
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
	logger := cfg.NewLogger(os.Stderr) // LOG_FORMAT and LOG_LEVEL

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
// a Raft leader and the cluster is initialised), or with -path /ready
// whether it serves its partitions. It exists for container
// health checks, since the image has no shell and no curl. With the node's
// TLS settings in the environment it speaks TLS and presents the node's
// own certificate.
func healthcheck(args []string) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	addr := fs.String("addr", "", "management address (default: 127.0.0.1 and the port of HTTP_ADDR)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for an answer")
	path := fs.String("path", "/health/detailed", "what to ask: /health/detailed (the node knows a Raft leader) or /ready (it serves its partitions)")
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
	if *path != "/health/detailed" && *path != "/ready" {
		fmt.Fprintf(os.Stderr, "healthcheck: -path %q: want /health/detailed or /ready\n", *path)
		return 2
	}
	resp, err := hc.Get(scheme + "://" + *addr + *path)
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
