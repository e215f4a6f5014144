package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/internal/testcluster"
)

// instance is one running sessions process.
type instance struct {
	id, mgmt, http string
	cmd            *exec.Cmd
	log            *bytes.Buffer
}

// TestSessionsAcrossInstances builds the example and runs three instances
// as real processes on loopback: a session written through one instance is
// read through each of the others, and the primary, not the instance that
// took the request, stores it.
func TestSessionsAcrossInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs three processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sessions")
	build := exec.Command("go", "build", "-race", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ports, err := testcluster.FreePorts(15)
	if err != nil {
		t.Fatal(err)
	}
	var insts []*instance
	for i := range 3 {
		p := ports[i*5 : i*5+5]
		in := &instance{id: fmt.Sprintf("node-%d", i+1), mgmt: "127.0.0.1:" + strconv.Itoa(p[0]),
			http: "127.0.0.1:" + strconv.Itoa(p[4]), log: &bytes.Buffer{}}
		env := append(os.Environ(),
			"NODE_ID="+in.id, "HTTP_ADDR="+in.mgmt, "KV_ADDR=127.0.0.1:"+strconv.Itoa(p[1]),
			"RAFT_ADDR=127.0.0.1:"+strconv.Itoa(p[2]), "GOSSIP_ADDR=127.0.0.1:"+strconv.Itoa(p[3]),
			"DATA_DIR="+filepath.Join(dir, in.id), "SERVICES=http="+in.http, "STATUS_INTERVAL=0", "LOG_FORMAT=json")
		if i == 0 {
			env = append(env, "BOOTSTRAP=true")
		} else {
			env = append(env, "BOOTSTRAP=false", "JOIN_ADDR="+insts[0].mgmt)
		}
		in.cmd = exec.Command(bin)
		in.cmd.Env = env
		in.cmd.Stdout, in.cmd.Stderr = in.log, in.log
		if err := in.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = in.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = in.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				_ = in.cmd.Process.Kill()
				<-done
			}
			if t.Failed() {
				t.Logf("log of %s:\n%s", in.id, in.log.String())
			}
		})
		insts = append(insts, in)
	}

	hc := &http.Client{Timeout: 5 * time.Second}
	// Ready, and the rebalance after the joins finished: each instance
	// holds a copy of every partition (three nodes, replication factor 3)
	// and leads some (primaries move last, after the copies are in sync).
	waitUntil(t, 60*time.Second, "every instance ready, leading partitions, and the cluster healthy", func() bool {
		var stats struct {
			Primaries map[string]int `json:"partitions_per_node"`
		}
		if getJSON(hc, "http://"+insts[0].mgmt+"/partitions/stats", &stats) != nil {
			return false
		}
		for _, in := range insts {
			if stats.Primaries[in.id] == 0 {
				return false
			}
		}
		for _, in := range insts {
			resp, err := hc.Get("http://" + in.mgmt + "/ready")
			if err != nil {
				return false
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false
			}
		}
		var ov struct {
			Health struct{ State string } `json:"health"`
			Nodes  []json.RawMessage      `json:"nodes"`
		}
		return getJSON(hc, "http://"+insts[0].mgmt+"/cluster/overview", &ov) == nil && ov.Health.State == "healthy" && len(ov.Nodes) == 3
	})

	storedOn := map[string]bool{}
	for k := range 12 {
		id := fmt.Sprintf("user-%d", k)
		want := fmt.Sprintf(`{"cart":["book-%d"]}`, k)
		var put struct {
			StoredOn string `json:"stored_on"`
			Copies   int    `json:"copies"`
		}
		waitUntil(t, 10*time.Second, "PUT "+id+" through node-1", func() bool {
			return do(hc, http.MethodPut, "http://"+insts[0].http+"/sessions/"+id, want, &put) == nil
		})
		storedOn[put.StoredOn] = true
		for _, in := range insts[1:] {
			var got struct {
				Value    json.RawMessage `json:"value"`
				ServedBy string          `json:"served_by"`
			}
			if err := do(hc, http.MethodGet, "http://"+in.http+"/sessions/"+id, "", &got); err != nil {
				t.Fatalf("GET %s through %s: %v", id, in.id, err)
			}
			if string(got.Value) != want || got.ServedBy != put.StoredOn {
				t.Fatalf("GET %s through %s = %s served by %s, want %s served by %s", id, in.id, got.Value, got.ServedBy, want, put.StoredOn)
			}
		}
	}
	// Twelve keys over three balanced primaries: node-1 must have
	// forwarded some of them.
	if len(storedOn) < 2 {
		t.Errorf("every session was stored on %v: nothing was forwarded to another primary", storedOn)
	}
	var missing struct{ Code string }
	if err := do(hc, http.MethodGet, "http://"+insts[2].http+"/sessions/nobody", "", &missing); err == nil || missing.Code != "not_found" {
		t.Errorf("GET of a missing session: err=%v code=%q, want a 404 not_found", err, missing.Code)
	}
}

func getJSON(hc *http.Client, url string, v any) error { return do(hc, http.MethodGet, url, "", v) }

// do sends one request and decodes the JSON answer into v; a status other
// than 200 is an error (v is still decoded).
func do(hc *http.Client, method, url, body string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewBufferString(body))
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s %s: %d, undecodable: %w", method, url, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: status %d", method, url, resp.StatusCode)
	}
	return nil
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
