package ui

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/clusterkit/clusterkit/internal/testcluster"
)

// binary is the clusterkit executable, built once in TestMain when the browser test will run.
var binary string

// TestMain builds the clusterkit binary for the browser test, but only when that test can run: the
// handler's unit tests need neither, and building with -race takes a while.
func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() || (findBrowser() == "" && !browserRequired()) {
		os.Exit(m.Run())
	}
	testcluster.Main(m, &binary)
}

func browserRequired() bool { return os.Getenv("CLUSTERKIT_REQUIRE_BROWSER") == "1" }

// findBrowser returns the Chromium to drive: $CLUSTERKIT_BROWSER when it is set (and "" when that
// is not an executable), else the first of the usual names on $PATH, else "".
func findBrowser() string {
	if p := os.Getenv("CLUSTERKIT_BROWSER"); p != "" {
		if p, err := exec.LookPath(p); err == nil {
			return p
		}
		return ""
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

func artifactDir(t *testing.T) string {
	// CLUSTERKIT_ARTIFACTS is where every suite keeps what a run leaves
	// (the nemesis suite's failed histories too); the screenshots go in
	// their own directory under it.
	dir := filepath.Join(os.TempDir(), "ui-screenshots")
	if base := os.Getenv("CLUSTERKIT_ARTIFACTS"); base != "" && !slices.Contains([]string{"1", "true", "yes"}, strings.ToLower(base)) {
		dir = filepath.Join(base, "ui-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts directory: %v", err)
	}
	return dir
}

// browser is one headless Chromium tab for a test.
type browser struct {
	t   *testing.T
	ctx context.Context // the tab's context; steps derive their own timeouts from it
	dir string          // where screenshots go
}

func newBrowser(t *testing.T) *browser {
	path := findBrowser()
	if path == "" {
		msg := "no Chromium found (looked for $CLUSTERKIT_BROWSER, chromium, chromium-browser, google-chrome, headless_shell on $PATH); install Debian's chromium to run the dashboard browser test"
		if browserRequired() {
			t.Fatal(msg + " (CLUSTERKIT_REQUIRE_BROWSER=1)")
		}
		t.Skip(msg)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root, where Chromium's sandbox refuses to start
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1280, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)
	// The first action starts the browser; it must not run under a timeout, which would end the
	// browser with it, so the start is bounded by a watchdog instead.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start %s: %v", path, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("start %s: no answer within 30s", path)
	}
	return &browser{t: t, ctx: ctx, dir: artifactDir(t)}
}

// do runs steps with a timeout.
func (b *browser) do(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.fail(what, err)
	}
}

// eval returns the value of a JavaScript expression.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.fail("evaluate "+expr, err)
	}
	return v
}

// waitFor polls a JavaScript predicate over the page's DOM until it is true, and fails the test
// with what the page shows if it is not within timeout.
func (b *browser) waitFor(what, predicate string, timeout time.Duration) time.Duration {
	b.t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(b.ctx, timeout+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](predicate,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		b.fail(what, err)
	}
	return time.Since(start)
}

func (b *browser) fail(what string, err error) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	text, terr := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if terr != nil {
		text = "(page text unavailable: " + terr.Error() + ")"
	}
	b.screenshot("failure")
	b.t.Fatalf("%s: %v\npage shows:\n%s", what, err, text)
}

// screenshot writes a full-page PNG into the artifacts directory and returns its path.
func (b *browser) screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 = PNG
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	path := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	b.t.Logf("screenshot %s: %s (%d KB)", name, path, len(png)/1024)
	return path
}

// TestDashboard drives the dashboard of a real 3-node cluster in headless Chromium: the live view
// of a healthy cluster, the admin token prompt, phone width, and a node killed while the page is
// open (seen without a reload), then the page's own node going away (stale data, kept visible).
func TestDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and a browser")
	}
	b := newBrowser(t)
	if binary == "" {
		t.Fatal("the clusterkit binary was not built (TestMain)")
	}
	const adminToken = "ui-test-admin-token-0123456789"
	c := testcluster.New(t, binary, 3, testcluster.Options{Env: []string{
		"ADMIN_TOKEN=" + adminToken, "STATUS_INTERVAL=0", "FAILOVER_GRACE=1s",
	}})
	c.Start()
	c.WaitHealthy(40*time.Second, 3, 3)
	n1 := c.Nodes[0]
	url := "http://" + n1.HTTP + "/ui/"

	b.do("open "+url, 15*time.Second, chromedp.Navigate(url))
	// A marker that a reload would wipe: the checks after the kill prove the page updated itself.
	eval[bool](b, `window.__notReloaded = true`)

	took := b.waitFor("three active, reachable nodes and 16 partitions", `
		document.querySelectorAll('#nodes tr[data-status="active"][data-reachable="true"]').length === 3 &&
		document.querySelectorAll('#partitions li[data-partition]').length === 16 &&
		document.querySelector('#conn').dataset.state === 'ok'`, 15*time.Second)
	t.Logf("dashboard showed 3 active nodes and 16 partitions after %v", took.Round(time.Millisecond))
	// Wait out an election or failover that the health banner may still show as settling.
	b.waitFor("healthy banner and a leader", `
		document.querySelector('#health').dataset.state === 'healthy' &&
		/Raft leader: node-\d/.test(document.querySelector('#leader-line').textContent) &&
		document.querySelectorAll('#partitions li[data-state="stable"]').length === 16`, 15*time.Second)
	if got := eval[string](b, `document.querySelector('#served-by').textContent`); got != n1.ID {
		t.Errorf("served by %q, want %s", got, n1.ID)
	}

	// Some traffic, so that the page has request rates to compute from successive counters.
	trafficCtx, stopTraffic := context.WithCancel(t.Context())
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for i := 0; trafficCtx.Err() == nil; i++ {
			n := c.Nodes[i%len(c.Nodes)]
			_, _ = testcluster.Set(trafficCtx, n.KV, fmt.Sprintf("ui-test/%d", i), "v")
			time.Sleep(20 * time.Millisecond)
		}
	}()
	b.waitFor("request rates above zero", `
		Array.from(document.querySelectorAll('#nodes td[data-label="Requests/s"]')).some(td => parseFloat(td.textContent) > 0)`,
		10*time.Second)

	t.Run("admin token prompt", func(t *testing.T) {
		b := &browser{t: t, ctx: b.ctx, dir: b.dir}
		b.waitFor("the token form for /tokens", `!document.querySelector('#token-form').hidden`, 10*time.Second)
		if n := eval[int](b, `document.querySelectorAll('#tokens tr[data-token-id]').length`); n != 0 {
			t.Fatalf("%d tokens listed before a token was given", n)
		}
		if typ := eval[string](b, `document.querySelector('#token-input').type`); typ != "password" {
			t.Errorf("token input type %q, want password", typ)
		}
		b.do("enter the token", 10*time.Second,
			chromedp.SendKeys(chromedp.ID("token-input"), adminToken),
			chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`)))
		b.waitFor("the token list and keyring", `
			document.querySelectorAll('#tokens tr[data-token-id]').length >= 1 &&
			document.querySelectorAll('#keyring tr[data-fingerprint]').length >= 1 &&
			document.querySelector('#token-form').hidden`, 10*time.Second)
		if got := eval[string](b, `sessionStorage.getItem('clusterkit.adminToken') || ''`); got != adminToken {
			t.Errorf("sessionStorage holds %q, want the token", got)
		}
		if got := eval[string](b, `localStorage.length + ' ' + document.cookie`); got != "0 " {
			t.Errorf("token kept beyond sessionStorage: localStorage/cookie %q", got)
		}
		urls := eval[[]string](b, `[location.href, ...performance.getEntriesByType('resource').map(e => e.name)]`)
		for _, u := range urls {
			if strings.Contains(u, adminToken) {
				t.Errorf("the token appears in a URL: %s", u)
			}
		}
		if len(urls) < 4 {
			t.Errorf("saw only %d URLs, want the page's requests too: %v", len(urls), urls)
		}
	})

	// A partition's details, by keyboard: focus its cell and press Enter.
	b.do("select partition-5", 10*time.Second,
		chromedp.Focus(chromedp.CSS(`#partitions button[data-id="partition-5"]`)),
		chromedp.KeyEvent("\r"))
	b.waitFor("partition-5 details", `
		document.querySelector('#part-detail dl') !== null &&
		document.querySelector('#part-detail').textContent.includes('partition-5') &&
		document.querySelector('#partitions button[data-id="partition-5"]').getAttribute('aria-pressed') === 'true' &&
		document.activeElement && document.activeElement.dataset.id === 'partition-5'`, 5*time.Second)

	before := b.screenshot("dashboard-3-nodes")
	stopTraffic()
	<-trafficDone

	t.Run("phone width", func(t *testing.T) {
		b := &browser{t: t, ctx: b.ctx, dir: b.dir}
		b.do("phone viewport", 10*time.Second, chromedp.EmulateViewport(375, 812, chromedp.EmulateMobile))
		defer b.do("desktop viewport", 10*time.Second, chromedp.EmulateViewport(1280, 900))
		// Let the layout settle at the new width (and one poll re-render it).
		b.waitFor("phone layout", `window.innerWidth === 375`, 5*time.Second)
		time.Sleep(2500 * time.Millisecond)
		width := eval[int](b, `document.scrollingElement.scrollWidth`)
		// Find what sticks out, for the failure message.
		wide := eval[[]string](b, `Array.from(document.querySelectorAll('body *'))
			.filter(e => e.getBoundingClientRect().right > 377)
			.slice(0, 5).map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))`)
		if width > 375+2 {
			t.Errorf("page is %d px wide at a 375 px viewport (horizontal overflow); widest: %v", width, wide)
		}
		b.screenshot("dashboard-phone")
	})

	killed := c.Nodes[2]
	killed.Kill()
	start := time.Now()
	took = b.waitFor(killed.ID+" shown down", fmt.Sprintf(`(() => {
		const r = document.querySelector('#nodes tr[data-node=%q]');
		return r && (r.dataset.reachable === 'false' || r.dataset.status === 'dead') &&
			/not reachable|dead/.test(r.textContent);
	})()`, killed.ID), 10*time.Second)
	t.Logf("%s shown down %v after SIGKILL", killed.ID, took.Round(time.Millisecond))
	if !eval[bool](b, `window.__notReloaded === true`) {
		t.Error("the page was reloaded")
	}
	// The other two stay up and the banner stops saying healthy.
	b.waitFor("degraded banner", `
		document.querySelector('#health').dataset.state !== 'healthy' &&
		document.querySelectorAll('#nodes tr[data-reachable="true"]').length === 2`, 10*time.Second)
	after := b.screenshot("dashboard-node-3-killed")
	t.Logf("node-3 down after %v; screenshots: %s, %s", time.Since(start).Round(time.Millisecond), before, after)

	t.Run("stale when this node is gone", func(t *testing.T) {
		b := &browser{t: t, ctx: b.ctx, dir: b.dir}
		n1.Kill()
		b.waitFor("cannot reach this node", `
			document.querySelector('#conn').textContent === 'cannot reach this node' &&
			!document.querySelector('#stale').hidden &&
			document.body.classList.contains('is-stale')`, 10*time.Second)
		// The last data stays visible.
		if n := eval[int](b, `document.querySelectorAll('#partitions li[data-partition]').length`); n != 16 {
			t.Errorf("%d partitions visible after the node went away, want the last 16", n)
		}
		if msg := eval[string](b, `document.querySelector('#stale').textContent`); !strings.Contains(msg, "stale") {
			t.Errorf("stale banner %q does not say the data is stale", msg)
		}
		b.screenshot("dashboard-unreachable")
	})
}
