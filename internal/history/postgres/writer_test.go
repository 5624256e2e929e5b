package postgres_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/history/postgres"
	"github.com/stagefleet/stagefleet/internal/pgtest"
)

// PostgreSQL down for 10 s loses nothing that fit in the writer's buffer:
// joins and leaves recorded before, during and after the outage are all
// written once it is back.
func TestWriterSurvivesOutage(t *testing.T) {
	srv := pgtest.Start(t)
	st, err := postgres.Open(t.Context(), srv.NewDatabase(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer st.Close()
	w := history.NewWriter(st, history.WriterConfig{Buffer: 10_000, Timeout: 2 * time.Second}, slog.New(slog.DiscardHandler))

	n := 0
	record := func(count int) {
		for range count {
			id := fmt.Sprintf("s%05d", n)
			joined := time.Date(2030, 1, 1, 0, 0, n, 0, time.UTC)
			w.Record(history.Event{Kind: history.Open, SessionID: id, UserID: "u", StageArn: "arn:s", At: joined})
			w.Record(history.Event{Kind: history.Close, SessionID: id, UserID: "u", StageArn: "arn:s",
				At: joined.Add(time.Minute), EndReason: history.EndLeave})
			n++
		}
	}
	record(500)
	srv.Stop()
	for range 10 { // 10 s down, 200 sessions a second
		start := time.Now()
		record(200)
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Errorf("recording 200 sessions took %v with the database down", d)
		}
		time.Sleep(time.Second)
	}
	if w.Len() == 0 {
		t.Error("nothing queued while the database was down")
	}
	srv.Restart()
	record(500)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if w.Dropped() != 0 {
		t.Errorf("Dropped %d, want 0", w.Dropped())
	}
	_, _, total, err := st.History(t.Context(), "u", 1, "")
	if err != nil || total != n {
		t.Fatalf("%d sessions written, %v; want %d", total, err, n)
	}
	stats, err := st.StageStats(t.Context(), "arn:s", time.Time{})
	if err != nil || stats.TotalWatchTime != time.Duration(n)*time.Minute {
		t.Errorf("StageStats = %+v, %v; want every session closed after a minute", stats, err)
	}
}
