// Package testproc holds what the tests that start real servers (Redis,
// PostgreSQL, stagefleet's own binary) share: a free loopback port, a
// child that dies with the test, and one rule for a missing server.
package testproc

import (
	"fmt"
	"net"
	"os"
	"testing"
)

// FreePort returns a loopback port that nothing listened on a moment ago.
// Another process may take it before the caller binds it: callers retry.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Missing ends a test that needs a server this machine lacks: skipped on
// a developer's machine, failed in CI (the CI variable set), where
// scripts/test installs every server, so a missing one is a broken
// machine, not a reason to pass.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	what := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (scripts/test installs it)", what)
	}
	t.Skipf("%s; run scripts/test, which installs it", what)
}
