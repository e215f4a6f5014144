package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/clusterkit/clusterkit/client"
	"github.com/clusterkit/clusterkit/internal/testcluster"
)

func TestParseInterspersed(t *testing.T) {
	cases := []struct {
		args    []string
		pos     []string
		ttl     string
		prev    bool
		wantErr bool
	}{
		{args: []string{"k", "v"}, pos: []string{"k", "v"}},
		{args: []string{"-ttl", "30s", "k", "v"}, pos: []string{"k", "v"}, ttl: "30s"},
		{args: []string{"k", "v", "-ttl", "30s"}, pos: []string{"k", "v"}, ttl: "30s"},
		{args: []string{"k", "-prev", "v", "-ttl=1m"}, pos: []string{"k", "v"}, ttl: "1m", prev: true},
		{args: []string{"k", "--", "-v"}, pos: []string{"k", "-v"}},
		{args: []string{"--", "-k", "-ttl", "1s"}, pos: []string{"-k", "-ttl", "1s"}},
		{args: []string{"k", "-", "-prev"}, pos: []string{"k", "-"}, prev: true},
		{args: []string{"k", "v", "-nope"}, wantErr: true},
		{args: []string{"k", "v", "-ttl"}, wantErr: true},
		{args: nil, pos: nil},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			fs := newFlagSet("test")
			ttl := fs.String("ttl", "", "")
			prev := fs.Bool("prev", false, "")
			pos, err := parseInterspersed(fs, c.args)
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v, want error: %t", err, c.wantErr)
			}
			if c.wantErr {
				return
			}
			if !reflect.DeepEqual(pos, c.pos) || *ttl != c.ttl || *prev != c.prev {
				t.Fatalf("got pos %q ttl %q prev %t, want %q %q %t", pos, *ttl, *prev, c.pos, c.ttl, c.prev)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	cases := []struct {
		name string
		err  error
		code int
		tag  string
	}{
		{"nil", nil, ExitOK, ""},
		{"usage", usagef("bad"), ExitUsage, "usage"},
		{"not found", &client.Error{Status: 404, Code: "key_not_found"}, ExitNotFound, "key_not_found"},
		{"route not found", &client.Error{Status: 404, Code: "not_found"}, ExitNotFound, "not_found"},
		{"condition", &client.Error{Status: 409, Code: "condition_failed"}, ExitCondition, "condition_failed"},
		{"aborted", &client.Error{Status: 409, Code: "aborted"}, ExitCondition, "aborted"},
		{"unavailable", &client.Error{Status: 503, Code: "unavailable"}, ExitUnavailable, "unavailable"},
		{"not enough replicas", &client.Error{Status: 503, Code: "not_enough_replicas"}, ExitUnavailable, "not_enough_replicas"},
		{"no leader", &client.Error{Status: 503, Code: "no_leader"}, ExitUnavailable, "no_leader"},
		{"request timeout", &client.Error{Status: 408, Code: "request_timeout"}, ExitUnavailable, "request_timeout"},
		{"outcome unknown", &client.Error{Status: 503, Code: "outcome_unknown"}, ExitUnknown, "outcome_unknown"},
		{"unauthorized", &client.Error{Status: 401, Code: "unauthorized"}, ExitUnauthorized, "unauthorized"},
		{"forbidden", &client.Error{Status: 403, Code: "forbidden"}, ExitUnauthorized, "forbidden"},
		{"bad request", &client.Error{Status: 400, Code: "invalid_ttl"}, ExitError, "invalid_ttl"},
		{"conflict", &client.Error{Status: 409, Code: "conflict"}, ExitError, "conflict"},
		{"unknown code 503", &client.Error{Status: 503, Code: "something_new"}, ExitUnavailable, "something_new"},
		{"wrapped", fmt.Errorf("get: %w", &client.Error{Status: 404, Code: "key_not_found"}), ExitNotFound, "key_not_found"},
		{"read deadline", fmt.Errorf("get: %w", context.DeadlineExceeded), ExitUnavailable, "timeout"},
		{"write deadline", asWrite(fmt.Errorf("set: %w", context.DeadlineExceeded)), ExitUnknown, "outcome_unknown"},
		{"write refused up front", asWrite(&client.Error{Status: 503, Code: "unavailable"}), ExitUnavailable, "unavailable"},
		{"interrupted read", context.Canceled, ExitError, "interrupted"},
		{"plain", errors.New("boom"), ExitError, "error"},
		{"explicit", &exitError{code: ExitNotFound, name: "key_not_found", msg: "x"}, ExitNotFound, "key_not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, tag := classify(c.err)
			if code != c.code || tag != c.tag {
				t.Fatalf("classify = %d %q, want %d %q", code, tag, c.code, c.tag)
			}
			if ExitCode(c.err) != c.code {
				t.Fatalf("ExitCode = %d, want %d", ExitCode(c.err), c.code)
			}
		})
	}
}

func TestErrorLine(t *testing.T) {
	var out, errw bytes.Buffer
	r := &runner{stdout: &out, stderr: &errw, getenv: func(string) string { return "" }}
	err := fmt.Errorf("set %q: %w", "k", &client.Error{Status: 409, Code: "condition_failed", Message: "the condition does not hold",
		CurrentRevision: 12, Exists: true, Node: "127.0.0.1:9080"})
	if code := r.fail(err); code != ExitCondition {
		t.Fatalf("exit %d, want %d", code, ExitCondition)
	}
	want := `clusterkit: set "k": the condition does not hold: the key is at revision 12 (condition_failed)` + "\n"
	if errw.String() != want {
		t.Fatalf("error line\n%q, want\n%q", errw.String(), want)
	}
}

// runLocal runs a command line that must fail or finish before it needs a
// node: -addr points at a port nothing listens on.
func runLocal(args ...string) (string, string, int) {
	var out, errw testcluster.SyncBuffer
	r := &runner{stdin: strings.NewReader(""), stdout: &out, stderr: &errw, getenv: func(string) string { return "" }}
	code := r.run(context.Background(), append([]string{"-addr", "127.0.0.1:1"}, args...))
	return out.String(), errw.String(), code
}

func TestCommandLine(t *testing.T) {
	cases := []struct {
		args   []string
		code   int
		stdout string // a substring
		stderr string
	}{
		{args: []string{"help"}, code: 0, stdout: "kv watch [KEY]"},
		{args: []string{"-h"}, code: 0, stdout: "token create SCOPE..."},
		{args: []string{"--help"}, code: 0, stdout: "Global flags"},
		{args: []string{}, code: 2, stdout: "Commands:"},
		{args: []string{"help", "kv", "set"}, code: 0, stdout: "-if-revision N"},
		{args: []string{"help", "kv"}, code: 0, stdout: "kv expire KEY TTL"},
		{args: []string{"help", "exit-codes"}, code: 0, stdout: "outcome unknown"},
		{args: []string{"help", "nosuch"}, code: 2, stderr: "no such command"},
		{args: []string{"kv", "set", "-h"}, code: 0, stdout: "Usage: clusterkit kv set [flags] KEY VALUE"},
		{args: []string{"kv", "scan", "--help"}, code: 0, stdout: "-cursor"},
		{args: []string{"status", "-h"}, code: 0, stdout: "Usage: clusterkit status"},
		{args: []string{"kv"}, code: 2, stdout: "kv get KEY"},
		{args: []string{"kv", "nosuch"}, code: 2, stderr: `unknown command "kv nosuch"`},
		{args: []string{"nosuch"}, code: 2, stderr: `clusterkit: unknown command "nosuch"`},
		{args: []string{"kv", "get"}, code: 2, stderr: "want KEY, got 0 argument(s) (usage)"},
		{args: []string{"kv", "get", "a", "b"}, code: 2, stderr: "(usage)"},
		{args: []string{"kv", "set", "k"}, code: 2, stderr: "want KEY VALUE"},
		{args: []string{"kv", "set", "k", "v", "-ttl", "soon"}, code: 2, stderr: "invalid value"},
		{args: []string{"kv", "set", "k", "v", "-if-revision", "-1"}, code: 2, stderr: "non-negative"},
		{args: []string{"kv", "set", "k", "v", "-if-absent", "-if-exists"}, code: 2, stderr: "contradict"},
		{args: []string{"kv", "set", "k", "v", "-ttl", "1m", "-keep-ttl"}, code: 2, stderr: "contradict"},
		{args: []string{"kv", "get", "k", "-stale", "-consistency", "linearizable"}, code: 2, stderr: "contradict"},
		{args: []string{"kv", "get", "k", "-consistency", "eventual"}, code: 2, stderr: "want linearizable or stale"},
		{args: []string{"kv", "expire", "k", "soon"}, code: 2, stderr: "TTL"},
		{args: []string{"kv", "scan", "p", "-prefix", "q"}, code: 2, stderr: "not both"},
		{args: []string{"kv", "scan", "-prefix", "p", "-start", "a"}, code: 2, stderr: "not both"},
		{args: []string{"kv", "watch", "k", "-prefix", "p"}, code: 2, stderr: "not both"},
		{args: []string{"kv", "batch"}, code: 2, stderr: "empty"},
		{args: []string{"token", "create"}, code: 2, stderr: "SCOPE"},
		{args: []string{"-timeout", "0", "members"}, code: 2, stderr: "-timeout"},
		{args: []string{"-addr", "", "members"}, code: 2, stderr: "-addr is empty"},
		{args: []string{"members", "-tls-cert", "x.pem"}, code: 2, stderr: "go together"},
		// No node at 127.0.0.1:1: the cluster cannot serve it.
		{args: []string{"members"}, code: 5, stderr: "(unavailable)"},
		{args: []string{"kv", "get", "k"}, code: 5, stderr: "clusterkit: connect to 127.0.0.1:1"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			out, errw, code := runLocal(c.args...)
			if code != c.code || !strings.Contains(out, c.stdout) || !strings.Contains(errw, c.stderr) {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s\nwant stdout ~ %q, stderr ~ %q", code, c.code, out, errw, c.stdout, c.stderr)
			}
			if code != 0 && c.stderr != "" && strings.Count(errw, "\n") != 1 {
				t.Fatalf("want one error line, got %q", errw)
			}
		})
	}
}

// TestEveryCommandHasHelp checks that each command's usage parses and
// that every group and command shows up in the help list.
func TestEveryCommandHasHelp(t *testing.T) {
	out, _, code := runLocal("help")
	if code != 0 {
		t.Fatalf("help exit %d", code)
	}
	for _, c := range commands() {
		if !strings.Contains(out, "  "+c.name+" ") {
			t.Errorf("help does not list %q", c.name)
		}
		usage, _, code := runLocal(append(strings.Fields(c.name), "-h")...)
		if code != 0 || !strings.Contains(usage, "Usage: clusterkit "+c.name) {
			t.Errorf("%s -h: exit %d\n%s", c.name, code, usage)
		}
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		c.setup(fs)
		fs.VisitAll(func(f *flag.Flag) {
			switch f.Name {
			case "addr", "token", "tls", "tls-ca", "tls-cert", "tls-key", "timeout", "json":
				t.Errorf("%s defines the global flag -%s itself", c.name, f.Name)
			}
		})
	}
}

func TestParseBatch(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		ops     []client.Op
		atomic  bool
		wantErr string
	}{
		{name: "body", in: `{"ops":[{"op":"set","key":"a","value":"1","ttl":"30s","if_revision":0},{"op":"get","key":"b","consistency":"stale"}],"atomic":true}`,
			ops: []client.Op{{Op: "set", Key: "a", Value: "1", TTL: 30e9, IfRevision: client.Rev(0)}, {Op: "get", Key: "b", Consistency: client.Stale}}, atomic: true},
		{name: "array", in: `[{"op":"delete","key":"a","if_exists":true,"prev":true}]`,
			ops: []client.Op{{Op: "delete", Key: "a", IfExists: true, Prev: true}}},
		{name: "del alias", in: `[{"op":"del","key":"a"}]`, ops: []client.Op{{Op: "delete", Key: "a"}}},
		{name: "empty value is a value", in: `[{"op":"set","key":"a","value":""}]`, ops: []client.Op{{Op: "set", Key: "a"}}},
		{name: "empty", in: "  ", wantErr: "empty"},
		{name: "no ops", in: `{"ops":[]}`, wantErr: "no ops"},
		{name: "unknown field", in: `[{"op":"set","key":"a","value":"1","if_revison":3}]`, wantErr: "if_revison"},
		{name: "bad op", in: `[{"op":"put","key":"a"}]`, wantErr: "want set, get or delete"},
		{name: "no key", in: `[{"op":"get"}]`, wantErr: "no key"},
		{name: "set without value", in: `[{"op":"set","key":"a"}]`, wantErr: "needs a value"},
		{name: "bad ttl", in: `[{"op":"set","key":"a","value":"1","ttl":"soon"}]`, wantErr: "ttl"},
		{name: "not json", in: `set a 1`, wantErr: "batch input"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in, ops, err := parseBatch([]byte(c.in))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || ExitCode(err) != ExitUsage {
					t.Fatalf("err = %v, want a usage error containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ops, c.ops) || in.Atomic != c.atomic {
				t.Fatalf("ops %+v atomic %t, want %+v %t", ops, in.Atomic, c.ops, c.atomic)
			}
		})
	}
}

func TestQuoteIfNeeded(t *testing.T) {
	for in, want := range map[string]string{
		"Alice": "Alice", "two words": "two words", "": `""`, " pad": `" pad"`, "a\nb": `"a\nb"`, `say "hi"`: `"say \"hi\""`,
	} {
		if got := quoteIfNeeded(in); got != want {
			t.Errorf("quoteIfNeeded(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestGlobalsFromEnv(t *testing.T) {
	env := map[string]string{"CLUSTERKIT_ADDR": "a:1,b:2", "CLUSTERKIT_TOKEN": "tok", "CLUSTERKIT_TLS": "1", "CLUSTERKIT_TIMEOUT": "3s"}
	g := defaultGlobals(func(k string) string { return env[k] })
	if !reflect.DeepEqual(g.addrs(), []string{"a:1", "b:2"}) || g.token != "tok" || !g.useTLS || g.timeout.String() != "3s" {
		t.Fatalf("globals %+v", g)
	}
	// A flag beats the environment.
	fs := newFlagSet("x")
	g.register(fs)
	if err := fs.Parse([]string{"-addr", "c:3"}); err != nil || g.addr != "c:3" {
		t.Fatalf("addr %q err %v", g.addr, err)
	}
	if d := defaultGlobals(func(string) string { return "" }); d.addr != DefaultAddr || d.timeout != DefaultTimeout {
		t.Fatalf("defaults %+v", d)
	}
}
