package adversary

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// TestWatchFlood: a stranger opening thousands of watch streams gets the
// node's documented maximum and a JSON 503 for the rest; the node keeps
// serving writes and reads, and the streams it holds still deliver.
func TestWatchFlood(t *testing.T) {
	const limit, flood = 1000, 1300
	c := start(t, 1, tc.Options{NoKey: true, Env: []string{fmt.Sprintf("MAX_WATCHERS=%d", limit)}})
	n := c.Nodes[0]
	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: flood, DisableCompression: true}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	type result struct {
		status int
		code   string
		body   *bufio.Reader
	}
	results := make([]result, flood)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range flood {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.KV+"/kv/watch?prefix=flood/", nil)
			resp, err := cl.Do(req)
			if err != nil {
				results[i] = result{status: -1, code: err.Error()}
				return
			}
			if resp.StatusCode != 200 {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				code := ""
				if i := strings.Index(string(b), `"code":"`); i >= 0 {
					code = strings.SplitN(string(b[i+8:]), `"`, 2)[0]
				}
				results[i] = result{status: resp.StatusCode, code: code}
				return
			}
			br := bufio.NewReader(resp.Body)
			// The stream is open once its first event arrives.
			if _, err := br.ReadString('\n'); err != nil {
				results[i] = result{status: -2, code: err.Error()}
				return
			}
			results[i] = result{status: 200, body: br}
		})
	}
	wg.Wait()
	open, refused := 0, 0
	var streams []*bufio.Reader
	for i, r := range results {
		switch {
		case r.status == 200:
			open++
			streams = append(streams, r.body)
		case r.status == 503 && r.code == errcode.TooManyWatchers:
			refused++
		default:
			t.Errorf("watch %d: status %d %s", i, r.status, r.code)
		}
	}
	if open != limit || refused != flood-limit {
		t.Fatalf("%d streams open and %d refused; want %d and %d", open, refused, limit, flood-limit)
	}
	// The node still works under the flood, and a held stream delivers.
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	r, err := tc.Set(wctx, n.KV, "flood/k", "v")
	if err != nil || r.Status != 200 {
		t.Fatalf("set under the flood: %v %d %s", err, r.Status, r.Body)
	}
	got := make(chan string, 1)
	go func() {
		for {
			line, err := streams[len(streams)/2].ReadString('\n')
			if err != nil {
				got <- err.Error()
				return
			}
			if strings.Contains(line, `"type":"set"`) {
				got <- line
				return
			}
		}
	}()
	select {
	case line := <-got:
		if !strings.Contains(line, `"key":"flood/k"`) {
			t.Errorf("held stream: %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Error("a held stream delivered nothing in 10s")
	}
	// Hanging up frees the slots.
	cancel()
	tr.CloseIdleConnections()
	tc.Eventually(t, 20*time.Second, "a watch after the flood left", func() error {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		req, _ := http.NewRequestWithContext(rctx, "GET", "http://"+n.KV+"/kv/watch?prefix=x", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}
