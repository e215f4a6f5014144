package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/clusterkit/clusterkit/client"
	"github.com/clusterkit/clusterkit/internal/certs"
)

// Defaults of the global flags.
const (
	DefaultAddr    = "localhost:8080"
	DefaultTimeout = 10 * time.Second
)

// globals are the flags every command takes.
type globals struct {
	addr    string
	token   string
	useTLS  bool
	tls     certs.Files
	timeout time.Duration
	json    bool
}

// defaultGlobals reads the defaults from the environment (CLUSTERKIT_*).
func defaultGlobals(getenv func(string) string) globals {
	g := globals{addr: DefaultAddr, timeout: DefaultTimeout}
	if v := getenv("CLUSTERKIT_ADDR"); v != "" {
		g.addr = v
	}
	g.token = getenv("CLUSTERKIT_TOKEN")
	g.tls.CA = getenv("CLUSTERKIT_TLS_CA")
	g.tls.Cert = getenv("CLUSTERKIT_TLS_CERT")
	g.tls.Key = getenv("CLUSTERKIT_TLS_KEY")
	g.useTLS, _ = strconv.ParseBool(getenv("CLUSTERKIT_TLS"))
	if d, err := time.ParseDuration(getenv("CLUSTERKIT_TIMEOUT")); err == nil && d > 0 {
		g.timeout = d
	}
	return g
}

// register adds the global flags to fs, with g's current values as
// defaults, so flags given before the command carry over.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.addr, "addr", g.addr, "management address (host:port) of any node, or several, comma-separated (env CLUSTERKIT_ADDR)")
	fs.StringVar(&g.token, "token", g.token, "bearer token sent with every request (env CLUSTERKIT_TOKEN)")
	fs.BoolVar(&g.useTLS, "tls", g.useTLS, "speak TLS, trusting the system's CAs (implied by -tls-ca and -tls-cert; env CLUSTERKIT_TLS=1)")
	fs.StringVar(&g.tls.CA, "tls-ca", g.tls.CA, "CA certificate that signed the nodes' certificates (env CLUSTERKIT_TLS_CA)")
	fs.StringVar(&g.tls.Cert, "tls-cert", g.tls.Cert, "client certificate, for nodes that require one (env CLUSTERKIT_TLS_CERT)")
	fs.StringVar(&g.tls.Key, "tls-key", g.tls.Key, "key of the client certificate (env CLUSTERKIT_TLS_KEY)")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "how long a command may take (kv watch: each connection attempt) (env CLUSTERKIT_TIMEOUT)")
	fs.BoolVar(&g.json, "json", g.json, "print JSON instead of text")
}

// addrs splits -addr into its addresses.
func (g *globals) addrs() []string {
	var out []string
	for _, a := range strings.Split(g.addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// env is what a command runs with: its streams, the global flags, and a
// client made on first use.
type env struct {
	r    *runner
	g    globals
	tls  *tls.Config
	out  io.Writer
	errw io.Writer
	in   io.Reader

	once sync.Once
	cl   *client.Client
	err  error
}

func newEnv(r *runner, g globals) (*env, error) {
	e := &env{r: r, g: g, out: r.stdout, errw: r.stderr, in: r.stdin}
	if len(g.addrs()) == 0 {
		return nil, usagef("-addr is empty: give the management address of a node (host:port)")
	}
	if g.timeout <= 0 {
		return nil, usagef("-timeout must be positive")
	}
	if (g.tls.Cert == "") != (g.tls.Key == "") {
		return nil, usagef("-tls-cert and -tls-key go together")
	}
	if g.useTLS || g.tls.CA != "" || g.tls.Cert != "" {
		tc, err := g.tls.ClientConfig()
		if err != nil {
			return nil, usagef("TLS: %v", err)
		}
		e.tls = tc
	}
	return e, nil
}

// clientWithArgs checks a command's positional arguments (see wantArgs),
// then connects: the first steps of most commands.
func (e *env) clientWithArgs(ctx context.Context, args []string, min, max int, usage string) (*client.Client, error) {
	if err := wantArgs(args, min, max, usage); err != nil {
		return nil, err
	}
	return e.client(ctx)
}

// client connects on first use (commands such as help never do).
func (e *env) client(ctx context.Context) (*client.Client, error) {
	e.once.Do(func() {
		e.cl, e.err = client.New(ctx, client.Config{
			Addrs:           e.g.addrs(),
			Token:           e.g.token,
			TLS:             e.tls,
			RequestTimeout:  e.g.timeout,
			MaxConnsPerNode: 4,
		})
		if e.err != nil {
			e.err = fmt.Errorf("connect to %s: %w", e.g.addr, e.err)
		}
	})
	return e.cl, e.err
}

func (e *env) close() {
	if e.cl != nil {
		_ = e.cl.Close()
	}
}

// printJSON writes v as one line of JSON.
func (e *env) printJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	_, err = fmt.Fprintf(e.out, "%s\n", b)
	return err
}

// table writes rows under a header, in aligned columns.
func (e *env) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// uintFlag is an optional non-negative integer flag: set tells whether it
// was given (-if-revision 0 is a condition, not its absence).
type uintFlag struct {
	v   uint64
	set bool
}

func (f *uintFlag) String() string {
	if f == nil || !f.set {
		return ""
	}
	return strconv.FormatUint(f.v, 10)
}

func (f *uintFlag) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("want a non-negative integer")
	}
	f.v, f.set = v, true
	return nil
}

func (f *uintFlag) ptr() *uint64 {
	if !f.set {
		return nil
	}
	return client.Rev(f.v)
}

// listFlag collects a repeated flag.
type listFlag []string

func (f *listFlag) String() string { return strings.Join(*f, ",") }
func (f *listFlag) Set(s string) error {
	*f = append(*f, s)
	return nil
}

// wantArgs checks the number of positional arguments.
func wantArgs(args []string, min, max int, what string) error {
	if len(args) < min || (max >= 0 && len(args) > max) {
		return usagef("want %s, got %d argument(s)", what, len(args))
	}
	return nil
}

// fmtTime formats a time for a table ("" for the zero time).
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// fmtTTL formats a remaining TTL for a table ("" for none).
func fmtTTL(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.Round(time.Second).String()
}

// rfc3339Milli is how the server writes expires_at.
func rfc3339Milli(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
