package node

import (
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Limits on SERVICES: the whole node record travels in every gossip
// packet's metadata, which memberlist caps at 512 bytes.
const (
	MaxServices          = 8
	MaxServicesBytes     = 200
	maxServiceNameLength = 32
)

var serviceName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// ParseServices reads SERVICES: comma-separated name=host:port pairs, such
// as "http=127.0.0.1:7000,grpc=:7001". An empty string is no services.
func ParseServices(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, addr, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("SERVICES: %q: want name=host:port", item)
		}
		name, addr = strings.TrimSpace(name), strings.TrimSpace(addr)
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("SERVICES: %q is named twice", name)
		}
		out[name] = addr
	}
	return out, validateServices(out)
}

// validateServices checks names and addresses, and that the encoded form
// fits in the gossip metadata.
func validateServices(svcs map[string]string) error {
	if len(svcs) > MaxServices {
		return fmt.Errorf("SERVICES: %d services; at most %d", len(svcs), MaxServices)
	}
	for _, name := range slices.Sorted(maps.Keys(svcs)) {
		addr := svcs[name]
		if len(name) > maxServiceNameLength || !serviceName.MatchString(name) {
			return fmt.Errorf("SERVICES: service name %q: use up to %d lower-case letters, digits, '.', '_' or '-'", name, maxServiceNameLength)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Errorf("SERVICES: %s=%q: want host:port or :port: %v", name, addr, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("SERVICES: %s=%q: port must be a number from 1 to 65535", name, addr)
		}
		if strings.ContainsAny(host, " ,=/") {
			return fmt.Errorf("SERVICES: %s=%q: bad host", name, addr)
		}
	}
	if n := len(encodeServices(svcs)); n > MaxServicesBytes {
		return fmt.Errorf("SERVICES: %d bytes encoded; at most %d (they travel in every gossip packet)", n, MaxServicesBytes)
	}
	return nil
}

// advertiseServices fills in advHost for services bound to a wildcard host
// (":7001", "0.0.0.0:7001"), so that other nodes can dial what they read.
func advertiseServices(svcs map[string]string, advHost string) map[string]string {
	out := make(map[string]string, len(svcs))
	for name, addr := range svcs {
		host, port, err := net.SplitHostPort(addr)
		if err == nil && isUnspecified(host) {
			addr = net.JoinHostPort(advHost, port)
		}
		out[name] = addr
	}
	return out
}

// encodeServices is the form services travel in (gossip metadata and the
// node's record in Raft): "name=addr" pairs sorted by name, so equal maps
// encode alike.
func encodeServices(svcs map[string]string) string {
	var b strings.Builder
	for i, name := range slices.Sorted(maps.Keys(svcs)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(name + "=" + svcs[name])
	}
	return b.String()
}

// decodeServices reads encodeServices' form; it never fails (a record
// from a newer node with entries it cannot read keeps the rest) and
// returns an empty, non-nil map for "".
func decodeServices(s string) map[string]string {
	out := map[string]string{}
	for _, item := range strings.Split(s, ",") {
		if name, addr, ok := strings.Cut(item, "="); ok && name != "" {
			out[name] = addr
		}
	}
	return out
}
