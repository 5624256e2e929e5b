//go:build unix

package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/cputime"
	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/history/sqlite"
	"github.com/stagefleet/stagefleet/internal/metrics"
	"github.com/stagefleet/stagefleet/internal/redistest"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
	redisstore "github.com/stagefleet/stagefleet/internal/store/redis"
	"github.com/stagefleet/stagefleet/internal/token"
)

const benchOrigin = "arn:aws:ivs:us-east-1:123456789012:stage/BenchOrigin1"

// noIVS is an IVS whose every method panics (a nil interface): the join
// path must not reach IVS.
type noIVS struct{ fleet.IVS }

// benchFleet is a fleet on st whose default broadcast has one seatable
// origin stage with room for everyone, signing tokens itself, reporting to
// m and telling obs of seats (nil: nobody).
func benchFleet(tb testing.TB, st store.Store, m fleet.Metrics, obs fleet.SeatObserver) *fleet.Service {
	tb.Helper()
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	iss, err := token.NewSelfSigned("arn:aws:ivs:us-east-1:123456789012:public-key/BenchKey1", key)
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	if err := st.PutStage(ctx, store.Stage{
		Arn: benchOrigin, BroadcastID: fleet.DefaultBroadcast, Role: store.RoleOrigin, Name: "bench-origin",
		Capacity: 1 << 30, Seatable: true, CreatedAt: now,
	}); err != nil {
		tb.Fatal(err)
	}
	if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: fleet.DefaultBroadcast, OriginArn: benchOrigin, CreatedAt: now}); err != nil {
		tb.Fatal(err)
	}
	return fleet.New(fleet.Config{
		StageCapacity:    1 << 30,
		HeartbeatTimeout: time.Minute,
		SeatWait:         0,
		PublisherTTL:     12 * time.Hour,
		ViewerTTL:        time.Hour,
		MediaServerTTL:   time.Hour,
		EventDedupTTL:    time.Hour,
		Metrics:          m,
		Observer:         obs,
	}, st, noIVS{}, iss, slog.New(slog.DiscardHandler))
}

// BenchmarkViewerToken is the whole join below HTTP: seat a new viewer and
// sign its token, on every core at once, with the memory store and with the
// Redis store (a real redis-server on loopback, started by the benchmark).
// For Redis it reports the commands sent per join. memory-metrics is memory
// with the Prometheus metrics on, as serve runs: the fleet reporting to
// them and the store counted. memory-history is memory with the viewing
// history on, as serve runs by default: each seat's session queued on a
// history Writer whose goroutine writes it to SQLite on the same cores.
func BenchmarkViewerToken(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchViewerToken(b, memory.New(), nil, nil, 1, func() {}) })
	b.Run("memory-metrics", func(b *testing.B) {
		m := metrics.New(metrics.Options{})
		benchViewerToken(b, m.WrapStore(memory.New()), m, nil, 1, func() {})
	})
	b.Run("memory-history", func(b *testing.B) {
		hist, err := sqlite.Open(context.Background(), b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		defer hist.Close()
		w := history.NewWriter(hist, history.WriterConfig{}, slog.New(slog.DiscardHandler))
		benchViewerToken(b, memory.New(), nil, historyObserver{w}, 1, func() {})
		// Not timed: what is still queued, at most the buffer, is written.
		if err := w.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(w.Dropped())/float64(b.N), "history-dropped/op")
	})
	b.Run("redis", func(b *testing.B) {
		rdb := redistest.Start(b).Client(b)
		counter := &redistest.CommandCounter{}
		rdb.AddHook(counter)
		st := redisstore.New(rdb, "")
		benchViewerToken(b, st, nil, nil, 4, counter.Reset)
		b.ReportMetric(float64(counter.Count())/float64(b.N), "redis-cmds/op")
	})
	// As serve runs on Redis: concurrent joins coalesced into batches.
	b.Run("redis-batched", func(b *testing.B) {
		rdb := redistest.Start(b).Client(b)
		counter := &redistest.CommandCounter{}
		rdb.AddHook(counter)
		st := redisstore.New(rdb, "", redisstore.WithSeatBatching())
		benchViewerToken(b, st, nil, nil, 4, counter.Reset)
		b.ReportMetric(float64(counter.Count())/float64(b.N), "redis-cmds/op")
	})
}

// benchViewerToken runs the join benchmark on st with parallelism joins in
// flight per core; started is called as the timer starts. A networked
// store needs several in flight per core, as an API server has, or the
// cores sit idle while each join waits for its answer.
func benchViewerToken(b *testing.B, st store.Store, m fleet.Metrics, obs fleet.SeatObserver, parallelism int, started func()) {
	svc := benchFleet(b, st, m, obs)
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(parallelism)
	started()
	b.ResetTimer()
	cpu := cputime.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			user := "viewer-" + strconv.FormatInt(next.Add(1), 10)
			tok, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, user, "")
			if err != nil {
				b.Error(err)
				return
			}
			if tok.StageArn != benchOrigin || tok.Token == "" {
				b.Errorf("token %+v", tok)
				return
			}
		}
	})
	b.StopTimer()
	cputime.Report(b, cpu)
	origin, err := st.GetStage(ctx, benchOrigin)
	if err != nil || int64(origin.Seats) != next.Load() {
		b.Fatalf("origin holds %d seats after %d joins (%v)", origin.Seats, next.Load(), err)
	}
}

// historyObserver records seats taken as sessions on a history Writer, as
// serve's observer does: the join path's share is building the event and
// queueing it.
type historyObserver struct{ w *history.Writer }

func (o historyObserver) SeatOpened(seat store.Seat, _ fleet.Client) {
	o.w.Record(history.Event{Kind: history.Open, SessionID: fleet.SessionID(seat), BroadcastID: seat.BroadcastID,
		UserID: seat.UserID, StageArn: seat.StageArn, ParticipantID: seat.ParticipantID, At: seat.TakenAt})
}

// SeatClosed is never called: no seat ends during the benchmark.
func (historyObserver) SeatClosed(store.Seat, string, time.Time) {}

// countingStore counts every call to the store. It wraps, not embeds, the
// store, so that the compiler makes every method counted.
type countingStore struct {
	inner store.Store
	mu    sync.Mutex
	calls []string
}

var _ store.Store = (*countingStore)(nil)

func (c *countingStore) count(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, name)
}

func (c *countingStore) reset() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	return out
}

func (c *countingStore) CreateBroadcast(ctx context.Context, b store.Broadcast) (store.Broadcast, error) {
	c.count("CreateBroadcast")
	return c.inner.CreateBroadcast(ctx, b)
}
func (c *countingStore) GetBroadcast(ctx context.Context, id string) (store.Broadcast, error) {
	c.count("GetBroadcast")
	return c.inner.GetBroadcast(ctx, id)
}
func (c *countingStore) ListBroadcasts(ctx context.Context) ([]store.Broadcast, error) {
	c.count("ListBroadcasts")
	return c.inner.ListBroadcasts(ctx)
}
func (c *countingStore) PutBroadcast(ctx context.Context, b store.Broadcast) error {
	c.count("PutBroadcast")
	return c.inner.PutBroadcast(ctx, b)
}
func (c *countingStore) DeleteBroadcast(ctx context.Context, id string) ([]store.Seat, error) {
	c.count("DeleteBroadcast")
	return c.inner.DeleteBroadcast(ctx, id)
}
func (c *countingStore) PutStage(ctx context.Context, s store.Stage) error {
	c.count("PutStage")
	return c.inner.PutStage(ctx, s)
}
func (c *countingStore) GetStage(ctx context.Context, arn string) (store.Stage, error) {
	c.count("GetStage")
	return c.inner.GetStage(ctx, arn)
}
func (c *countingStore) ListStages(ctx context.Context, b string) ([]store.Stage, error) {
	c.count("ListStages")
	return c.inner.ListStages(ctx, b)
}
func (c *countingStore) SetSeatable(ctx context.Context, arn string, v bool) error {
	c.count("SetSeatable")
	return c.inner.SetSeatable(ctx, arn, v)
}
func (c *countingStore) DeleteStage(ctx context.Context, arn string) ([]store.Seat, error) {
	c.count("DeleteStage")
	return c.inner.DeleteStage(ctx, arn)
}
func (c *countingStore) PutHost(ctx context.Context, h store.Host) error {
	c.count("PutHost")
	return c.inner.PutHost(ctx, h)
}
func (c *countingStore) GetHost(ctx context.Context, b, p string) (store.Host, error) {
	c.count("GetHost")
	return c.inner.GetHost(ctx, b, p)
}
func (c *countingStore) ListHosts(ctx context.Context, b string) ([]store.Host, error) {
	c.count("ListHosts")
	return c.inner.ListHosts(ctx, b)
}
func (c *countingStore) DeleteHost(ctx context.Context, b, p string) error {
	c.count("DeleteHost")
	return c.inner.DeleteHost(ctx, b, p)
}
func (c *countingStore) PutReplication(ctx context.Context, r store.Replication) error {
	c.count("PutReplication")
	return c.inner.PutReplication(ctx, r)
}
func (c *countingStore) GetReplication(ctx context.Context, b, p, d string) (store.Replication, error) {
	c.count("GetReplication")
	return c.inner.GetReplication(ctx, b, p, d)
}
func (c *countingStore) ListReplications(ctx context.Context, b string) ([]store.Replication, error) {
	c.count("ListReplications")
	return c.inner.ListReplications(ctx, b)
}
func (c *countingStore) DeleteReplication(ctx context.Context, b, p, d string) error {
	c.count("DeleteReplication")
	return c.inner.DeleteReplication(ctx, b, p, d)
}
func (c *countingStore) ReserveSeat(ctx context.Context, r store.SeatRequest) (store.Seat, error) {
	c.count("ReserveSeat")
	return c.inner.ReserveSeat(ctx, r)
}
func (c *countingStore) RenewSeat(ctx context.Context, b, u string, o store.SeatOwner, now time.Time, ttl time.Duration) (store.Seat, error) {
	c.count("RenewSeat")
	return c.inner.RenewSeat(ctx, b, u, o, now, ttl)
}
func (c *countingStore) ReleaseSeat(ctx context.Context, b, u string) (store.Seat, error) {
	c.count("ReleaseSeat")
	return c.inner.ReleaseSeat(ctx, b, u)
}
func (c *countingStore) ExpireSeats(ctx context.Context, b string, now time.Time) ([]store.Seat, error) {
	c.count("ExpireSeats")
	return c.inner.ExpireSeats(ctx, b, now)
}
func (c *countingStore) ListSeats(ctx context.Context, b string) ([]store.Seat, error) {
	c.count("ListSeats")
	return c.inner.ListSeats(ctx, b)
}
func (c *countingStore) GetSeat(ctx context.Context, b, user string) (store.Seat, error) {
	c.count("GetSeat")
	return c.inner.GetSeat(ctx, b, user)
}

func (c *countingStore) ScanSeats(ctx context.Context, b, cursor string, n int) ([]store.Seat, string, error) {
	c.count("ScanSeats")
	return c.inner.ScanSeats(ctx, b, cursor, n)
}
func (c *countingStore) DropSeats(ctx context.Context, b string, n int) ([]store.Seat, error) {
	c.count("DropSeats")
	return c.inner.DropSeats(ctx, b, n)
}
func (c *countingStore) SeatTotals(ctx context.Context, b string) (store.SeatTotals, error) {
	c.count("SeatTotals")
	return c.inner.SeatTotals(ctx, b)
}
func (c *countingStore) FirstSeen(ctx context.Context, id string, ttl time.Duration) (bool, error) {
	c.count("FirstSeen")
	return c.inner.FirstSeen(ctx, id, ttl)
}
func (c *countingStore) ForgetEvent(ctx context.Context, id string) error {
	c.count("ForgetEvent")
	return c.inner.ForgetEvent(ctx, id)
}
func (c *countingStore) AcquireLease(ctx context.Context, b, name, holder string, ttl time.Duration) (store.Lease, error) {
	c.count("AcquireLease")
	return c.inner.AcquireLease(ctx, b, name, holder, ttl)
}
func (c *countingStore) ReleaseLease(ctx context.Context, l store.Lease) (bool, error) {
	c.count("ReleaseLease")
	return c.inner.ReleaseLease(ctx, l)
}
func (c *countingStore) PutDemand(ctx context.Context, b string, d store.Demand) error {
	c.count("PutDemand")
	return c.inner.PutDemand(ctx, b, d)
}
func (c *countingStore) ListDemand(ctx context.Context, b string, since time.Time) ([]store.Demand, error) {
	c.count("ListDemand")
	return c.inner.ListDemand(ctx, b, since)
}
func (c *countingStore) Ping(ctx context.Context) error {
	c.count("Ping")
	return c.inner.Ping(ctx)
}
func (c *countingStore) Close() error { return c.inner.Close() }

// TestViewerTokenOneRoundTrip holds the benchmarked path to invariant 5:
// a join, new or repeated, is one store call and no IVS call.
func TestViewerTokenOneRoundTrip(t *testing.T) {
	cs := &countingStore{inner: memory.New()}
	svc := benchFleet(t, cs, nil, nil)
	cs.reset()
	ctx := context.Background()
	first := ""
	for _, user := range []string{"viewer-1", "viewer-2", "viewer-1"} {
		tok, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, user, "")
		if err != nil {
			t.Fatalf("ViewerToken %s: %v", user, err)
		}
		if user == "viewer-1" {
			if first != "" && tok.ParticipantID != first {
				t.Fatalf("viewer-1 asked again got participant %s, had %s", tok.ParticipantID, first)
			}
			first = tok.ParticipantID
		}
		if calls := cs.reset(); len(calls) != 1 || calls[0] != "ReserveSeat" {
			t.Fatalf("join of %s made store calls %v, want one ReserveSeat", user, calls)
		}
	}
}
