// Package integration runs the clusterkit binary as real OS processes on
// loopback and checks the user-facing contract and the failure behaviour
// end to end.
package integration

import (
	"testing"

	"github.com/clusterkit/clusterkit/internal/testcluster"
)

// binary is the clusterkit executable built once for all tests here.
var binary string

func TestMain(m *testing.M) { testcluster.Main(m, &binary) }
