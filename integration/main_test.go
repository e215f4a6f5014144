// Package integration runs the clusterkit binary as real OS processes on
// loopback and checks the user-facing contract and the failure behaviour
// end to end.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/clusterkit/clusterkit/internal/testcluster"
)

// binary is the clusterkit executable built once for all tests here.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "clusterkit-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = testcluster.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
