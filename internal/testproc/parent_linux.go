package testproc

import (
	"os/exec"
	"syscall"
)

// BindToParent makes cmd die with the test process, so that a test killed
// half-way (a timeout, ^C) leaves no server running. It keeps what
// cmd.SysProcAttr already asks for.
func BindToParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
