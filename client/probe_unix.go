//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package client

import "syscall"

// newProbe returns a check that the peer of the socket rc has not closed
// it and sent nothing: a peek that does not block (Go's sockets are
// non-blocking) and finds nothing to read. It costs one syscall.
func newProbe(rc syscall.RawConn) func() bool {
	var buf [1]byte
	var alive bool
	peek := func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK)
			if err == syscall.EINTR {
				continue
			}
			// EAGAIN: nothing to read, the connection is open. No error:
			// the peer closed it (0 bytes) or sent something unasked (a
			// timeout answer, TLS close_notify); another error: reset.
			alive = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
			return true
		}
	}
	return func() bool {
		if err := rc.Read(peek); err != nil {
			return false
		}
		return alive
	}
}
