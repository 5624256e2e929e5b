//go:build unix

package token_test

import (
	"context"
	"crypto/elliptic"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/cputime"
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
		cpu := cputime.Now()
		for b.Loop() {
			if _, err := iss.Issue(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		cputime.Report(b, cpu)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		cpu := cputime.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := iss.Issue(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
		cputime.Report(b, cpu)
	})
}
