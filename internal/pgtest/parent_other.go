//go:build !linux

package pgtest

import "syscall"

// bindToParent does nothing where the kernel cannot tie a child's life to
// its parent's; the tests' cleanups still stop the servers.
func bindToParent(*syscall.SysProcAttr) {}
