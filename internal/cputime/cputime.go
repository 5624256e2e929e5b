//go:build unix

// Package cputime measures the CPU time this process uses, for benchmarks
// on shared machines: unlike ns/op, cpu-ns/op is not inflated by other
// processes competing for the cores.
package cputime

import (
	"syscall"
	"testing"
	"time"
)

// Now is the CPU time (user + system) this process has used so far.
func Now() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Report adds the cpu-ns/op metric for the CPU time used since since.
func Report(b *testing.B, since time.Duration) {
	b.ReportMetric(float64(Now()-since)/float64(b.N), "cpu-ns/op")
}
