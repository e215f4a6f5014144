// Package testcluster starts real ClusterKit nodes as separate OS processes
// for integration and fault tests: each node has its own process group,
// ports, data directory and log files, and can be killed, paused, resumed,
// stopped and restarted. Every process is killed when the test ends (and,
// through the parent-death signal, when the test process itself dies).
//
// By default the nodes share loopback, each on its own ports. With
// Options.Netns every node runs in its own network namespace on a private
// network (see Network), on its own IP address with the default ports, and
// the links between chosen nodes can be cut and healed.
package testcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/clusterkey"
	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/ring"
)

// Build compiles the clusterkit binary (the module root's main package)
// into dir and returns its path. It is built with the race detector, so a
// data race in any node of an integration or fault test fails the test
// (the node exits with code 66 and its report in the log).
func Build(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "clusterkit")
	cmd := exec.Command("go", "build", "-race", "-o", bin, ".")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}

// Test ports come from below the kernel's ephemeral range (32768-60999 on
// Linux): a port asked of the kernel with ":0" and closed again can be
// handed to the next ":0" listener or to an outgoing connection before the
// node binds it, which once gave node-2's KV listener node-1's gossip port.
// Nothing in this range is handed out by the kernel, so a port found free
// here stays free unless another test binds it, and nextPort makes sure no
// two callers in one test process ever get the same one. The start is
// spread by process id so that test binaries running side by side (go test
// runs packages in parallel) walk different stretches of the range.
const (
	portLow  = 12000
	portHigh = 32000
)

// nextPort is the one piece of package-level state here: it stands in for
// the kernel's port allocator, which is process-wide too.
var nextPort atomic.Int64

func init() {
	nextPort.Store(int64(os.Getpid()*211) % (portHigh - portLow))
}

// FreePorts returns n distinct ports that are free for both TCP and UDP on
// 127.0.0.1 right now and have not been returned before by this process.
func FreePorts(n int) ([]int, error) {
	var ports []int
	for attempt := 0; len(ports) < n; attempt++ {
		if attempt == portHigh-portLow {
			return nil, fmt.Errorf("no free port found in %d-%d", portLow, portHigh)
		}
		port := portLow + int(nextPort.Add(1)%(portHigh-portLow))
		if portFree(port) {
			ports = append(ports, port)
		}
	}
	return ports, nil
}

func portFree(port int) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// Node is one ClusterKit process.
type Node struct {
	ID      string
	Name    string
	HTTP    string // management address, host:port
	KV      string // KV address, host:port
	Raft    string
	Gossip  string
	DataDir string
	// Env holds extra environment variables for the process.
	Env []string
	// IP and Netns are set when the node runs in its own network
	// namespace (Options.Netns).
	IP    string
	Netns string

	c       *Cluster
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	stdout  *SyncBuffer
	stderr  *SyncBuffer
	starts  int
	logFile *os.File
	paused  bool
}

// Cluster is a set of nodes of one test.
type Cluster struct {
	t     testing.TB
	bin   string
	dir   string
	opts  Options
	Nodes []*Node
	// Net is the private network of the nodes' namespaces (nil on
	// loopback).
	Net *Network

	// Key is the cluster's CLUSTER_KEY (zero with Options.NoKey).
	Key clusterkey.Key

	memberMu sync.Mutex
	peers    *peer.Client
}

// ClusterName is the CLUSTER_NAME the nodes run with.
func (c *Cluster) ClusterName() string {
	name := "my-app-cluster"
	for _, kv := range c.opts.Env {
		if v, ok := strings.CutPrefix(kv, "CLUSTER_NAME="); ok {
			name = v
		}
	}
	return name
}

// UseKey makes k the cluster's key from now on: for the harness's own
// calls, and for the nodes it starts (after a key rotation).
func (c *Cluster) UseKey(k clusterkey.Key) {
	c.memberMu.Lock()
	defer c.memberMu.Unlock()
	c.Key = k
	if c.peers != nil {
		c.peers.Close()
		c.peers = nil
	}
}

// Member is the harness's own client of the nodes' internal ports: it holds
// what a member holds, so it can ask what only members may (digests).
func (c *Cluster) Member() *peer.Client {
	c.memberMu.Lock()
	defer c.memberMu.Unlock()
	if c.peers == nil {
		cfg := peer.Config{Self: "testcluster", ClusterName: c.ClusterName()}
		if !c.opts.NoKey {
			cfg.Security = clusterkey.NewKeyring(c.Key)
		}
		c.peers = peer.NewClient(cfg, peer.ByAddress)
		cl := c.peers
		c.t.Cleanup(cl.Close)
	}
	return c.peers
}

// Options configures New.
type Options struct {
	// Env is added to every node's environment (e.g. FAILOVER_GRACE=1s).
	Env []string
	// Netns runs every node in its own network namespace (see Network),
	// so that links can be cut. It needs root and the ip and nft tools;
	// check NetnsSupport first, New fails the test without them.
	Netns bool
	// JoinAll gives node-1 (which bootstraps) a JOIN_ADDR too, as
	// deploy/docker-compose.yml does; by default it has none, as in the
	// README's quick start.
	JoinAll bool
	// NoKey runs the nodes without CLUSTER_KEY, as the quick start does
	// on loopback. By default every cluster gets a key of its own.
	NoKey bool
}

// New prepares n nodes (node-1 bootstraps, the others join through
// node-1's and node-2's management addresses) without starting them.
func New(t testing.TB, bin string, n int, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: bin, dir: t.TempDir(), opts: opts}
	if !opts.NoKey {
		k, err := clusterkey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		c.Key = k
	}
	if opts.Netns {
		net, err := NewNetwork()
		if err != nil {
			t.Fatalf("network namespaces: %v", err)
		}
		c.Net = net
		// Cleanups run last-in first-out: the processes die first.
		t.Cleanup(func() {
			if err := net.Close(); err != nil {
				t.Errorf("tear down network %s: %v", net, err)
			}
		})
	}
	t.Cleanup(c.KillAll)
	for i := 1; i <= n; i++ {
		c.Nodes = append(c.Nodes, c.newNode(i, opts.Env))
	}
	t.Cleanup(func() {
		c.checkRaces()
		if t.Failed() {
			c.DumpLogs(80)
		}
	})
	return c
}

// checkRaces fails the test if the race detector reported a data race in
// any node.
func (c *Cluster) checkRaces() {
	for _, n := range c.Nodes {
		logs := n.stderr.String()
		if i := strings.Index(logs, "WARNING: DATA RACE"); i >= 0 {
			end := min(len(logs), i+4000)
			c.t.Errorf("%s: the race detector found a data race:\n%s", n.ID, logs[i:end])
		}
	}
}

func (c *Cluster) newNode(i int, env []string) *Node {
	if c.Net != nil {
		id := fmt.Sprintf("node-%d", i)
		ns, ip, err := c.Net.AddHost(id, i)
		if err != nil {
			c.t.Fatalf("namespace for %s: %v", id, err)
		}
		return &Node{
			ID: id, Name: fmt.Sprintf("Server-%d", i),
			HTTP:    ip + ":8080",
			KV:      ip + ":9080",
			Raft:    ip + ":9001",
			Gossip:  ip + ":10001",
			DataDir: filepath.Join(c.dir, fmt.Sprintf("node%d", i)),
			Env:     append([]string(nil), env...),
			IP:      ip, Netns: ns,
			c: c, stdout: &SyncBuffer{}, stderr: &SyncBuffer{},
		}
	}
	ports, err := FreePorts(4)
	if err != nil {
		c.t.Fatalf("free ports: %v", err)
	}
	return &Node{
		ID: fmt.Sprintf("node-%d", i), Name: fmt.Sprintf("Server-%d", i),
		HTTP:    fmt.Sprintf("127.0.0.1:%d", ports[0]),
		KV:      fmt.Sprintf("127.0.0.1:%d", ports[1]),
		Raft:    fmt.Sprintf("127.0.0.1:%d", ports[2]),
		Gossip:  fmt.Sprintf("127.0.0.1:%d", ports[3]),
		DataDir: filepath.Join(c.dir, fmt.Sprintf("node%d", i)),
		Env:     append([]string(nil), env...),
		c:       c, stdout: &SyncBuffer{}, stderr: &SyncBuffer{},
	}
}

// AddNode prepares one more node that joins through the existing ones.
func (c *Cluster) AddNode(env ...string) *Node {
	n := c.newNode(len(c.Nodes)+1, env)
	c.Nodes = append(c.Nodes, n)
	return n
}

// Dir is the cluster's scratch directory (logs, data).
func (c *Cluster) Dir() string { return c.dir }

// Start starts every node.
func (c *Cluster) Start() {
	for _, n := range c.Nodes {
		n.Start()
	}
}

// KillAll SIGKILLs every running node.
func (c *Cluster) KillAll() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// DumpLogs writes the last lines of every node's logs to the test log.
func (c *Cluster) DumpLogs(lines int) {
	for _, n := range c.Nodes {
		c.t.Logf("----- %s stderr (last %d lines) -----\n%s", n.ID, lines, tail(n.stderr.String(), lines))
	}
}

func tail(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

func (n *Node) env() []string {
	var join []string
	for _, o := range n.c.Nodes {
		if o != n && len(join) < 2 {
			join = append(join, o.HTTP)
		}
	}
	env := append(os.Environ(),
		"NODE_ID="+n.ID, "NODE_NAME="+n.Name,
		"HTTP_ADDR="+n.HTTP, "KV_ADDR="+n.KV, "RAFT_ADDR="+n.Raft, "GOSSIP_ADDR="+n.Gossip,
		"DATA_DIR="+n.DataDir, "STATUS_INTERVAL=2s",
		// A race stops the node at once, in the middle of the test,
		// rather than after it has been killed with the report unseen.
		"GORACE=halt_on_error=1",
	)
	if n.IP != "" {
		env = append(env, "ADVERTISE_HOST="+n.IP)
	}
	if !n.c.opts.NoKey {
		env = append(env, "CLUSTER_KEY="+n.c.Key.String())
	}
	if n.ID == "node-1" {
		env = append(env, "BOOTSTRAP=true")
		if n.c.opts.JoinAll && len(join) > 0 {
			env = append(env, "JOIN_ADDR="+strings.Join(join, ","))
		}
	} else {
		env = append(env, "BOOTSTRAP=false", "JOIN_ADDR="+strings.Join(join, ","))
	}
	return append(env, n.Env...)
}

// Start starts the node's process (again, after Kill or Stop).
func (n *Node) Start() {
	n.c.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.c.t.Fatalf("%s is already running", n.ID)
	}
	n.starts++
	f, err := os.OpenFile(filepath.Join(n.c.dir, n.ID+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		n.c.t.Fatalf("log file: %v", err)
	}
	fmt.Fprintf(f, "===== start #%d at %s =====\n", n.starts, time.Now().Format(time.RFC3339Nano))
	n.logFile = f
	cmd := exec.Command(n.c.bin)
	if n.Netns != "" {
		// ip execs the binary in place: the PID and process group stay.
		cmd = exec.Command("ip", "netns", "exec", n.Netns, n.c.bin)
	}
	cmd.Env = n.env()
	cmd.Stdout = io.MultiWriter(n.stdout, f)
	cmd.Stderr = io.MultiWriter(n.stderr, f)
	// Own process group (signals go to the group), and SIGKILL if the
	// test process dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.c.t.Fatalf("start %s: %v", n.ID, err)
	}
	n.cmd = cmd
	n.paused = false
	exited := make(chan struct{})
	n.exited = exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
}

func (n *Node) signal(sig syscall.Signal) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, sig)
	return true
}

func (n *Node) reap(timeout time.Duration) bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return true
	}
	select {
	case <-exited:
	case <-time.After(timeout):
		return false
	}
	n.mu.Lock()
	n.cmd, n.exited, n.paused = nil, nil, false
	if n.logFile != nil {
		n.logFile.Close()
		n.logFile = nil
	}
	n.mu.Unlock()
	return true
}

// Kill sends SIGKILL to the node's process group and waits for it to exit.
func (n *Node) Kill() {
	n.signal(syscall.SIGCONT) // a paused process must be able to die
	if n.signal(syscall.SIGKILL) {
		n.reap(10 * time.Second)
	}
}

// Stop sends SIGTERM (graceful leave) and waits up to timeout for exit,
// then kills the node. It reports whether the node exited by itself.
func (n *Node) Stop(timeout time.Duration) bool {
	if !n.signal(syscall.SIGTERM) {
		return true
	}
	if n.reap(timeout) {
		return true
	}
	n.Kill()
	return false
}

// Pause stops the process with SIGSTOP; Resume continues it.
func (n *Node) Pause() {
	if n.signal(syscall.SIGSTOP) {
		n.mu.Lock()
		n.paused = true
		n.mu.Unlock()
	}
}

// Resume continues a paused process.
func (n *Node) Resume() {
	n.signal(syscall.SIGCONT)
	n.mu.Lock()
	n.paused = false
	n.mu.Unlock()
}

// Paused reports whether the node was paused and not resumed since.
func (n *Node) Paused() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.paused
}

// Exited reports whether a started node's process has exited by itself
// (it has not been reaped by Kill or Stop yet).
func (n *Node) Exited() bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return true
	default:
		return false
	}
}

// LogPath is the file holding everything the node printed, across
// restarts.
func (n *Node) LogPath() string { return filepath.Join(n.c.dir, n.ID+".log") }

// Running reports whether the process has been started and not reaped.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// Stdout returns everything the node printed on stdout so far.
func (n *Node) Stdout() string { return n.stdout.String() }

// Stderr returns everything the node logged so far.
func (n *Node) Stderr() string { return n.stderr.String() }

// Client is an HTTP client with a short timeout for tests.
var client = &http.Client{Timeout: 5 * time.Second}

// Response is a decoded HTTP answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into v.
func (r Response) JSON(v any) error { return json.Unmarshal(r.Body, v) }

// Map decodes the body as a JSON object.
func (r Response) Map() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(r.Body, &m)
	return m
}

// Do sends a request to addr (host:port) and reads the whole answer.
func Do(ctx context.Context, method, addr, path string, body []byte, header ...string) (Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, rd)
	if err != nil {
		return Response{}, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		if strings.EqualFold(header[i], "Host") {
			req.Host = header[i+1] // net/http ignores a Host header
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}, err
}

// Get is Do with GET and no body.
func Get(addr, path string, header ...string) (Response, error) {
	return Do(context.Background(), http.MethodGet, addr, path, nil, header...)
}

// Set writes key=value through the KV API at addr.
func Set(ctx context.Context, addr, key, value string) (Response, error) {
	b, _ := json.Marshal(map[string]string{"key": key, "value": value})
	return Do(ctx, http.MethodPost, addr, "/kv/set", b, "Content-Type", "application/json")
}

// Eventually polls cond every 100ms until it returns nil or timeout passes,
// and fails the test with the last error.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitHealthy waits until every running node reports healthy, knows n
// active nodes, and every partition has its full complement of in-sync
// replicas (min(rf, n) copies).
func (c *Cluster) WaitHealthy(timeout time.Duration, n, rf int) {
	c.t.Helper()
	Eventually(c.t, timeout, fmt.Sprintf("cluster of %d healthy and fully replicated", n), func() error {
		for _, node := range c.Nodes {
			if !node.Running() {
				continue
			}
			if err := node.checkHealthy(n, rf); err != nil {
				return fmt.Errorf("%s: %w", node.ID, err)
			}
		}
		return nil
	})
}

// CheckHealthy reports nil if this node's /cluster shows exactly `nodes`
// nodes, all active, and every partition with min(rf, nodes) in-sync copies.
func (n *Node) CheckHealthy(nodes, rf int) error { return n.checkHealthy(nodes, rf) }

func (n *Node) checkHealthy(nodes, rf int) error {
	r, err := Get(n.HTTP, "/cluster")
	if err != nil {
		return err
	}
	var out struct {
		Cluster struct {
			Nodes []struct {
				ID, Status string
			} `json:"nodes"`
			PartitionMap struct {
				Partitions map[string]struct {
					Primary string   `json:"primary_node"`
					InSync  []string `json:"in_sync_replicas"`
				} `json:"partitions"`
			} `json:"partition_map"`
		} `json:"cluster"`
	}
	if err := r.JSON(&out); err != nil {
		return fmt.Errorf("decode /cluster: %w", err)
	}
	active := 0
	for _, m := range out.Cluster.Nodes {
		if m.Status == "active" {
			active++
		}
	}
	if active != nodes || len(out.Cluster.Nodes) != nodes {
		return fmt.Errorf("%d active nodes of %d, want %d", active, len(out.Cluster.Nodes), nodes)
	}
	if len(out.Cluster.PartitionMap.Partitions) == 0 {
		return fmt.Errorf("no partitions yet")
	}
	want := min(rf, nodes)
	var ids []string
	for _, m := range out.Cluster.Nodes {
		ids = append(ids, m.ID)
	}
	for name, p := range out.Cluster.PartitionMap.Partitions {
		if p.Primary == "" || 1+len(p.InSync) != want {
			return fmt.Errorf("%s: primary %q with %d in-sync replicas, want %d copies", name, p.Primary, len(p.InSync), want)
		}
		// The leader moves primaries to the ring's choice last, once
		// the new copies are in sync: until then a write may meet a
		// change of primary, which tests that need definite answers
		// cannot take.
		id, err := ring.ParsePartitionName(name)
		if err != nil {
			return err
		}
		if desired := ring.Owners(ids, id, rf)[0]; p.Primary != desired {
			return fmt.Errorf("%s: primary %s, the ring's choice is %s (a move in progress)", name, p.Primary, desired)
		}
	}
	return nil
}

// Leader returns the node the given node believes leads Raft.
func (c *Cluster) Leader(via *Node) (*Node, error) {
	r, err := Get(via.HTTP, "/consensus/leader")
	if err != nil {
		return nil, err
	}
	id, _ := r.Map()["leader_id"].(string)
	for _, n := range c.Nodes {
		if n.ID == id {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no leader known to %s (status %d)", via.ID, r.Status)
}

// Port returns the port of a host:port address.
func Port(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// SyncBuffer is a bytes.Buffer that one goroutine may write while others
// read it: a process's output, a command's or a logger's.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// WaitExit waits up to timeout for the process to exit by itself (without
// signalling it) and reports whether it did.
func (n *Node) WaitExit(timeout time.Duration) bool { return n.reap(timeout) }

// Main is a TestMain for a package of process tests: it builds the binary
// into a temporary directory, sets *bin to it, runs the tests, removes the
// directory and exits with the tests' code.
func Main(m *testing.M, bin *string) {
	dir, err := os.MkdirTemp("", "clusterkit-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *bin, err = Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
