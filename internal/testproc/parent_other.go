//go:build !linux

package testproc

import "os/exec"

// BindToParent does nothing where the kernel cannot tie a child's life to
// its parent's; the tests' cleanups still stop their processes.
func BindToParent(*exec.Cmd) {}
