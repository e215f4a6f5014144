package testcluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Network is a private IPv4 network of network namespaces that this
// harness creates and owns, so that links between nodes can be cut:
//
//   - a "switch" namespace holds a bridge;
//   - each node gets its own namespace, with one veth (eth0) plugged into
//     the bridge and the address 10.213.S.(10+i)/24;
//   - the test process (root namespace) reaches the nodes through one more
//     veth, 10.213.S.1, plugged into the same bridge.
//
// Nothing is configured in the root namespace but that one veth and its
// address: the bridge lives in the switch namespace, whose firewall is
// empty, so the host's own rules (Docker's FORWARD policy, br_netfilter)
// never see the nodes' traffic. Links are cut with an nftables set of
// blocked peer addresses inside each node's namespace, which drops TCP and
// UDP (gossip uses both) in both directions.
//
// S, the subnet, is chosen under a file lock so that concurrent test
// processes never share one. Namespace names carry the creating process's
// PID (ck-PID-S-...), so that a later run can remove what a killed test
// process left behind.
type Network struct {
	prefix string // "ck-PID-S"
	subnet string // "10.213.S"
	hostIf string

	mu     sync.Mutex
	hosts  map[string]string          // node name -> namespace
	ips    map[string]string          // node name -> IP
	cuts   map[string]map[string]bool // namespace -> blocked IPs
	closed bool
}

const subnetBase = "10.213"

var (
	netnsOnce sync.Once
	netnsErr  error
)

// NetnsSupport reports why network namespaces cannot be used here (nil if
// they can): it needs root, the ip and nft tools, and a successful trial
// of creating a namespace. The result is cached.
func NetnsSupport() error {
	netnsOnce.Do(func() {
		if os.Geteuid() != 0 {
			netnsErr = errors.New("not running as root")
			return
		}
		for _, tool := range []string{"ip", "nft"} {
			if _, err := exec.LookPath(tool); err != nil {
				netnsErr = fmt.Errorf("%s not found: %v", tool, err)
				return
			}
		}
		name := fmt.Sprintf("ck-%d-probe", os.Getpid())
		if err := run("ip", "netns", "add", name); err != nil {
			netnsErr = err
			return
		}
		defer run("ip", "netns", "del", name) //nolint:errcheck
		if err := run("ip", "netns", "exec", name, "nft", "list", "ruleset"); err != nil {
			netnsErr = err
			return
		}
		if err := run("ip", "-n", name, "link", "add", "br0", "type", "bridge"); err != nil {
			netnsErr = err
		}
	})
	return netnsErr
}

func run(args ...string) error {
	return runInput(nil, args...)
}

func runInput(stdin []byte, args ...string) error {
	cmd := exec.Command(args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

var staleNS = regexp.MustCompile(`^ck-(\d+)-`)

// sweepStale removes namespaces left behind by test processes that no
// longer exist (a test binary killed by its timeout cannot clean up).
func sweepStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		m := staleNS.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		_ = run("ip", "netns", "del", name)
	}
}

// lockFile serialises subnet allocation between test processes.
func lockFile() (func(), error) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "clusterkit-netns.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil //nolint:errcheck
}

// NewNetwork creates the switch namespace, its bridge and the root
// namespace's veth on a free subnet. Close removes everything.
func NewNetwork() (*Network, error) {
	if err := NetnsSupport(); err != nil {
		return nil, err
	}
	unlock, err := lockFile()
	if err != nil {
		return nil, err
	}
	defer unlock()
	sweepStale()
	out, err := exec.Command("ip", "-o", "-4", "addr", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("ip addr show: %v", err)
	}
	s := -1
	for i := 1; i < 255; i++ {
		if !strings.Contains(string(out), fmt.Sprintf(" %s.%d.", subnetBase, i)) {
			s = i
			break
		}
	}
	if s < 0 {
		return nil, errors.New("no free subnet under " + subnetBase)
	}
	n := &Network{
		prefix: fmt.Sprintf("ck-%d-%d", os.Getpid(), s),
		subnet: fmt.Sprintf("%s.%d", subnetBase, s),
		hostIf: fmt.Sprintf("ckh%d", s),
		hosts:  map[string]string{},
		ips:    map[string]string{},
		cuts:   map[string]map[string]bool{},
	}
	sw := n.prefix + "-sw"
	steps := [][]string{
		{"ip", "netns", "add", sw},
		{"ip", "-n", sw, "link", "set", "lo", "up"},
		{"ip", "-n", sw, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", sw, "link", "set", "br0", "up"},
		{"ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", "host", "netns", sw},
		{"ip", "-n", sw, "link", "set", "host", "master", "br0"},
		{"ip", "-n", sw, "link", "set", "host", "up"},
		{"ip", "addr", "add", n.subnet + ".1/24", "dev", n.hostIf},
		{"ip", "link", "set", n.hostIf, "up"},
	}
	for _, st := range steps {
		if err := run(st...); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// String names the network for logs.
func (n *Network) String() string {
	return fmt.Sprintf("%s.0/24 (namespaces %s-*)", n.subnet, n.prefix)
}

const nftRules = `table inet nemesis {
	set blocked { type ipv4_addr; }
	chain input { type filter hook input priority 0; policy accept; ip saddr @blocked drop; }
	chain output { type filter hook output priority 0; policy accept; ip daddr @blocked drop; }
}
`

// AddHost creates the namespace of node i (called name) and returns its
// namespace and IP address.
func (n *Network) AddHost(name string, i int) (ns, ip string, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return "", "", errors.New("network is closed")
	}
	if i < 1 || i > 200 {
		return "", "", fmt.Errorf("host number %d out of range", i)
	}
	ns = fmt.Sprintf("%s-n%d", n.prefix, i)
	ip = fmt.Sprintf("%s.%d", n.subnet, 10+i)
	sw := n.prefix + "-sw"
	port := fmt.Sprintf("n%d", i)
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", sw, "link", "set", port, "master", "br0"},
		{"ip", "-n", sw, "link", "set", port, "up"},
		{"ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
	}
	for _, st := range steps {
		if err := run(st...); err != nil {
			_ = run("ip", "netns", "del", ns)
			return "", "", err
		}
	}
	if err := runInput([]byte(nftRules), "ip", "netns", "exec", ns, "nft", "-f", "-"); err != nil {
		_ = run("ip", "netns", "del", ns)
		return "", "", err
	}
	n.hosts[name] = ns
	n.ips[name] = ip
	n.cuts[ns] = map[string]bool{}
	return ns, ip, nil
}

// Cut drops all traffic between hosts a and b (both directions, TCP and
// UDP), until Heal or HealAll.
func (n *Network) Cut(a, b string) error { return n.setCut(a, b, true) }

// Heal restores the link between a and b.
func (n *Network) Heal(a, b string) error { return n.setCut(a, b, false) }

func (n *Network) setCut(a, b string, cut bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	nsA, okA := n.hosts[a]
	nsB, okB := n.hosts[b]
	if !okA || !okB || a == b {
		return fmt.Errorf("cannot cut %s from %s: unknown host", a, b)
	}
	op := "add"
	if !cut {
		op = "delete"
	}
	for _, side := range [][2]string{{nsA, n.ips[b]}, {nsB, n.ips[a]}} {
		ns, peer := side[0], side[1]
		if n.cuts[ns][peer] == cut {
			continue
		}
		if err := run("ip", "netns", "exec", ns, "nft", op, "element", "inet", "nemesis", "blocked", "{ "+peer+" }"); err != nil {
			return err
		}
		n.cuts[ns][peer] = cut
	}
	return nil
}

// HealAll restores every link.
func (n *Network) HealAll() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	for ns, blocked := range n.cuts {
		if len(blocked) == 0 {
			continue
		}
		if err := run("ip", "netns", "exec", ns, "nft", "flush", "set", "inet", "nemesis", "blocked"); err != nil {
			errs = append(errs, err)
			continue
		}
		n.cuts[ns] = map[string]bool{}
	}
	return errors.Join(errs...)
}

// Cuts lists the cut links as "a-b" pairs, for logs.
func (n *Network) Cuts() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for a, nsA := range n.hosts {
		for b, ipB := range n.ips {
			if a < b && n.cuts[nsA][ipB] {
				out = append(out, a+"-"+b)
			}
		}
	}
	return out
}

// Close removes every namespace (which also removes their veths, the
// bridge and the rules). Processes still running inside must be killed
// first. It is safe to call more than once.
func (n *Network) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	for _, ns := range n.hosts {
		if err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := run("ip", "netns", "del", n.prefix+"-sw"); err != nil {
		errs = append(errs, err)
	}
	// Deleting the switch namespace removes the root veth with its peer,
	// asynchronously: wait for it, and delete it if it stays.
	for i := 0; exec.Command("ip", "link", "show", n.hostIf).Run() == nil; i++ {
		if i == 50 {
			if err := run("ip", "link", "del", n.hostIf); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
				errs = append(errs, err)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.Join(errs...)
}
