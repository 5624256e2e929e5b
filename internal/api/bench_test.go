//go:build unix

package api_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/api"
	"github.com/stagefleet/stagefleet/internal/cputime"
	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/metrics"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
	"github.com/stagefleet/stagefleet/internal/token"
)

const benchOriginArn = "arn:aws:ivs:us-east-1:123456789012:stage/BenchOrigin1"

// benchNoIVS is an IVS whose every method panics (a nil interface): the
// join path must not reach IVS.
type benchNoIVS struct{ fleet.IVS }

// BenchmarkViewerTokenHTTP is POST /api/token/viewer through the whole
// handler (API key check, body limit, logging middleware, JSON in and out)
// onto a fleet on the memory store, without a network: what one instance
// spends per join. memory-metrics is the same with the Prometheus metrics
// on, as serve runs: the fleet reporting to them, the store counted and
// GET /metrics routed.
func BenchmarkViewerTokenHTTP(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchViewerTokenHTTP(b, nil) })
	b.Run("memory-metrics", func(b *testing.B) { benchViewerTokenHTTP(b, metrics.New(metrics.Options{})) })
}

// benchViewerTokenHTTP runs the HTTP join benchmark, with metrics m when
// not nil.
func benchViewerTokenHTTP(b *testing.B, m *metrics.Metrics) {
	ctx := context.Background()
	var st store.Store = memory.New()
	var fm fleet.Metrics
	var handler http.Handler
	if m != nil {
		st, fm, handler = m.WrapStore(st), m, m.Handler()
	}
	now := time.Now()
	if err := st.PutStage(ctx, store.Stage{
		Arn: benchOriginArn, BroadcastID: fleet.DefaultBroadcast, Role: store.RoleOrigin, Name: "bench-origin",
		Capacity: 1 << 30, Seatable: true, CreatedAt: now,
	}); err != nil {
		b.Fatal(err)
	}
	if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: fleet.DefaultBroadcast, OriginArn: benchOriginArn, CreatedAt: now}); err != nil {
		b.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	iss, err := token.NewSelfSigned("arn:aws:ivs:us-east-1:123456789012:public-key/BenchKey1", key)
	if err != nil {
		b.Fatal(err)
	}
	discard := slog.New(slog.DiscardHandler)
	svc := fleet.New(fleet.Config{
		StageCapacity:    1 << 30,
		HeartbeatTimeout: time.Minute,
		PublisherTTL:     12 * time.Hour,
		ViewerTTL:        time.Hour,
		MediaServerTTL:   time.Hour,
		EventDedupTTL:    time.Hour,
		Metrics:          fm,
	}, st, benchNoIVS{}, iss, discard)
	h := api.New(api.Options{APISecretKey: "bench-secret", MaxBodyBytes: 64 << 10, Logger: discard, Metrics: handler}, svc)

	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cputime.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := `{"userId":"viewer-` + strconv.FormatInt(next.Add(1), 10) + `"}`
			req := httptest.NewRequest(http.MethodPost, "/api/token/viewer", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("x-api-key", "bench-secret")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), benchOriginArn) {
				b.Errorf("POST /api/token/viewer = %d %s", rec.Code, rec.Body.String())
				return
			}
		}
	})
	b.StopTimer()
	cputime.Report(b, cpu)
	origin, err := st.GetStage(ctx, benchOriginArn)
	if err != nil || int64(origin.Seats) != next.Load() {
		b.Fatalf("origin holds %d seats after %d joins (%v)", origin.Seats, next.Load(), err)
	}
}
