package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// Command is a subcommand of the binary that lives outside this package
// (bench, healthcheck, keygen, tls): help lists it, and `help NAME` runs
// it with -h.
type Command struct {
	Name    string
	Args    string // the usage after the name, e.g. "[flags]"
	Summary string
	Run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// Main runs the command line args (without the program name) with no
// cancellation: `kv watch` then runs until the process is killed. A
// program that handles signals calls Run with a context it cancels.
func Main(args []string, stdout, stderr io.Writer) int {
	return Run(context.Background(), args, stdout, stderr)
}

// Run runs the command line args (without the program name) and returns
// the exit code. Cancelling ctx (on SIGINT) ends `kv watch` with exit 0
// and interrupts any other command. extra are the binary's other
// subcommands, for help.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, extra ...Command) int {
	r := &runner{stdin: os.Stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv, extra: extra}
	return r.run(ctx, args)
}

// runner is one invocation: its streams and environment.
type runner struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	extra          []Command
}

// cmd is one command of this package.
type cmd struct {
	name    string // "kv get"
	args    string // "KEY"
	summary string
	help    string // paragraphs after the usage line
	// setup registers the command's own flags and returns what runs it
	// with the positional arguments.
	setup func(fs *flag.FlagSet) func(ctx context.Context, e *env, args []string) error
	// stream commands (watch) get no overall -timeout.
	stream bool
}

// commands lists every command of this package, in help order. A
// function, not a variable: no package-level mutable state.
func commands() []*cmd {
	var all []*cmd
	all = append(all, kvCommands()...)
	all = append(all, clusterCommands()...)
	all = append(all, adminCommands()...)
	return all
}

// groupSummary describes the commands that only hold subcommands.
func groupSummary(name string) (string, bool) {
	s, ok := map[string]string{
		"kv":      "read and write keys",
		"token":   "list, create and delete API tokens",
		"keyring": "list and rotate the cluster key (CLUSTER_KEY)",
		"kv-auth": "whether the KV API needs tokens",
	}[name]
	return s, ok
}

func (r *runner) run(ctx context.Context, args []string) int {
	// Global flags may come before the command: clusterkit -addr X kv get K.
	g := defaultGlobals(r.getenv)
	gfs := newFlagSet("clusterkit")
	g.register(gfs)
	if err := gfs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			r.printHelp()
			return ExitOK
		}
		return r.fail(usagef("%v (clusterkit help lists the commands)", err))
	}
	args = gfs.Args()
	if len(args) == 0 {
		r.printHelp()
		return ExitUsage
	}
	if args[0] == "help" {
		return r.help(ctx, args[1:])
	}
	for _, x := range r.extra {
		if x.Name == args[0] {
			return x.Run(ctx, args[1:], r.stdout, r.stderr)
		}
	}
	c, rest, group := lookup(args)
	if c == nil {
		if group != "" {
			if len(rest) > 0 && rest[0] != "-h" && rest[0] != "-help" && rest[0] != "--help" {
				return r.fail(usagef("unknown command %q (clusterkit help %s lists its commands)", group+" "+rest[0], group))
			}
			r.printGroup(r.stdout, group)
			if len(rest) == 0 {
				return ExitUsage
			}
			return ExitOK
		}
		return r.fail(usagef("unknown command %q (clusterkit help lists the commands; a node is configured by environment variables, see README.md)", args[0]))
	}
	return r.runCmd(ctx, c, g, rest)
}

// lookup finds the command that args start with. For a group name with
// no (or an unknown) subcommand it returns the group.
func lookup(args []string) (c *cmd, rest []string, group string) {
	all := commands()
	if len(args) >= 2 && args[0] == "kv" && args[1] == "delete" {
		args = append([]string{"kv", "del"}, args[2:]...) // the API's name for it
	}
	if len(args) >= 2 {
		for _, c := range all {
			if c.name == args[0]+" "+args[1] {
				return c, args[2:], ""
			}
		}
	}
	for _, c := range all {
		if c.name == args[0] {
			return c, args[1:], ""
		}
	}
	if _, ok := groupSummary(args[0]); ok {
		return nil, args[1:], args[0]
	}
	return nil, nil, ""
}

func (r *runner) runCmd(ctx context.Context, c *cmd, g globals, args []string) int {
	own := newFlagSet(c.name)
	runFn := c.setup(own)
	fs := newFlagSet(c.name)
	own.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	g.register(fs)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		r.printUsage(r.stdout, c, own)
		return ExitOK
	}
	if err != nil {
		return r.fail(usagef("%s: %v (clusterkit help %s)", c.name, err, c.name))
	}
	e, err := newEnv(r, g)
	if err != nil {
		return r.fail(err)
	}
	defer e.close()
	if !c.stream {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	if err := runFn(ctx, e, pos); err != nil {
		return r.fail(err)
	}
	return ExitOK
}

// fail prints err's one error line and returns its exit code.
func (r *runner) fail(err error) int {
	code, name := classify(err)
	fmt.Fprintf(r.stderr, "clusterkit: %s (%s)\n", message(err), name)
	return code
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseInterspersed parses fs's flags wherever they stand among the
// positional arguments (clusterkit kv set k v -ttl 30s), which the flag
// package alone does not: it stops at the first positional one. After
// "--" everything is positional (kv set -- k -1).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := args[:len(args)-len(rest)]; len(used) > 0 && used[len(used)-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, nil
}

func (r *runner) help(ctx context.Context, args []string) int {
	if len(args) == 0 {
		r.printHelp()
		return ExitOK
	}
	for _, x := range r.extra {
		if x.Name == args[0] {
			// Some of them exit 2 after -h, as the flag package's
			// default does; asking for help is no usage error.
			x.Run(ctx, []string{"-h"}, r.stdout, r.stderr)
			return ExitOK
		}
	}
	if args[0] == "exit-codes" {
		printExitCodes(r.stdout)
		return ExitOK
	}
	c, rest, group := lookup(args)
	switch {
	case c != nil && len(rest) == 0:
		own := newFlagSet(c.name)
		c.setup(own)
		r.printUsage(r.stdout, c, own)
		return ExitOK
	case group != "" && len(rest) == 0:
		r.printGroup(r.stdout, group)
		return ExitOK
	}
	return r.fail(usagef("no help for %q: no such command (clusterkit help lists them)", strings.Join(args, " ")))
}

func (r *runner) printHelp() {
	w := tabwriter.NewWriter(r.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "Usage: clusterkit [COMMAND] [flags] [args]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Without a command, clusterkit runs a node, configured by environment variables (see README.md).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %s %s\t%s\n", c.name, c.args, c.summary)
	}
	for _, x := range r.extra {
		fmt.Fprintf(w, "  %s %s\t%s\n", x.Name, x.Args, x.Summary)
	}
	fmt.Fprintf(w, "  help [COMMAND]\t%s\n", "this list, or a command's usage and flags")
	fmt.Fprintf(w, "  help exit-codes\t%s\n", "what each exit code means")
	w.Flush()
	fmt.Fprintln(r.stdout)
	fmt.Fprintln(r.stdout, "Global flags (every command, before or after its arguments):")
	gfs := newFlagSet("clusterkit")
	g := defaultGlobals(r.getenv)
	g.register(gfs)
	gfs.SetOutput(r.stdout)
	gfs.PrintDefaults()
}

func (r *runner) printGroup(w io.Writer, group string) {
	fmt.Fprintf(w, "Usage: clusterkit %s COMMAND [flags] [args]\n\n%s.\n\nCommands:\n", group, upperFirst(must(groupSummary(group))))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands() {
		if strings.HasPrefix(c.name, group+" ") {
			fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.summary)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\nclusterkit help %s COMMAND shows a command's flags.\n", group)
}

func (r *runner) printUsage(w io.Writer, c *cmd, own *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: clusterkit %s [flags] %s\n\n%s.\n", c.name, c.args, upperFirst(c.summary))
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	var n int
	own.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nFlags:")
		own.SetOutput(w)
		own.PrintDefaults()
	}
	fmt.Fprintln(w, "\nGlobal flags: -addr, -token, -tls, -tls-ca, -tls-cert, -tls-key, -timeout, -json (clusterkit help).")
	fmt.Fprintln(w, "Flags may come before or after the arguments; after -- everything is an argument.")
	fmt.Fprintln(w, "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 condition failed, 5 unavailable, 6 outcome unknown, 7 unauthorized.")
}

func printExitCodes(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rows := map[int]string{
		ExitOK:           "success (a read found the key)",
		ExitError:        "any other error",
		ExitUsage:        "usage error: bad flags or arguments",
		ExitNotFound:     "the key (or token, member) does not exist",
		ExitCondition:    "a condition did not hold (or an atomic batch was aborted); nothing was written",
		ExitUnavailable:  "the cluster cannot serve it now (unavailable, not_enough_replicas, timeout); not applied, retry",
		ExitUnknown:      "outcome unknown: a write may or may not have been applied; read to find out",
		ExitUnauthorized: "unauthorized or forbidden: a token is missing, unknown, or does not cover the request",
	}
	codes := make([]int, 0, len(rows))
	for c := range rows {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	fmt.Fprintln(tw, "CODE\tMEANING")
	for _, c := range codes {
		fmt.Fprintf(tw, "%d\t%s\n", c, rows[c])
	}
	tw.Flush()
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func must(s string, _ bool) string { return s }
