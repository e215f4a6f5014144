package adversary

import (
	"testing"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// binary is the clusterkit executable built once for all tests here.
var binary string

func TestMain(m *testing.M) { tc.Main(m, &binary) }
