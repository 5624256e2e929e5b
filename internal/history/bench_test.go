package history_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/history/postgres"
	"github.com/stagefleet/stagefleet/internal/history/sqlite"
	"github.com/stagefleet/stagefleet/internal/pgtest"
)

// BenchmarkWriter measures sessions per second through a Writer with its
// default batching, each session an open and, 5,000 sessions later, its
// close (an update of a row written a few batches before). Recording keeps
// the buffer at most half full, so that nothing is dropped and the figure
// is what the database sustains; the time includes Close's last flush.
func BenchmarkWriter(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		st, err := sqlite.Open(b.Context(), b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		benchWriter(b, st)
	})
	srv := pgtest.Start(b) // once: this function runs once, its sub-benchmarks many times
	b.Run("postgres", func(b *testing.B) {
		st, err := postgres.Open(b.Context(), srv.NewDatabase(b))
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		benchWriter(b, st)
	})
}

func benchWriter(b *testing.B, st history.Store) {
	const buffer, lag = 100_000, 5_000
	w := history.NewWriter(st, history.WriterConfig{Buffer: buffer}, slog.New(slog.DiscardHandler))
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := func(kind history.Kind, i int) history.Event {
		e := history.Event{Kind: kind, SessionID: "s" + strconv.Itoa(i), BroadcastID: "b", UserID: "u" + strconv.Itoa(i%10_000),
			StageArn: "arn:aws:ivs:us-east-1:123456789012:stage/s" + strconv.Itoa(i%50), ParticipantID: "p" + strconv.Itoa(i),
			Instance: "bench", At: base.Add(time.Duration(i) * time.Millisecond)}
		if kind == history.Open {
			e.UserAgent, e.IPAddress, e.CountryCode = "Mozilla/5.0", "203.0.113.7", "TW"
		} else {
			e.At, e.EndReason = e.At.Add(time.Minute), history.EndLeave
		}
		return e
	}
	start := time.Now()
	n := 0
	for ; b.Loop(); n++ {
		for w.Len() > buffer/2 {
			time.Sleep(100 * time.Microsecond)
		}
		w.Record(ev(history.Open, n))
		if n >= lag {
			w.Record(ev(history.Close, n-lag))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	if w.Dropped() != 0 {
		b.Fatalf("dropped %d", w.Dropped())
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "sessions/s")
}

// The query benchmarks run on a data set of HISTORY_BENCH_SESSIONS sessions
// (1,000,000 by default), built once per benchmark and database, and only
// when HISTORY_BENCH_LARGE=1: building it takes a while.
//
// The data set: 100,000 users, 1,000 stages of 100 broadcasts, sessions
// joined uniformly over 30 days, lasting 1 s to 2 h, 2% still open.
const (
	benchUsers  = 100_000
	benchStages = 1_000
	benchDays   = 30
)

var benchEnd = time.Date(2030, 2, 1, 0, 0, 0, 0, time.UTC)

type benchRow struct {
	session, broadcast, user, stage string
	joined                          time.Time
	left                            time.Time // zero: open
}

func benchRows(n int, fn func(benchRow) error) error {
	rng := rand.New(rand.NewPCG(1, 2))
	span := int64(benchDays * 24 * time.Hour)
	for i := range n {
		r := benchRow{
			session:   fmt.Sprintf("session-%07d", i),
			user:      fmt.Sprintf("user-%06d", rng.IntN(benchUsers)),
			broadcast: fmt.Sprintf("broadcast-%03d", i%benchStages%100),
			stage:     fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/stage-%04d", i%benchStages),
			joined:    benchEnd.Add(-time.Duration(rng.Int64N(span))).Truncate(time.Millisecond),
		}
		if rng.IntN(50) != 0 {
			r.left = r.joined.Add(time.Second + time.Duration(rng.Int64N(int64(2*time.Hour))))
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func benchSessions(b *testing.B) int {
	if os.Getenv("HISTORY_BENCH_LARGE") != "1" {
		b.Skip("set HISTORY_BENCH_LARGE=1 to build the data set of the query benchmarks")
	}
	n := 1_000_000
	if v := os.Getenv("HISTORY_BENCH_SESSIONS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("HISTORY_BENCH_SESSIONS=%q", v)
		}
	}
	return n
}

// largeSQLite builds the data set in one transaction of plain inserts
// (times as the schema keeps them: microseconds).
func largeSQLite(b *testing.B, n int) history.Store {
	dir := b.TempDir()
	st, err := sqlite.Open(b.Context(), dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	start := time.Now()
	db, err := sql.Open("sqlite", filepath.Join(dir, sqlite.FileName)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(b.Context(), nil)
	if err != nil {
		b.Fatal(err)
	}
	ins, err := tx.PrepareContext(b.Context(), `INSERT INTO viewer_sessions
		(session_id, broadcast_id, user_id, stage_arn, participant_id, instance, joined_at, left_at,
		 watch_duration_seconds, end_reason, user_agent, ip_address, country_code)
		VALUES (?, ?, ?, ?, ?, 'bench', ?, ?, ?, ?, 'Mozilla/5.0', '203.0.113.7', 'TW')`)
	if err != nil {
		b.Fatal(err)
	}
	err = benchRows(n, func(r benchRow) error {
		var left, watch, reason any
		if !r.left.IsZero() {
			left, watch, reason = r.left.UnixMicro(), int64(r.left.Sub(r.joined)/time.Second), history.EndLeave
		}
		_, err := ins.ExecContext(b.Context(), r.session, r.broadcast, r.user, r.stage, "p-"+r.session,
			r.joined.UnixMicro(), left, watch, reason)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	if _, err := db.ExecContext(b.Context(), `ANALYZE`); err != nil {
		b.Fatal(err)
	}
	b.Logf("sqlite: %d sessions inserted in %v", n, time.Since(start).Round(time.Millisecond))
	return st
}

// largePostgres builds the data set with COPY.
func largePostgres(b *testing.B, n int) history.Store {
	srv := pgtest.Start(b)
	url := srv.NewDatabase(b)
	st, err := postgres.Open(b.Context(), url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	start := time.Now()
	conn, err := pgx.Connect(b.Context(), url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows := make([][]any, 0, n)
	if err := benchRows(n, func(r benchRow) error {
		var left, watch, reason any
		if !r.left.IsZero() {
			left, watch, reason = r.left, int32(r.left.Sub(r.joined)/time.Second), history.EndLeave
		}
		rows = append(rows, []any{r.session, r.broadcast, r.user, r.stage, "p-" + r.session, "bench", r.joined, left,
			watch, reason, "Mozilla/5.0", "203.0.113.7", "TW"})
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	if _, err := conn.CopyFrom(b.Context(), pgx.Identifier{"viewer_sessions"},
		[]string{"session_id", "broadcast_id", "user_id", "stage_arn", "participant_id", "instance", "joined_at", "left_at",
			"watch_duration_seconds", "end_reason", "user_agent", "ip_address", "country_code"},
		pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(b.Context(), `VACUUM ANALYZE viewer_sessions`); err != nil {
		b.Fatal(err)
	}
	b.Logf("postgres: %d sessions copied in %v", n, time.Since(start).Round(time.Millisecond))
	return st
}

// benchQuery runs query on each database's data set, and reports the
// median and 99th percentile of its latency beside the mean.
func benchQuery(b *testing.B, query func(ctx context.Context, st history.Store, rng *rand.Rand) error) {
	n := benchSessions(b)
	for _, db := range []struct {
		name  string
		build func(*testing.B, int) history.Store
	}{{"sqlite", largeSQLite}, {"postgres", largePostgres}} {
		st := db.build(b, n)
		b.Run(db.name, func(b *testing.B) {
			rng := rand.New(rand.NewPCG(3, 4))
			var took []time.Duration
			for b.Loop() {
				start := time.Now()
				if err := query(b.Context(), st, rng); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(start))
			}
			slices.Sort(took)
			at := func(q float64) float64 {
				return float64(took[min(len(took)-1, int(q*float64(len(took))))].Microseconds())
			}
			b.ReportMetric(at(0.50), "p50-µs")
			b.ReportMetric(at(0.99), "p99-µs")
		})
	}
}

// BenchmarkHistoryQuery reads the first page (20) of a random user's
// sessions, with the total count, as the history route would.
func BenchmarkHistoryQuery(b *testing.B) {
	benchQuery(b, func(ctx context.Context, st history.Store, rng *rand.Rand) error {
		page, _, total, err := st.History(ctx, fmt.Sprintf("user-%06d", rng.IntN(benchUsers)), 20, "")
		if err == nil && total > 0 && len(page) == 0 {
			err = fmt.Errorf("%d sessions but an empty page", total)
		}
		return err
	})
}

// BenchmarkStageStatsQuery sums up a random stage's last 7 days.
func BenchmarkStageStatsQuery(b *testing.B) {
	since := benchEnd.Add(-7 * 24 * time.Hour)
	benchQuery(b, func(ctx context.Context, st history.Store, rng *rand.Rand) error {
		stats, err := st.StageStats(ctx, fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/stage-%04d", rng.IntN(benchStages)), since)
		if err == nil && stats.TotalViews == 0 {
			err = fmt.Errorf("a stage without views in 7 days")
		}
		return err
	})
}
