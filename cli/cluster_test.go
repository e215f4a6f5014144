package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/internal/testcluster"
)

// binary is the clusterkit executable, built once for the tests that run
// it as a process and for the nodes.
var binary string

func TestMain(m *testing.M) { testcluster.Main(m, &binary) }

const adminToken = "cli-test-admin-token-0123456789"

// cluster is a running 3-node cluster and a way to run commands at it.
type cluster struct {
	c    *testcluster.Cluster
	addr string // every node's management address, comma-separated
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := testcluster.New(t, binary, 3, testcluster.Options{Env: []string{"ADMIN_TOKEN=" + adminToken}})
	c.Start()
	c.WaitHealthy(30*time.Second, 3, 3)
	var addrs []string
	for _, n := range c.Nodes {
		addrs = append(addrs, n.HTTP)
	}
	return &cluster{c: c, addr: strings.Join(addrs, ",")}
}

type result struct {
	out, err string
	code     int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.err)
}

// run runs a command line in-process against the cluster (through node-1
// only, so the client must find the rest), with stdin.
func (k *cluster) runIn(ctx context.Context, stdin string, args ...string) result {
	var out, errw testcluster.SyncBuffer
	r := &runner{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errw, getenv: func(string) string { return "" }}
	code := r.run(ctx, append([]string{"-addr", k.c.Nodes[0].HTTP}, args...))
	return result{out.String(), errw.String(), code}
}

func (k *cluster) run(args ...string) result { return k.runIn(context.Background(), "", args...) }

// want runs args and checks the exit code and that stdout holds every
// substring of outs.
func (k *cluster) want(t *testing.T, code int, args []string, outs ...string) result {
	t.Helper()
	r := k.run(args...)
	if r.code != code {
		t.Fatalf("clusterkit %s: %s", strings.Join(args, " "), r)
	}
	for _, o := range outs {
		if !strings.Contains(r.out, o) {
			t.Fatalf("clusterkit %s: stdout lacks %q: %s", strings.Join(args, " "), o, r)
		}
	}
	if code != 0 && (!strings.HasPrefix(r.err, "clusterkit: ") || strings.Count(r.err, "\n") != 1) {
		t.Fatalf("clusterkit %s: want one error line: %s", strings.Join(args, " "), r)
	}
	return r
}

func args(s string) []string { return strings.Fields(s) }

// TestAgainstCluster runs every command against one real 3-node cluster
// with an admin token. The subtests share it, so they run in order; leave
// comes last.
func TestAgainstCluster(t *testing.T) {
	k := startCluster(t)
	tok := "-token=" + adminToken

	t.Run("set get del with conditions", func(t *testing.T) {
		k.want(t, 0, args("kv set user:1 Alice"), "set user:1 (rev ")
		k.want(t, 0, args("kv get user:1"), "Alice\n")
		if r := k.run(args("kv get user:1")...); r.out != "Alice\n" {
			t.Fatalf("kv get prints %q, want the value and a newline", r.out)
		}
		r := k.want(t, 0, args("kv get user:1 -json"))
		var got struct {
			Key, Value string
			Revision   uint64
		}
		if err := json.Unmarshal([]byte(r.out), &got); err != nil || got.Value != "Alice" || got.Revision == 0 {
			t.Fatalf("kv get -json: %v %+v", err, got)
		}
		k.want(t, 0, args("kv get user:1 -stale"), "Alice")
		k.want(t, 3, args("kv get user:missing"))
		k.want(t, 4, args("kv set user:1 Bob -if-revision 0"))
		k.want(t, 4, args("kv set user:1 Bob -if-absent"))
		k.want(t, 4, []string{"kv", "set", "user:1", "Bob", "-if-revision", fmt.Sprint(got.Revision + 100)})
		// Flags after the arguments, and -prev.
		k.want(t, 0, []string{"kv", "set", "user:1", "Bob", "-if-revision", fmt.Sprint(got.Revision), "-prev"},
			"prev: Alice (rev "+fmt.Sprint(got.Revision)+")")
		k.want(t, 0, args("kv get user:1"), "Bob")
		k.want(t, 0, args("kv set user:2 new -if-absent -prev"), "prev: none")
		k.want(t, 4, args("kv del user:nope -if-exists"))
		k.want(t, 0, args("kv del user:nope"), "did not exist")
		k.want(t, 0, args("kv del user:2 -prev -if-exists"), "delete user:2 (rev ", "prev: new")
		k.want(t, 3, args("kv get user:2"))
		r = k.runIn(context.Background(), "from stdin\n", args("kv set user:3 -")...)
		if r.code != 0 {
			t.Fatal(r)
		}
		k.want(t, 0, args("kv get user:3"), "from stdin\n\n")
		r = k.want(t, 0, args("kv set user:4 four -json -prev"))
		var w map[string]any
		if err := json.Unmarshal([]byte(r.out), &w); err != nil || w["status"] != "success" || w["prev"] != nil {
			t.Fatalf("kv set -json: %v %v", err, w)
		}
		k.want(t, 0, args("kv set user:4 four -min-copies 3"))
		k.want(t, 1, args("kv set user:4 four -min-copies 9")) // more than the replication factor: a bad request
	})

	t.Run("ttl", func(t *testing.T) {
		k.want(t, 0, args("kv set lease:1 me -ttl 30s"), "expires ")
		r := k.want(t, 0, args("kv get lease:1 -json"))
		var got struct {
			ExpiresAt string `json:"expires_at"`
			TTLMillis int64  `json:"ttl_ms"`
		}
		if err := json.Unmarshal([]byte(r.out), &got); err != nil || got.ExpiresAt == "" || got.TTLMillis <= 20000 || got.TTLMillis > 30000 {
			t.Fatalf("kv get -json of a key with a TTL: %v %s", err, r.out)
		}
		k.want(t, 0, args("kv set lease:1 me2 -keep-ttl -json"), `"expires_at":"`+got.ExpiresAt+`"`)
		k.want(t, 0, args("kv expire lease:1 2s"), "expire lease:1 (rev ")
		k.want(t, 3, args("kv expire lease:missing 10s"))
		k.want(t, 0, args("kv get lease:1 -detailed"), "ttl:")
		testcluster.Eventually(t, 10*time.Second, "lease:1 expires", func() error {
			if r := k.run(args("kv get lease:1")...); r.code != 3 {
				return fmt.Errorf("still there: %s", r)
			}
			return nil
		})
		k.want(t, 0, args("kv set lease:2 x -ttl 1m"))
		k.want(t, 0, args("kv expire lease:2 0 -json"))
		if r := k.want(t, 0, args("kv get lease:2 -json")); strings.Contains(r.out, "expires_at") {
			t.Fatalf("expire 0 left a TTL: %s", r.out)
		}
	})

	t.Run("scan", func(t *testing.T) {
		for i := range 5 {
			k.want(t, 0, []string{"kv", "set", fmt.Sprintf("scan:%d", i), fmt.Sprintf("v%d", i)})
		}
		r := k.want(t, 0, args("kv scan scan: -limit 2"), "KEY", "scan:0", "scan:1")
		if strings.Contains(r.out, "scan:2") || !strings.Contains(r.err, "-cursor ") {
			t.Fatalf("one page of 2: %s", r)
		}
		cursor := strings.Fields(r.err[strings.Index(r.err, "-cursor ")+len("-cursor "):])[0]
		k.want(t, 0, []string{"kv", "scan", "-prefix", "scan:", "-limit", "2", "-cursor", cursor}, "scan:2", "scan:3")
		r = k.want(t, 0, args("kv scan -prefix scan: -limit 2 -all -json"))
		var page struct {
			Items []struct {
				Key   string
				Value *string
			}
			Count int
			Token string
		}
		if err := json.Unmarshal([]byte(r.out), &page); err != nil || page.Count != 5 || page.Token == "" || *page.Items[4].Value != "v4" {
			t.Fatalf("scan -all -json: %v %s", err, r.out)
		}
		r = k.want(t, 0, args("kv scan -start scan:1 -end scan:3 -values=false"), "scan:1", "scan:2")
		if strings.Contains(r.out, "scan:3") || strings.Contains(r.out, "v1") {
			t.Fatalf("range [scan:1, scan:3) without values: %s", r)
		}
		k.want(t, 0, args("kv list"), "scan:0")
		r = k.want(t, 0, args("kv list -node node-2 -json"))
		var l struct {
			Keys  []string
			Count int
		}
		if err := json.Unmarshal([]byte(r.out), &l); err != nil || l.Count < 5 {
			t.Fatalf("list -json: %v %s", err, r.out)
		}
	})

	t.Run("batch", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "ops.json")
		body := `{"ops":[{"op":"set","key":"b:1","value":"one"},{"op":"get","key":"user:1"},{"op":"delete","key":"b:3","if_exists":true}]}`
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		// The ops of a plain batch run in no promised order: the get
		// reads a key written before.
		r := k.want(t, 4, []string{"kv", "batch", file}, "set", "b:1", "= Bob (rev ", "condition_failed")
		if !strings.Contains(r.err, "op 2 (delete b:3)") {
			t.Fatalf("the error names the op: %s", r)
		}
		r = k.runIn(context.Background(), `[{"op":"set","key":"{t}:a","value":"1"},{"op":"get","key":"{t}:a"}]`, args("kv batch -atomic -json")...)
		var out struct {
			Count   int
			Results []map[string]any
		}
		if r.code != 0 || json.Unmarshal([]byte(r.out), &out) != nil || out.Count != 2 || out.Results[1]["value"] != "1" {
			t.Fatalf("atomic batch from stdin: %s", r)
		}
		r = k.runIn(context.Background(), `[{"op":"set","key":"{t}:a","value":"2"},{"op":"set","key":"{t}:b","value":"2","if_revision":7777}]`, args("kv batch -atomic")...)
		if r.code != 4 || !strings.Contains(r.out, "aborted") || !strings.Contains(r.err, "condition_failed") {
			t.Fatalf("aborted atomic batch: %s", r)
		}
		k.want(t, 0, args("kv get {t}:a"), "1\n")
		r = k.runIn(context.Background(), `[{"op":"set","key":"a","value":"1"},{"op":"set","key":"b","value":"2"}]`, args("kv batch -atomic")...)
		if r.code != 1 || !strings.Contains(r.err, "cross_partition") {
			t.Fatalf("cross-partition atomic batch: %s", r)
		}
	})

	t.Run("watch", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var out, errw testcluster.SyncBuffer
		done := make(chan int, 1)
		go func() {
			r := &runner{stdin: strings.NewReader(""), stdout: &out, stderr: &errw, getenv: func(string) string { return "" }}
			done <- r.run(ctx, []string{"-addr", k.c.Nodes[1].HTTP, "kv", "watch", "-prefix", "w:", "-progress", "-progress-interval", "200ms"})
		}()
		defer cancel()
		testcluster.Eventually(t, 10*time.Second, "the watch starts", func() error {
			if !strings.Contains(out.String(), "progress (token ") {
				return fmt.Errorf("stdout %q stderr %q", out.String(), errw.String())
			}
			return nil
		})
		k.want(t, 0, args("kv set w:1 hello"))
		k.want(t, 0, args("kv set other:1 unseen"))
		k.want(t, 0, args("kv del w:1"))
		testcluster.Eventually(t, 10*time.Second, "the events arrive", func() error {
			s := out.String()
			if !strings.Contains(s, "set w:1 = hello (rev ") || !strings.Contains(s, "delete w:1 (rev ") {
				return fmt.Errorf("stdout %q", s)
			}
			return nil
		})
		cancel()
		select {
		case code := <-done:
			if code != 0 || strings.Contains(out.String(), "other:1") {
				t.Fatalf("watch ended with %d\n%s\n%s", code, out.String(), errw.String())
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the watch did not end when its context was cancelled")
		}
	})

	t.Run("cluster views", func(t *testing.T) {
		k.want(t, 0, args("members"), "node-1", "node-2", "node-3", "Server-2", "active", "leader")
		r := k.want(t, 0, args("members -json"))
		var m struct {
			Members []struct{ ID, Status string }
			Count   int
			Leader  string
		}
		if err := json.Unmarshal([]byte(r.out), &m); err != nil || m.Count != 3 || m.Leader == "" {
			t.Fatalf("members -json: %v %s", err, r.out)
		}
		k.want(t, 0, args("partitions"), "partition-0", "partition-15", "node-1", "node-2", "node-3")
		r = k.want(t, 0, args("partitions -json"))
		var p struct{ Count int }
		if err := json.Unmarshal([]byte(r.out), &p); err != nil || p.Count != 16 {
			t.Fatalf("partitions -json: %v %s", err, r.out)
		}
		block := []string{"=== Cluster Status ===\n", "Cluster: my-app-cluster\n", "Total Nodes: 3\n", "Partitions: 16\n",
			"Raft State: ", "  - Server-1 (node-1) at " + k.c.Nodes[0].HTTP + " [active]\n",
			"  - Server-3 (node-3) at " + k.c.Nodes[2].HTTP + " [active]\n", "======================\n"}
		k.want(t, 0, args("status"), append(block, "Node: Server-1 (node-1)")...)
		k.want(t, 0, args("status node-2"), append(block, "Node: Server-2 (node-2)")...)
		k.want(t, 0, []string{"status", k.c.Nodes[2].HTTP}, append(block, "Node: Server-3 (node-3)")...)
		k.want(t, 0, args("status Server-3 -json"), `"node_id":"node-3"`)
		k.want(t, 3, args("status node-9"))
	})

	t.Run("tokens", func(t *testing.T) {
		k.want(t, 7, args("token create read:"))      // no token
		k.want(t, 7, args("token list -token wrong")) // unknown token
		r := k.want(t, 0, []string{"token", "create", tok, "-name", "ro", "read:"}, "token:   ck_")
		secret := strings.Fields(r.out[strings.Index(r.out, "token:"):])[1]
		id := strings.Fields(r.out[strings.Index(r.out, "id:"):])[1]
		k.want(t, 0, []string{"token", "list", tok}, id, "ro", "read:", "admin-token")
		r = k.want(t, 0, []string{"token", "list", tok, "-json"})
		var l struct {
			Tokens []struct{ ID string }
			Count  int
		}
		if err := json.Unmarshal([]byte(r.out), &l); err != nil || l.Count != 2 {
			t.Fatalf("token list -json: %v %s", err, r.out)
		}
		// A read-only token may not make tokens: forbidden.
		k.want(t, 7, []string{"token", "create", "-token", secret, "read:"})
		k.want(t, 0, []string{"token", "delete", tok, id}, "deleted token "+id)
		k.want(t, 3, []string{"token", "delete", tok, id})
		k.want(t, 0, []string{"kv-auth", "status", "-json"}, `{"required":false}`)
	})

	t.Run("keyring", func(t *testing.T) {
		fp := k.c.Key.Fingerprint()
		k.want(t, 0, []string{"keyring", "list", tok}, "FINGERPRINT", fp, "node-1,node-2,node-3")
		r := k.want(t, 0, []string{"keyring", "list", tok, "-json"})
		var v keyringView
		if err := json.Unmarshal([]byte(r.out), &v); err != nil || len(v.Keys) != 1 || len(v.Keys[0].PrimaryOn) != 3 {
			t.Fatalf("keyring list -json: %v %s", err, r.out)
		}
		k.want(t, 7, args("keyring list"))
	})

	t.Run("binary", func(t *testing.T) { testBinary(t, k) })

	t.Run("leave", func(t *testing.T) {
		n3 := k.c.Nodes[2]
		k.want(t, 7, args("leave node-3"))
		k.want(t, 0, []string{"leave", "node-3", "-wait", "-timeout", "30s", tok}, "node-3 has left the cluster")
		if !n3.WaitExit(30 * time.Second) {
			t.Fatal("node-3 was asked to leave but its process did not exit")
		}
		r := k.want(t, 0, args("members -json"))
		if strings.Contains(r.out, `"id":"node-3","name":"Server-3","status":"active"`) {
			t.Fatalf("node-3 still active: %s", r.out)
		}
		k.want(t, 0, args("kv get user:1"), "Bob")
	})
}

// testBinary runs the built binary: main.go's dispatch, exit codes, error
// lines, environment defaults, and SIGINT ending a watch with 0.
func testBinary(t *testing.T, k *cluster) {
	exe := func(env []string, a ...string) result {
		cmd := exec.Command(binary, a...)
		// The binary is built with -race, which sleeps 1 s at a clean exit
		// unless told not to.
		cmd.Env = append(os.Environ(), "CLUSTERKIT_ADDR="+k.addr, "GORACE=atexit_sleep_ms=0")
		cmd.Env = append(cmd.Env, env...)
		var out, errw testcluster.SyncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errw
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return result{out.String(), errw.String(), code}
	}
	cases := []struct {
		env  []string
		args []string
		code int
		out  string
		err  string
	}{
		{args: args("kv set bin:1 one"), code: 0, out: "set bin:1 (rev "},
		{args: args("kv get bin:1"), code: 0, out: "one\n"},
		{args: args("kv get bin:nope"), code: 3, err: "clusterkit: key \"bin:nope\" not found (key_not_found)\n"},
		{args: args("kv set bin:1 two -if-absent"), code: 4, err: "(condition_failed)\n"},
		{args: args("kv set bin:1"), code: 2, err: "(usage)\n"},
		{args: args("nosuch"), code: 2, err: "unknown command"},
		{args: args("token list"), code: 7, err: "(unauthorized)\n"},
		{env: []string{"CLUSTERKIT_TOKEN=" + adminToken}, args: args("token list"), code: 0, out: "admin-token"},
		{args: []string{"-addr", "127.0.0.1:1", "members"}, code: 5, err: "(unavailable)\n"},
		{args: args("help"), code: 0, out: "kv watch [KEY]"},
		{args: args("-h"), code: 0, out: "keygen"},
		{args: args("help bench"), code: 0, err: "-addrs"},
		{args: args("kv get -h"), code: 0, out: "Usage: clusterkit kv get"},
		{args: args("keygen"), code: 0},
		{args: args("members"), code: 0, out: "node-2"},
	}
	for _, c := range cases {
		r := exe(c.env, c.args...)
		if r.code != c.code || !strings.Contains(r.out, c.out) || !strings.Contains(r.err, c.err) {
			t.Errorf("clusterkit %s: %s\nwant exit %d, stdout ~ %q, stderr ~ %q", strings.Join(c.args, " "), r, c.code, c.out, c.err)
		}
	}

	// A watch ends with 0 on SIGINT.
	cmd := exec.Command(binary, "kv", "watch", "bin:w", "-json")
	cmd.Env = append(os.Environ(), "CLUSTERKIT_ADDR="+k.addr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errw testcluster.SyncBuffer
	cmd.Stderr = &errw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The watch has no "ready" line without -progress: keep writing
	// until an event shows up.
	deadline := time.After(15 * time.Second)
	var line string
wait:
	for i := 0; ; i++ {
		k.want(t, 0, []string{"kv", "set", "bin:w", fmt.Sprintf("v%d", i)})
		select {
		case line = <-lines:
			break wait
		case <-time.After(300 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no event from the watch; stderr: %s", errw.String())
		}
	}
	var ev struct{ Type, Key, Value string }
	if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Type != "set" || ev.Key != "bin:w" {
		t.Fatalf("watch -json line %q: %v", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("watch after SIGINT: %v; stderr: %s", err, errw.String())
	}
}
