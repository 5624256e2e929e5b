package pgtest

import "syscall"

// bindToParent makes the server die with the test process, so that a test
// killed half-way (a timeout, ^C) leaves no server running.
func bindToParent(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGKILL }
