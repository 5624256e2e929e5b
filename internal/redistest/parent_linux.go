package redistest

import (
	"os/exec"
	"syscall"
)

// BindToParent makes cmd die with the test process, so that a test killed
// half-way (a timeout, ^C) leaves no server running.
func BindToParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
