//go:build unix

package token_test

import (
	"context"
	"crypto/elliptic"
	"syscall"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/token"
)

// BenchmarkES384Sign is the ceiling of the join path: one self-signed
// viewer token, nothing else. "parallel" signs on every core at once (as
// BenchmarkViewerToken joins do), so its ns/op is wall time per token over
// GOMAXPROCS cores; "serial" is the time of one signature on one core.
func BenchmarkES384Sign(b *testing.B) {
	iss := newIssuer(b, testKeyArn, newKey(b, elliptic.P384()))
	req := token.Request{
		StageArn:      testStageArn,
		ParticipantID: "Q2ZJ7KXW4TDBN5RUHLM3AEOPVS",
		UserID:        "viewer-123456",
		Attributes:    map[string]string{"role": "viewer", "broadcastId": "default"},
		Subscribe:     true,
		TTL:           time.Hour,
	}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		cpu := cpuNow()
		for b.Loop() {
			if _, err := iss.Issue(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpu)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		cpu := cpuNow()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := iss.Issue(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportCPU(b, cpu)
	})
}

// cpuNow is the CPU time (user + system) this process has used. Unlike
// ns/op, cpu-ns/op is not inflated by other processes on a shared machine.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, since time.Duration) {
	b.ReportMetric(float64(cpuNow()-since)/float64(b.N), "cpu-ns/op")
}
