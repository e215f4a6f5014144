// Package loadgen is ClusterKit's load tool (`clusterkit bench`): it drives
// the KV API of one or more nodes with concurrent JSON-over-HTTP sets and
// gets, shows live progress, and reports throughput, latency percentiles and
// wrong answers. With -watchers it also holds watch streams open on the
// keys it writes and reports how their events arrive (see watch.go).
//
// The measurement (workers, preload, progress, percentiles, summary) runs
// against the Target interface, so other stores can be driven by the same
// code: bench/compare uses it to measure etcd next to ClusterKit.
package loadgen

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterkit/clusterkit/internal/certs"
)

// Config is one load run.
type Config struct {
	Addrs       []string      // KV API addresses (host:port) for Run
	Concurrency int           // concurrent clients
	Duration    time.Duration // length of the measured run
	Keys        int           // key space size
	ValueSize   int           // bytes per value
	ReadRatio   float64       // fraction of operations that are gets
	Preload     bool          // write every key before the run
	Stale       bool          // consistency=stale gets (HTTP target)
	Timeout     time.Duration // per request, applied by the target
	Seed        uint64
	// Workload is what a write is: WorkloadSet ("" too) a plain set,
	// WorkloadCAS a read-modify-write (a get of the key's revision, then
	// a set on the condition that it has not changed), which needs a
	// CASTarget.
	Workload string
	// Batch, when over 1, makes each write a batch of that many sets in
	// one request (up to MaxBatch), which needs a BatchTarget; 0 is 1.
	Batch int
	// RouteVia, if set, is a node's management address: the HTTP target
	// reads the partition table there and sends each key to its primary
	// (HTTPTarget.RouteByOwner) instead of to the addresses in turn.
	RouteVia string
	// Client, if set, is a node's management address: the run goes
	// through the Go client package (ClientTarget) instead of the lean
	// HTTP target, routed as ClientRouting says (ClientRoutePrimary, the
	// default, or ClientRouteRoundRobin).
	Client        string
	ClientRouting string
	// TLS, when set, makes the HTTP target speak TLS; OpenHTTPTarget
	// builds it from TLSFiles when UseTLS or a file is set.
	TLS      *tls.Config
	TLSFiles certs.Files
	UseTLS   bool
	// Token, when set, is sent as a bearer token (KV auth).
	Token string
	// TTL, when positive, gives every key written that TTL (HTTP target).
	TTL time.Duration
	// KeyPrefix is what every key starts with, before its number
	// ("" is DefaultKeyPrefix).
	KeyPrefix string
	// Watchers, when positive, opens that many watch streams on
	// WatchPrefix ("" is the key prefix) before the run, spread over the
	// addresses, and measures how the events of the run's writes reach
	// them (Result.Watch); it needs a WatchTarget and -workload set.
	// WatchProgress is the streams' progress interval (0:
	// DefaultWatchProgress), WatchGrace how long, at most, the run waits
	// after its last write for the events still on their way (0:
	// DefaultWatchGrace).
	Watchers      int
	WatchPrefix   string
	WatchProgress time.Duration
	WatchGrace    time.Duration
}

// The workloads of Config.Workload.
const (
	WorkloadSet = "set"
	WorkloadCAS = "cas"
)

// MaxBatch is the largest Config.Batch: the most ops a ClusterKit batch
// request takes.
const MaxBatch = 500

// Result summarises a run. An op is a get, a set, a CAS (its get and its
// conditional set) or a batch request; Keys counts the keys the ops read or
// wrote, which is Ops but for batches.
type Result struct {
	Ops    int64 `json:"ops"`
	Reads  int64 `json:"reads"`
	Writes int64 `json:"writes"`
	Keys   int64 `json:"keys"`
	// Errors counts failed ops, except that with batches it counts keys: a
	// batch's result that is not 200 is one, a failed batch request one
	// per key it carried.
	Errors int64 `json:"errors"`
	Misses int64 `json:"misses"`
	// Conflicts counts the CAS ops whose condition failed because another
	// client wrote the key between the get and the set: the workload's
	// expected contention, not errors. Such an op is not retried.
	Conflicts  int64         `json:"conflicts"`
	Elapsed    time.Duration `json:"-"`
	Seconds    float64       `json:"seconds"`
	OpsPerSec  float64       `json:"ops_per_sec"`
	KeysPerSec float64       `json:"keys_per_sec"`
	P50Ms      float64       `json:"p50_ms"`
	P90Ms      float64       `json:"p90_ms"`
	P99Ms      float64       `json:"p99_ms"`
	P999Ms     float64       `json:"p999_ms"`
	MaxMs      float64       `json:"max_ms"`
	// ErrorKinds counts errors by kind: HTTP status (http_503), transport
	// failure, an answer the target could not read (bad_answer), or
	// whatever kind a Target gives (see KindError).
	ErrorKinds map[string]int64 `json:"error_kinds,omitempty"`
	Preloaded  int              `json:"preloaded"`
	// PreloadSeconds is how long the preload took.
	PreloadSeconds float64 `json:"preload_seconds"`
	// ClientCPUSeconds is the CPU time the load tool itself used during
	// the measured run (its writers, readers and watchers), where the
	// system tells it (0 elsewhere).
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`
	// Watch is the watchers' measurement (Config.Watchers).
	Watch *WatchResult `json:"watch,omitempty"`
}

// Main runs the bench subcommand with args (without the subcommand name).
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addrs := fs.String("addrs", "127.0.0.1:9080", "comma-separated KV API addresses")
	c := Config{}
	c.RegisterFlags(fs)
	fs.BoolVar(&c.Stale, "stale", false, "read with consistency=stale")
	fs.DurationVar(&c.TTL, "ttl", 0, "give every key written this TTL (e.g. 60s; 0: none)")
	fs.IntVar(&c.Watchers, "watchers", 0, "open this many watch streams (GET /kv/watch, spread over -addrs) on -watch-prefix before the run and measure the delay from each write's 200 to its event on every stream (exit 1 if events are duplicated, out of order, or missing from streams that stayed open)")
	fs.StringVar(&c.WatchPrefix, "watch-prefix", "", "the prefix the watchers watch (default: -key-prefix, every key written)")
	fs.DurationVar(&c.WatchProgress, "watch-progress", DefaultWatchProgress, "progress interval asked of each watch stream")
	fs.DurationVar(&c.WatchGrace, "watch-grace", DefaultWatchGrace, "after the last write, wait at most this long for its events to arrive")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	quiet := fs.Bool("quiet", false, "no progress line")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c.Addrs = SplitAddrs(*addrs)
	if err := c.validate(); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	var progress io.Writer = stderr
	if *quiet {
		progress = nil
	}
	res, err := Run(context.Background(), c, progress)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	return WriteResult(stdout, res, c, *asJSON)
}

// RegisterFlags defines the workload flags every load command shares
// (-c, -d, -keys, -value-size, -reads, -workload, -batch, -preload,
// -timeout, -seed, -route-via, TLS and token) on fs, stored into c.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.Concurrency, "c", 32, "concurrent clients")
	fs.DurationVar(&c.Duration, "d", 10*time.Second, "duration of the measured run (0 with -preload: only preload)")
	fs.IntVar(&c.Keys, "keys", 100000, "number of distinct keys")
	fs.StringVar(&c.KeyPrefix, "key-prefix", DefaultKeyPrefix, "what the keys start with, before their number (%08d); a hash tag such as {t}: puts them all in one partition")
	fs.IntVar(&c.ValueSize, "value-size", 100, "value size in bytes")
	fs.Float64Var(&c.ReadRatio, "reads", 0, "fraction of operations that are reads (0..1)")
	fs.StringVar(&c.Workload, "workload", WorkloadSet, "what a write is: set, or cas (get the key's revision, then set it if unchanged; a lost race counts as a conflict)")
	fs.IntVar(&c.Batch, "batch", 1, fmt.Sprintf("sets per write request, sent as one POST /kv/batch when over 1 (at most %d; -workload set only)", MaxBatch))
	fs.BoolVar(&c.Preload, "preload", false, "write every key once before the run (then a key not found counts as a miss)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "per-request timeout")
	fs.Uint64Var(&c.Seed, "seed", uint64(time.Now().UnixNano()), "random seed")
	fs.StringVar(&c.Client, "client", "", "ClusterKit: a node's management address; drive the cluster through the Go client package (github.com/clusterkit/clusterkit/client) instead of the lean HTTP client; -addrs and -route-via are then unused")
	fs.StringVar(&c.ClientRouting, "client-routing", ClientRoutePrimary, "with -client: primary (each key to its partition's primary) or round-robin")
	fs.StringVar(&c.RouteVia, "route-via", "", "ClusterKit: a node's management address; send each key to its primary, read from the partition table there, instead of to the addresses in turn")
	fs.BoolVar(&c.UseTLS, "tls", false, "speak TLS to the nodes (implied by -tls-ca and -tls-cert)")
	fs.StringVar(&c.TLSFiles.CA, "tls-ca", "", "CA certificate that signed the nodes' certificates (default: the system's)")
	fs.StringVar(&c.TLSFiles.Cert, "tls-cert", "", "client certificate, for nodes that require one (TLS_CA_FILE)")
	fs.StringVar(&c.TLSFiles.Key, "tls-key", "", "key of the client certificate")
	fs.StringVar(&c.Token, "token", os.Getenv("CLUSTERKIT_TOKEN"), "bearer token for the KV API when KV auth is on (default $CLUSTERKIT_TOKEN)")
}

// SplitAddrs splits a comma-separated address list, dropping blanks.
func SplitAddrs(list string) []string {
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// WriteResult prints res as JSON or as the human summary and returns the
// command's exit code: 1 if any answer was wrong, a watch's events
// included (see WatchResult.Wrong).
func WriteResult(w io.Writer, res Result, c Config, asJSON bool) int {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		fmt.Fprint(w, res.String(c))
	}
	if res.Misses > 0 || res.Watch != nil && res.Watch.Wrong() {
		return 1
	}
	return 0
}

func (c Config) validate() error {
	if len(c.Addrs) == 0 {
		return errors.New("-addrs is empty")
	}
	return c.validateLoad()
}

// validateLoad checks the workload settings, which every target shares.
func (c Config) validateLoad() error {
	switch {
	case c.Concurrency < 1:
		return errors.New("-c must be >= 1")
	case c.Duration < 0 || c.Duration == 0 && !c.Preload:
		return errors.New("-d must be positive (or 0 with -preload, to only preload)")
	case c.Keys < 1:
		return errors.New("-keys must be >= 1")
	case c.ValueSize < 0 || c.ValueSize > 1<<20:
		return errors.New("-value-size must be from 0 to 1048576")
	case c.ReadRatio < 0 || c.ReadRatio > 1:
		return errors.New("-reads must be from 0 to 1")
	case c.Workload != "" && c.Workload != WorkloadSet && c.Workload != WorkloadCAS:
		return fmt.Errorf("-workload must be %s or %s, not %q", WorkloadSet, WorkloadCAS, c.Workload)
	case c.Batch < 0 || c.Batch > MaxBatch:
		return fmt.Errorf("-batch must be from 1 to %d", MaxBatch)
	case c.Batch > 1 && c.Workload == WorkloadCAS:
		// A CAS op is one key's get and conditional set, each a request
		// of its own; a batch has no place for the get.
		return errors.New("-batch applies to -workload set only, not cas")
	case c.Watchers < 0:
		return errors.New("-watchers must be >= 0")
	case c.Watchers > 0 && c.Workload == WorkloadCAS:
		return errors.New("-watchers applies to -workload set only, not cas")
	case c.Watchers > 0 && c.Duration == 0:
		return errors.New("-watchers needs a measured run (-d > 0)")
	case c.WatchProgress < 0 || c.WatchGrace < 0:
		return errors.New("-watch-progress and -watch-grace must not be negative")
	}
	return nil
}

// keyPrefix is KeyPrefix, or DefaultKeyPrefix for "".
func (c Config) keyPrefix() string { return cmp.Or(c.KeyPrefix, DefaultKeyPrefix) }

// watchPrefix is WatchPrefix, or the key prefix for "".
func (c Config) watchPrefix() string { return cmp.Or(c.WatchPrefix, c.keyPrefix()) }

func (c Config) watchProgress() time.Duration { return cmp.Or(c.WatchProgress, DefaultWatchProgress) }
func (c Config) watchGrace() time.Duration    { return cmp.Or(c.WatchGrace, DefaultWatchGrace) }

// batch is the number of sets per write: Batch, or 1 for 0.
func (c Config) batch() int { return max(c.Batch, 1) }

// String renders the human summary.
func (r Result) String(c Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "targets      %s\n", strings.Join(c.Addrs, ","))
	fmt.Fprintf(&b, "workload     %s c=%d keys=%d value=%dB reads=%.0f%% batch=%d stale=%v preload=%v",
		cmp.Or(c.Workload, WorkloadSet), c.Concurrency, c.Keys, c.ValueSize, c.ReadRatio*100, c.batch(), c.Stale, c.Preload)
	if c.keyPrefix() != DefaultKeyPrefix {
		fmt.Fprintf(&b, " key-prefix=%q", c.keyPrefix())
	}
	b.WriteByte('\n')
	if r.Preloaded > 0 {
		fmt.Fprintf(&b, "preload      %d keys in %.1fs\n", r.Preloaded, r.PreloadSeconds)
	}
	fmt.Fprintf(&b, "ops          %d in %.1fs (%d reads, %d writes; %d keys)\n", r.Ops, r.Seconds, r.Reads, r.Writes, r.Keys)
	fmt.Fprintf(&b, "throughput   %.0f ops/s  %.0f keys/s\n", r.OpsPerSec, r.KeysPerSec)
	fmt.Fprintf(&b, "latency      p50 %.2fms  p90 %.2fms  p99 %.2fms  p999 %.2fms  max %.2fms\n", r.P50Ms, r.P90Ms, r.P99Ms, r.P999Ms, r.MaxMs)
	fmt.Fprintf(&b, "errors       %d", r.Errors)
	if len(r.ErrorKinds) > 0 {
		fmt.Fprintf(&b, " (%s)", kindList(r.ErrorKinds))
	}
	fmt.Fprintf(&b, "\nmisses       %d (a preloaded key not found, e.g. a 404: wrong answers)\n", r.Misses)
	if c.Workload == WorkloadCAS || r.Conflicts > 0 {
		fmt.Fprintf(&b, "conflicts    %d (a CAS that lost to another client's write: not errors)\n", r.Conflicts)
	}
	if r.ClientCPUSeconds > 0 && r.Seconds > 0 {
		fmt.Fprintf(&b, "client cpu   %.1fs (%.2f cores: the load tool's own use)\n", r.ClientCPUSeconds, r.ClientCPUSeconds/r.Seconds)
	}
	if w := r.Watch; w != nil {
		b.WriteString(w.String())
	}
	return b.String()
}

// String renders the watchers' lines of the human summary.
func (w *WatchResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "watchers     %d on prefix %q", w.Watchers, w.Prefix)
	if w.OpenErrors > 0 {
		fmt.Fprintf(&b, "; %d could not be opened (%s)", w.OpenErrors, kindList(w.OpenErrorKinds))
	}
	fmt.Fprintf(&b, "\nevents       %d delivered of %d expected (%d acknowledged writes x %d streams; %.0f events/s)\n",
		w.Delivered, w.Expected, w.Writes, w.Watchers, w.EventsPerSec)
	fmt.Fprintf(&b, "             missing %d  duplicates %d  out of order %d  unmatched %d  foreign %d  other %d; %d of %d streams complete\n",
		w.Missing, w.Duplicates, w.OutOfOrder, w.Unmatched, w.Foreign, w.Other, w.Complete, w.Watchers)
	fmt.Fprintf(&b, "event delay  p50 %.2fms  p90 %.2fms  p99 %.2fms  p999 %.2fms  max %.2fms  min %.2fms (from the write's 200; %d events before it)\n",
		w.P50Ms, w.P90Ms, w.P99Ms, w.P999Ms, w.MaxMs, w.MinMs, w.BeforeAck)
	fmt.Fprintf(&b, "streams      ended early %d", w.Ended)
	if w.Ended > 0 {
		fmt.Fprintf(&b, " (%s)", kindList(w.EndKinds))
	}
	fmt.Fprintf(&b, "; longest silence %.0fms; %d progress events; waited %.2fs after the last write\n", w.MaxGapMs, w.Progress, w.GraceSeconds)
	return b.String()
}

// kindList renders counts by kind as "a=1 b=2", sorted.
func kindList(m map[string]int64) string {
	kinds := make([]string, 0, len(m))
	for k, v := range m {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(kinds)
	return strings.Join(kinds, " ")
}

// Run executes the workload against the KV API at c.Addrs over HTTP (see
// HTTPTarget) and returns its summary. progress, if not nil, gets a live
// line every second.
func Run(ctx context.Context, c Config, progress io.Writer) (Result, error) {
	if err := c.validate(); err != nil {
		return Result{}, err
	}
	var t Target
	var err error
	if c.Client != "" {
		t, err = OpenClientTarget(ctx, c)
	} else {
		t, err = OpenHTTPTarget(ctx, c)
	}
	if err != nil {
		return Result{}, err
	}
	defer t.Close()
	return RunTarget(ctx, c, t, progress)
}

// RunTarget executes the workload in c (all but Addrs, Stale and Timeout,
// which belong to the target) against t and returns its summary. progress,
// if not nil, gets a live line every second. It does not close t. A CAS
// workload needs t to be a CASTarget, and batches a BatchTarget.
func RunTarget(ctx context.Context, c Config, t Target, progress io.Writer) (Result, error) {
	if err := c.validateLoad(); err != nil {
		return Result{}, err
	}
	cas, _ := t.(CASTarget)
	if c.Workload == WorkloadCAS && cas == nil {
		return Result{}, fmt.Errorf("-workload cas: the target (%T) has no conditional sets", t)
	}
	bt, _ := t.(BatchTarget)
	if c.batch() > 1 && bt == nil {
		return Result{}, fmt.Errorf("-batch %d: the target (%T) has no batch requests", c.Batch, t)
	}
	var wt WatchTarget
	if c.Watchers > 0 {
		if wt, _ = t.(WatchTarget); wt == nil {
			return Result{}, fmt.Errorf("-watchers %d: the target (%T) has no watches", c.Watchers, t)
		}
	}
	if c.Workload != WorkloadCAS {
		cas = nil
	}
	var res Result
	if c.Preload {
		t0 := time.Now()
		if err := preload(ctx, c, t, progress); err != nil {
			return Result{}, err
		}
		res.Preloaded, res.PreloadSeconds = c.Keys, time.Since(t0).Seconds()
		if c.Duration == 0 {
			return res, nil
		}
	}
	value := bytes.Repeat([]byte("x"), c.ValueSize)
	batch := c.batch()
	keyPrefix, watchPrefix := c.keyPrefix(), c.watchPrefix()

	// The watchers are open before the first write: each of the run's
	// writes is then an event of every stream.
	var watch *watchRun
	epoch := time.Now() // of the watch stamps
	if wt != nil {
		if progress != nil {
			fmt.Fprintf(progress, "opening %d watch streams on %q...\n", c.Watchers, watchPrefix)
		}
		watch = openWatches(ctx, c, wt, epoch)
		defer watch.close() // again after an early return; then a no-op
	}
	acks := make([][]stamp, c.Concurrency)

	var ops, errs, misses, conflicts atomic.Int64
	lat := make([][]time.Duration, c.Concurrency)
	reads := make([]int64, c.Concurrency)
	writes := make([]int64, c.Concurrency)
	keys := make([]int64, c.Concurrency)
	kinds := make([]map[string]int64, c.Concurrency)
	// start is taken first: the run then lasts at least Duration, which
	// ends at the context's deadline.
	start := time.Now()
	cpu0 := cpuTime()
	runCtx, cancel := context.WithTimeout(ctx, c.Duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := range c.Concurrency {
		kinds[w] = map[string]int64{}
		rng := rand.New(rand.NewPCG(c.Seed, uint64(w)))
		wg.Go(func() {
			var kb [64]byte
			batchKeys := make([]string, batch)
			batchIdx := make([]int, batch)
			revs := make([]uint64, batch)
			for runCtx.Err() == nil {
				idx := rng.IntN(c.Keys)
				k := string(appendKey(kb[:0], keyPrefix, idx))
				isRead := rng.Float64() < c.ReadRatio
				t0 := time.Now()
				var err error
				var rev uint64
				var failed []error
				found, conflict := true, false
				// Requests use ctx, not runCtx: one in flight at the end
				// of the run completes and is counted.
				switch {
				case isRead:
					found, err = t.Get(ctx, w, k)
					reads[w]++
					keys[w]++
				case cas != nil:
					found, conflict, err = casOnce(ctx, cas, w, k, value)
					writes[w]++
					keys[w]++
				case batch > 1:
					batchKeys[0], batchIdx[0] = k, idx
					for j := 1; j < batch; j++ {
						batchIdx[j] = rng.IntN(c.Keys)
						batchKeys[j] = string(appendKey(kb[:0], keyPrefix, batchIdx[j]))
					}
					if wt != nil {
						failed, err = wt.SetBatchRevisions(ctx, w, batchKeys, value, revs)
					} else {
						failed, err = bt.SetBatch(ctx, w, batchKeys, value)
					}
					writes[w]++
					keys[w] += int64(batch)
				case wt != nil:
					rev, err = wt.SetRevision(ctx, w, k, value)
					writes[w]++
					keys[w]++
				default:
					err = t.Set(ctx, w, k, value)
					writes[w]++
					keys[w]++
				}
				now := time.Now()
				lat[w] = append(lat[w], now.Sub(t0))
				if wt != nil && err == nil && !isRead {
					// The acknowledged writes under the watched prefix,
					// stamped with the time their 200 arrived.
					at := now.Sub(epoch)
					if batch == 1 {
						if strings.HasPrefix(k, watchPrefix) {
							acks[w] = append(acks[w], stamp{writeID{idx, rev}, at})
						}
					} else {
						for j, r := range revs[:batch] {
							if r != 0 && strings.HasPrefix(batchKeys[j], watchPrefix) {
								acks[w] = append(acks[w], stamp{writeID{batchIdx[j], r}, at})
							}
						}
					}
				}
				ops.Add(1)
				switch {
				case err != nil && batch > 1 && !isRead:
					// Every key of a failed batch failed.
					errs.Add(int64(batch))
					kinds[w][ErrorKind(err)] += int64(batch)
				case err != nil:
					errs.Add(1)
					kinds[w][ErrorKind(err)]++
				default:
					// A CAS whose get missed a preloaded key is a
					// miss, and then usually a conflict too.
					if conflict {
						conflicts.Add(1)
					}
					if !found && c.Preload {
						misses.Add(1)
					}
				}
				if len(failed) > 0 {
					errs.Add(int64(len(failed)))
					for _, f := range failed {
						kinds[w][ErrorKind(f)]++
					}
				}
			}
		})
	}
	var stopProgress func()
	if progress != nil {
		stop := make(chan struct{})
		var pg sync.WaitGroup
		stopProgress = func() { close(stop); pg.Wait() }
		pg.Go(func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			last, lastEvents := int64(0), int64(0)
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					n := ops.Load()
					fmt.Fprintf(progress, "\r%5.0fs  %8d ops/s  errors %d  misses %d", time.Since(start).Seconds(), n-last, errs.Load(), misses.Load())
					if cas != nil {
						fmt.Fprintf(progress, "  conflicts %d", conflicts.Load())
					}
					if watch != nil {
						ev := watch.received()
						fmt.Fprintf(progress, "  events %d/s", ev-lastEvents)
						lastEvents = ev
					}
					fmt.Fprint(progress, "   ")
					last = n
				}
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.ClientCPUSeconds = (cpuTime() - cpu0).Seconds()
	if stopProgress != nil {
		stopProgress()
		fmt.Fprintln(progress)
	}
	var all []time.Duration
	for w := range c.Concurrency {
		all = append(all, lat[w]...)
		res.Reads += reads[w]
		res.Writes += writes[w]
		res.Keys += keys[w]
		for k, v := range kinds[w] {
			if res.ErrorKinds == nil {
				res.ErrorKinds = map[string]int64{}
			}
			res.ErrorKinds[k] += v
		}
	}
	slices.Sort(all)
	res.Ops, res.Errors, res.Misses, res.Conflicts = ops.Load(), errs.Load(), misses.Load(), conflicts.Load()
	res.Seconds = res.Elapsed.Seconds()
	res.OpsPerSec = float64(res.Ops) / res.Seconds
	res.KeysPerSec = float64(res.Keys) / res.Seconds
	res.P50Ms, res.P90Ms, res.P99Ms, res.P999Ms = pct(all, 0.50), pct(all, 0.90), pct(all, 0.99), pct(all, 0.999)
	if len(all) > 0 {
		res.MaxMs = ms(all[len(all)-1])
	}
	if watch != nil {
		var acked []stamp
		for _, a := range acks {
			acked = append(acked, a...)
		}
		expected := int64(len(acked))
		waited := watch.settle(expected, c.watchGrace())
		watch.close()
		res.Watch = watch.result(acked, c.Keys)
		res.Watch.GraceSeconds = waited.Seconds()
		res.Watch.EventsPerSec = float64(res.Watch.Delivered) / (res.Seconds + waited.Seconds())
	}
	return res, nil
}

// casOnce is one CAS op: read key's revision, then set it on the condition
// that the revision is unchanged (0: that the key still does not exist). A
// failed condition is a conflict, and is not retried: a retry would hide
// the contention the workload is there to measure. found is false for a
// key the get did not find, which, with a preload, is a miss; the set is
// still sent, conditioned on the key's absence.
func casOnce(ctx context.Context, t CASTarget, worker int, key string, value []byte) (found, conflict bool, err error) {
	rev, found, err := t.GetRevision(ctx, worker, key)
	if err != nil {
		return true, false, fmt.Errorf("cas: get the revision: %w", err)
	}
	conflict, err = t.SetIf(ctx, worker, key, value, rev)
	if err != nil {
		return found, false, fmt.Errorf("cas: conditional set: %w", err)
	}
	return found, conflict, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pct returns the q-quantile of sorted latencies in milliseconds.
func pct(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return ms(sorted[i])
}

// preload writes every key once, concurrently, and fails if any write
// fails: a run whose preload is incomplete would report false misses.
func preload(ctx context.Context, c Config, t Target, progress io.Writer) error {
	value := bytes.Repeat([]byte("x"), c.ValueSize)
	next := atomic.Int64{}
	var failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	// With -batch, keys are preloaded that many at a time: a million
	// keys take minutes one by one.
	chunk := 1
	bt, batched := t.(BatchTarget)
	if batched && c.Batch > 1 {
		chunk = c.Batch
	}
	for w := range c.Concurrency {
		wg.Go(func() {
			keys := make([]string, 0, chunk)
			for {
				i := int(next.Add(int64(chunk)) - int64(chunk))
				if i >= c.Keys {
					return
				}
				keys = keys[:0]
				for j := i; j < min(i+chunk, c.Keys); j++ {
					keys = append(keys, string(appendKey(nil, c.keyPrefix(), j)))
				}
				var err error
				for attempt := 0; attempt < 5; attempt++ {
					if chunk == 1 {
						err = t.Set(ctx, w, keys[0], value)
					} else {
						var failed []error
						if failed, err = bt.SetBatch(ctx, w, keys, value); err == nil && len(failed) > 0 {
							err = failed[0]
						}
					}
					if err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("preload %s: %v", keys[0], err))
				}
			}
		})
	}
	if progress != nil {
		fmt.Fprintf(progress, "preloading %d keys...\n", c.Keys)
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		return fmt.Errorf("%d preload writes failed; first: %v", n, firstErr.Load())
	}
	return nil
}
