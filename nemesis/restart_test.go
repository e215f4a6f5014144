package nemesis

import (
	"fmt"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// TestRestartBootstrapNodeREADME restarts node-1 started as the README's
// quick start starts it (BOOTSTRAP=true and no JOIN_ADDR) after it was
// SIGKILLed and declared dead. The README promises that "a node restarted
// on its DATA_DIR rejoins under its NODE_ID". The scenarios avoid this
// setting (node-1 gets a JOIN_ADDR, as in deploy/docker-compose.yml; see
// -nemesis.readme-join), so this is its own test.
func TestRestartBootstrapNodeREADME(t *testing.T) {
	t.Parallel()
	release := acquire(3)
	defer release()
	netns := tc.NetnsSupport() == nil && !*flagLoopback
	c := tc.New(t, binary, 3, tc.Options{Env: nodeEnv, Netns: netns})
	c.Start()
	if err := tc.WaitConverged(c.Nodes, replicationFactor, 60*time.Second); err != nil {
		t.Fatalf("the fresh cluster did not settle: %v", err)
	}
	n1, n2 := c.Nodes[0], c.Nodes[1]
	killed := time.Now()
	n1.Kill()
	tc.Eventually(t, 20*time.Second, "node-1 declared dead", func() error {
		st, err := n2.State()
		if err != nil {
			return err
		}
		for _, m := range st.Nodes {
			if m.ID == n1.ID && m.Status == "dead" {
				return nil
			}
		}
		return fmt.Errorf("node-2 sees %v", st.Nodes)
	})
	t.Logf("node-2 sees node-1 dead %s after the SIGKILL; restarting node-1", time.Since(killed).Round(time.Millisecond))
	n1.Start()
	if err := tc.WaitConverged(c.Nodes, replicationFactor, 30*time.Second); err != nil {
		t.Errorf("node-1, restarted with the README's settings (BOOTSTRAP=true, no JOIN_ADDR) on its data directory, "+
			"did not rejoin within 30 s: %v", err)
	} else {
		t.Logf("node-1 rejoined; the cluster converged %s after the SIGKILL", time.Since(killed).Round(time.Millisecond))
	}
}
