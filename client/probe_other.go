//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package client

import "syscall"

// newProbe: no non-blocking peek here; a connection the server closed
// while idle shows when a request fails on it.
func newProbe(syscall.RawConn) func() bool { return nil }
