package nemesis

import (
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

var (
	flagSeed = flag.Int64("nemesis.seed", 0,
		"seed of every scenario's random choices (0: a new one per run, derived per scenario; each scenario logs its seed=)")
	flagSoak = flag.Bool("nemesis.soak", false,
		"soak: many iterations of every scenario with longer, repeated faults and longer workloads (also CLUSTERKIT_SOAK=1); use -timeout 0")
	flagIterations = flag.Int("nemesis.iterations", 0,
		"iterations of every scenario (default 1, or 5 with -nemesis.soak)")
	flagNodes    = flag.String("nemesis.nodes", "3,5", "comma-separated cluster sizes to run every scenario on")
	flagLoopback = flag.Bool("nemesis.loopback", false,
		"run on loopback even where network namespaces work (the cut scenarios are then skipped)")
	flagReadmeJoin = flag.Bool("nemesis.readme-join", false,
		"start node-1 without JOIN_ADDR, as in the README's quick start (default: every node, node-1 too, lists the others in JOIN_ADDR, as deploy/docker-compose.yml does)")
	flagStaleReads = flag.Bool("nemesis.stale-reads", false,
		"self-check of the harness: clients read with consistency=stale, which is not linearizable, so the cut and pause scenarios are expected to FAIL")
	flagSlots = flag.Int("nemesis.slots", 6,
		"how many nodes may run at once across parallel scenarios (a 5-node scenario runs alone by default)")
)

// nodeEnv is the environment of every node: failover 1 s after gossip
// declares a node dead (default 2 s), and client operations bounded at 2 s
// inside the cluster (default 5 s), below the clients' own 3 s timeout.
var nodeEnv = []string{"FAILOVER_GRACE=1s", "REQUEST_TIMEOUT=2s", "STATUS_INTERVAL=5s"}

// replicationFactor is the default the clusters are bootstrapped with.
const replicationFactor = 3

var (
	binary   string
	baseSeed int64
)

func soak() bool { return *flagSoak || os.Getenv("CLUSTERKIT_SOAK") == "1" }

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "clusterkit-nemesis-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = tc.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	baseSeed = time.Now().UnixNano()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// params sizes a scenario run.
type params struct {
	clients, keys int
	// warmup is the workload before the first fault; recovery the
	// workload after each round of faults.
	warmup, recovery time.Duration
	// rounds is how many times the scenario's fault is injected.
	rounds int
	// durations of the faults
	killDown, pauseShort, pauseLong, cutShort, cutLong time.Duration
	// converge bounds how long the healed cluster may take to settle;
	// checkTimeout bounds porcupine per key.
	converge, checkTimeout time.Duration
}

// Failure detection: gossip suspects a silent node after about 1-2 s and
// declares it dead after about 3-4 s, then FAILOVER_GRACE (1 s) applies. A
// short pause or cut stays well below that; a long one well above.
func (p params) String() string {
	return fmt.Sprintf("%d clients, %d keys, warmup %s, %d round(s) with %s recovery, kill %s, pause %s/%s, cut %s/%s",
		p.clients, p.keys, p.warmup, p.rounds, p.recovery, p.killDown, p.pauseShort, p.pauseLong, p.cutShort, p.cutLong)
}

func shortParams() params {
	return params{
		clients: 8, keys: 4, warmup: 1500 * time.Millisecond, recovery: 2 * time.Second, rounds: 1,
		killDown: 5 * time.Second, pauseShort: time.Second, pauseLong: 8 * time.Second,
		// A long cut outlasts the isolated node's own suspicion timeout
		// too (about 9-13 s with 0 peers to confirm), so that both sides
		// declare each other dead.
		cutShort: time.Second, cutLong: 15 * time.Second,
		converge: 60 * time.Second, checkTimeout: 30 * time.Second,
	}
}

func soakParams(rng *rand.Rand) params {
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo))) }
	return params{
		clients: 10, keys: 5, warmup: 3 * time.Second, recovery: between(3*time.Second, 8*time.Second), rounds: 3,
		killDown: between(2*time.Second, 15*time.Second), pauseShort: between(300*time.Millisecond, 1500*time.Millisecond),
		pauseLong: between(6*time.Second, 15*time.Second), cutShort: between(300*time.Millisecond, 2*time.Second),
		cutLong:  between(10*time.Second, 30*time.Second),
		converge: 120 * time.Second, checkTimeout: 120 * time.Second,
	}
}

// slots limits how many nodes run at once across parallel scenarios, so
// that two 3-node clusters may share the machine but a 5-node cluster runs
// alone: on 2 cores, CPU starvation would otherwise look like failures.
var slots = struct {
	sync.Mutex
	cond *sync.Cond
	used int
}{}

func acquire(n int) func() {
	slots.Lock()
	if slots.cond == nil {
		slots.cond = sync.NewCond(&slots.Mutex)
	}
	n = min(n, *flagSlots)
	for slots.used+n > *flagSlots {
		slots.cond.Wait()
	}
	slots.used += n
	slots.Unlock()
	return func() {
		slots.Lock()
		slots.used -= n
		slots.cond.Broadcast()
		slots.Unlock()
	}
}

func seedFor(name string) int64 {
	if *flagSeed != 0 {
		return *flagSeed
	}
	h := fnv.New64a()
	io.WriteString(h, name) //nolint:errcheck
	s := (baseSeed ^ int64(h.Sum64())) & (1<<53 - 1)
	if s == 0 {
		s = 1
	}
	return s
}

func sizes(t *testing.T) []int {
	var out []int
	for _, s := range strings.Split(*flagNodes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			t.Fatalf("-nemesis.nodes=%q: want sizes like 3,5", *flagNodes)
		}
		out = append(out, n)
	}
	return out
}

// TestNemesis runs every scenario on every cluster size: 3-node runs in
// parallel (two at a time), then 5-node runs one at a time.
func TestNemesis(t *testing.T) {
	netErr := tc.NetnsSupport()
	if *flagLoopback {
		netErr = fmt.Errorf("-nemesis.loopback is set")
	}
	if netErr != nil {
		t.Logf("!!!!! NETWORK NAMESPACES UNAVAILABLE (%v): the network-cut scenarios will be SKIPPED; the others run on loopback !!!!!", netErr)
	}
	iters := *flagIterations
	if iters <= 0 {
		iters = 1
		if soak() {
			iters = 5
		}
	}
	t.Logf("mode: %s, %d iteration(s) per scenario; base seed %d (per-scenario seeds are logged as seed=)",
		map[bool]string{true: "soak", false: "short"}[soak()], iters, baseSeed)
	for _, size := range sizes(t) {
		t.Run(fmt.Sprintf("n%d", size), func(t *testing.T) {
			for _, sc := range scenarios {
				if sc.soakOnly && !soak() {
					continue
				}
				for it := range iters {
					name := sc.name
					if iters > 1 {
						name = fmt.Sprintf("%s-%d", sc.name, it+1)
					}
					t.Run(name, func(t *testing.T) {
						if sc.netns && netErr != nil {
							t.Skipf("!!!!! SKIPPED: scenario %q cuts network links and needs network namespaces, which are unavailable: %v. "+
								"Run as root on Linux with the ip and nft tools to test network partitions. !!!!!", sc.name, netErr)
						}
						t.Parallel()
						release := acquire(size)
						defer release()
						runScenario(t, size, sc, seedFor(t.Name()), netErr == nil)
					})
				}
			}
		})
	}
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// artifactDir makes the directory for a failed run's artifacts: under
// $CLUSTERKIT_ARTIFACTS if set ("1" or "true" meaning test-artifacts/ at
// the module root), else a new temporary directory that outlives the test.
func artifactDir(test string, seed int64) (string, error) {
	name := fmt.Sprintf("nemesis-%s-seed%d-", unsafeName.ReplaceAllString(test, "_"), seed)
	base := os.Getenv("CLUSTERKIT_ARTIFACTS")
	switch strings.ToLower(base) {
	case "":
		return os.MkdirTemp("", name)
	case "1", "true", "yes":
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			return "", err
		}
		base = filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "test-artifacts")
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(base, name)
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
