// Package historytest is the conformance suite every history.Store must
// pass, run on SQLite and on PostgreSQL with the same expectations.
//
// Beyond the comments of history.Store, it holds implementations to:
//
//   - times kept to the microsecond at least (the suite uses milliseconds)
//     and returned in UTC;
//   - empty client details and participant ids read back as "";
//   - migrations applied on the first opening of a database, none on the
//     next, and two openings of a new database at once applying each
//     migration exactly once between them.
package historytest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/history"
)

// Opener opens a store on one database, applying its migrations, and
// answers the versions of the migrations this opening applied. Called
// again, it opens the same database anew, as a restart does, and it may be
// called from several goroutines at once. The suite closes the stores.
type Opener func(ctx context.Context) (st history.Store, applied []int, err error)

// Run runs the suite. newDB makes an empty database for one subtest and
// returns its Opener.
func Run(t *testing.T, newDB func(t *testing.T) Opener) {
	tests := []struct {
		name string
		run  func(t *testing.T, o opener)
	}{
		{"OpenThenClose", testOpenThenClose},
		{"WatchDuration", testWatchDuration},
		{"OrderDoesNotMatter", testOrderDoesNotMatter},
		{"FirstCloseKept", testFirstCloseKept},
		{"InvalidBatchRefused", testInvalidBatchRefused},
		{"TextCleaned", testTextCleaned},
		{"ConcurrentApply", testConcurrentApply},
		{"HistoryPaging", testHistoryPaging},
		{"StageStats", testStageStats},
		{"Series", testSeries},
		{"BroadcastStats", testBroadcastStats},
		{"Prune", testPrune},
		{"MigrationsOnce", testMigrationsOnce},
		{"ConcurrentOpen", testConcurrentOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t, opener{newDB(t)})
		})
	}
}

// opener is an Opener as the tests use it: open fails the test on an error
// and closes its stores when the test ends.
type opener struct{ raw Opener }

func (o opener) open(t *testing.T) (history.Store, []int) {
	t.Helper()
	st, applied, err := o.raw(t.Context())
	if err != nil {
		t.Fatalf("opening the store: %v", err)
	}
	if st == nil {
		t.Fatal("Opener returned a nil store")
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return st, applied
}

func store(t *testing.T, o opener) history.Store {
	t.Helper()
	st, _ := o.open(t)
	return st
}

// base is the suite's epoch: whole milliseconds, UTC.
var base = time.Date(2030, 1, 2, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return base.Add(d) }

func openEvent(id, user string, joined time.Time) history.Event {
	return history.Event{
		Kind: history.Open, SessionID: id, BroadcastID: "b1", UserID: user,
		StageArn: "arn:aws:ivs:us-east-1:123456789012:stage/origin", ParticipantID: "p-" + id,
		Instance: "i-open", At: joined, UserAgent: "Mozilla/5.0", IPAddress: "203.0.113.7", CountryCode: "TW",
	}
}

func closeEvent(id, user string, left time.Time, reason string) history.Event {
	return history.Event{
		Kind: history.Close, SessionID: id, BroadcastID: "b1", UserID: user,
		StageArn: "arn:aws:ivs:us-east-1:123456789012:stage/origin", ParticipantID: "p-" + id,
		Instance: "i-close", At: left, EndReason: reason,
	}
}

func apply(t *testing.T, st history.Store, events ...history.Event) {
	t.Helper()
	if err := st.Apply(t.Context(), events); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func putSnapshots(t *testing.T, st history.Store, snaps ...history.Snapshot) {
	t.Helper()
	if err := st.PutSnapshots(t.Context(), snaps); err != nil {
		t.Fatalf("PutSnapshots: %v", err)
	}
}

// sessions reads every session of a user, newest first, checking the
// fields the database sets and clearing them for comparison.
func sessions(t *testing.T, st history.Store, user string) []history.Session {
	t.Helper()
	page, next, total, err := st.History(t.Context(), user, history.MaxPageSize, "")
	if err != nil {
		t.Fatalf("History(%s): %v", user, err)
	}
	if next != "" || total != len(page) {
		t.Fatalf("History(%s): %d sessions, next %q, total %d", user, len(page), next, total)
	}
	for i := range page {
		if page[i].ID == 0 || page[i].CreatedAt.IsZero() {
			t.Errorf("session %s: ID %d, CreatedAt %v: want both set", page[i].SessionID, page[i].ID, page[i].CreatedAt)
		}
		page[i].ID, page[i].CreatedAt = 0, time.Time{}
	}
	return page
}

func one(t *testing.T, st history.Store, user string) history.Session {
	t.Helper()
	ss := sessions(t, st, user)
	if len(ss) != 1 {
		t.Fatalf("user %s has %d sessions, want 1: %+v", user, len(ss), ss)
	}
	return ss[0]
}

func diff(t *testing.T, got, want history.Session) {
	t.Helper()
	if got != want {
		t.Errorf("session\n got %+v\nwant %+v", got, want)
	}
}

// fullSession is the row that openEvent and closeEvent make together.
func fullSession(id, user string, joined, left time.Time, watch time.Duration, reason string) history.Session {
	o := openEvent(id, user, joined)
	return history.Session{
		SessionID: id, BroadcastID: o.BroadcastID, UserID: user, StageArn: o.StageArn, ParticipantID: o.ParticipantID,
		Instance: o.Instance, JoinedAt: joined, LeftAt: left, WatchDuration: watch, EndReason: reason,
		UserAgent: o.UserAgent, IPAddress: o.IPAddress, CountryCode: o.CountryCode,
	}
}

func testOpenThenClose(t *testing.T, o opener) {
	st := store(t, o)
	apply(t, st, openEvent("s1", "u1", at(0)))
	want := fullSession("s1", "u1", at(0), time.Time{}, 0, "")
	diff(t, one(t, st, "u1"), want)

	apply(t, st, closeEvent("s1", "u1", at(90*time.Second), history.EndLeave))
	want.LeftAt, want.WatchDuration, want.EndReason = at(90*time.Second), 90*time.Second, history.EndLeave
	diff(t, one(t, st, "u1"), want)

	// Empty details are kept as NULL and read back as "".
	bare := history.Event{Kind: history.Open, SessionID: "s2", UserID: "u2", StageArn: "arn:s", At: at(0)}
	apply(t, st, bare)
	diff(t, one(t, st, "u2"), history.Session{SessionID: "s2", UserID: "u2", StageArn: "arn:s", JoinedAt: at(0)})
}

func testWatchDuration(t *testing.T, o opener) {
	tests := []struct {
		name   string
		joined time.Time
		left   time.Time
		want   time.Duration
	}{
		{"whole seconds", at(0), at(42 * time.Second), 42 * time.Second},
		{"truncated, not rounded", at(250 * time.Millisecond), at(90*time.Second + 900*time.Millisecond), 90 * time.Second},
		{"under a second", at(100 * time.Millisecond), at(999 * time.Millisecond), 0},
		{"left before joined (clocks apart)", at(10 * time.Second), at(8 * time.Second), 0},
		{"hours", at(0), at(5*time.Hour + 59*time.Second + 999*time.Millisecond), 5*time.Hour + 59*time.Second},
	}
	st := store(t, o)
	for i, tt := range tests {
		for _, closeFirst := range []bool{false, true} {
			id := fmt.Sprintf("s%d-%v", i, closeFirst)
			user := "u-" + id
			op, c := openEvent(id, user, tt.joined), closeEvent(id, user, tt.left, history.EndExpired)
			if closeFirst {
				apply(t, st, c)
				apply(t, st, op)
			} else {
				apply(t, st, op)
				apply(t, st, c)
			}
			if got := one(t, st, user).WatchDuration; got != tt.want {
				t.Errorf("%s (close first: %v): WatchDuration %v, want %v", tt.name, closeFirst, got, tt.want)
			}
		}
	}
}

// Every order of a session's open and close, each delivered twice, in one
// batch or in several, leaves the same row; a close alone leaves a closed
// row without a start, which its open completes.
func testOrderDoesNotMatter(t *testing.T, o opener) {
	st := store(t, o)
	op := openEvent("", "", at(time.Second))
	c := closeEvent("", "", at(61*time.Second+500*time.Millisecond), history.EndBroadcastEnded)
	orders := [][]history.Event{
		{op, c}, {c, op}, {op, op, c, c}, {c, c, op, op}, {op, c, op, c}, {c, op, c, op}, {c, op, op, c},
	}
	n := 0
	for i, order := range orders {
		for _, oneBatch := range []bool{false, true} {
			n++
			id, user := fmt.Sprintf("s%d", n), fmt.Sprintf("u%d", n)
			var batch []history.Event
			for _, e := range order {
				e.SessionID, e.UserID, e.ParticipantID = id, user, "p-"+id
				batch = append(batch, e)
			}
			if oneBatch {
				apply(t, st, batch...)
			} else {
				for _, e := range batch {
					apply(t, st, e)
				}
			}
			want := fullSession(id, user, op.At, c.At, 60*time.Second, history.EndBroadcastEnded)
			if got := one(t, st, user); got != want {
				t.Errorf("order %d (one batch: %v):\n got %+v\nwant %+v", i, oneBatch, got, want)
			}
		}
	}

	// The close alone: a closed session whose start is unknown, with the
	// close's instance until the open comes.
	apply(t, st, closeEvent("late", "ul", at(time.Minute), history.EndExpired))
	c = closeEvent("late", "ul", at(time.Minute), history.EndExpired)
	diff(t, one(t, st, "ul"), history.Session{
		SessionID: "late", BroadcastID: c.BroadcastID, UserID: "ul", StageArn: c.StageArn, ParticipantID: c.ParticipantID,
		Instance: c.Instance, LeftAt: c.At, EndReason: history.EndExpired,
	})
	apply(t, st, openEvent("late", "ul", at(0)))
	diff(t, one(t, st, "ul"), fullSession("late", "ul", at(0), at(time.Minute), time.Minute, history.EndExpired))
}

func testFirstCloseKept(t *testing.T, o opener) {
	st := store(t, o)
	apply(t, st, openEvent("s1", "u1", at(0)))
	apply(t, st, closeEvent("s1", "u1", at(30*time.Second), history.EndLeave),
		closeEvent("s1", "u1", at(75*time.Second), history.EndExpired))
	apply(t, st, closeEvent("s1", "u1", at(99*time.Second), history.EndStageRemoved))
	diff(t, one(t, st, "u1"), fullSession("s1", "u1", at(0), at(30*time.Second), 30*time.Second, history.EndLeave))

	// Before the open too.
	apply(t, st, closeEvent("s2", "u2", at(40*time.Second), history.EndStageRemoved))
	apply(t, st, closeEvent("s2", "u2", at(50*time.Second), history.EndLeave))
	apply(t, st, openEvent("s2", "u2", at(0)))
	diff(t, one(t, st, "u2"), fullSession("s2", "u2", at(0), at(40*time.Second), 40*time.Second, history.EndStageRemoved))
}

func testInvalidBatchRefused(t *testing.T, o opener) {
	st := store(t, o)
	valid := openEvent("ok", "u1", at(0))
	tests := []struct {
		name string
		edit func(*history.Event)
	}{
		{"no kind", func(e *history.Event) { e.Kind = 0 }},
		{"no session id", func(e *history.Event) { e.SessionID = "" }},
		{"no user", func(e *history.Event) { e.UserID = "" }},
		{"no stage", func(e *history.Event) { e.StageArn = "" }},
		{"no time", func(e *history.Event) { e.At = time.Time{} }},
		{"open with a reason", func(e *history.Event) { e.EndReason = history.EndLeave }},
		{"close without a reason", func(e *history.Event) { e.Kind = history.Close }},
		{"close with an unknown reason", func(e *history.Event) { e.Kind, e.EndReason = history.Close, "kicked" }},
	}
	for _, tt := range tests {
		bad := openEvent("bad", "u1", at(time.Second))
		tt.edit(&bad)
		if err := st.Apply(t.Context(), []history.Event{valid, bad}); !errors.Is(err, history.ErrInvalid) {
			t.Errorf("%s: Apply: %v, want ErrInvalid", tt.name, err)
		}
	}
	if ss := sessions(t, st, "u1"); len(ss) != 0 {
		t.Errorf("refused batches recorded %+v", ss)
	}
	snaps := []history.Snapshot{
		{StageArn: "arn:s", At: at(0), Viewers: 1},
		{StageArn: "", At: at(0)},
		{StageArn: "arn:s", At: time.Time{}},
		{StageArn: "arn:s", At: at(0), Viewers: -1},
	}
	for i := 1; i < len(snaps); i++ {
		if err := st.PutSnapshots(t.Context(), []history.Snapshot{snaps[0], snaps[i]}); !errors.Is(err, history.ErrInvalid) {
			t.Errorf("PutSnapshots(%+v): %v, want ErrInvalid", snaps[i], err)
		}
	}
	if err := st.Apply(t.Context(), nil); err != nil {
		t.Errorf("Apply(nil): %v", err)
	}
	if err := st.PutSnapshots(t.Context(), nil); err != nil {
		t.Errorf("PutSnapshots(nil): %v", err)
	}
}

// Instances write the same sessions at once, in different orders: each
// session ends as one closed row.
func testConcurrentApply(t *testing.T, o opener) {
	st := store(t, o)
	const sessionsN, writers = 200, 4
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			var batch []history.Event
			for i := range sessionsN {
				// Writers walk the sessions in opposite directions.
				if w%2 == 1 {
					i = sessionsN - 1 - i
				}
				id := fmt.Sprintf("s%03d", i)
				op := openEvent(id, "u", at(time.Duration(i)*time.Second))
				c := closeEvent(id, "u", at(time.Duration(i)*time.Second+time.Minute), history.EndLeave)
				if w < 2 {
					batch = append(batch, op, c)
				} else {
					batch = append(batch, c, op)
				}
				if len(batch) >= 50 {
					if err := st.Apply(t.Context(), batch); err != nil {
						errs <- err
						return
					}
					batch = nil
				}
			}
			if err := st.Apply(t.Context(), batch); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Apply: %v", err)
	}
	ss := sessions(t, st, "u")
	if len(ss) != sessionsN {
		t.Fatalf("%d sessions, want %d", len(ss), sessionsN)
	}
	for _, s := range ss {
		if s.WatchDuration != time.Minute || s.EndReason != history.EndLeave || s.Instance != "i-open" {
			t.Errorf("session %+v: want a minute's, left, opened by i-open", s)
		}
	}
}

func testHistoryPaging(t *testing.T, o opener) {
	st := store(t, o)
	// u1's sessions; two start at the same instant (ordered by session id
	// then), and one is known only by its close, ordered by left_at.
	apply(t, st,
		openEvent("a", "u1", at(1*time.Minute)),
		openEvent("b", "u1", at(2*time.Minute)),
		openEvent("c", "u1", at(3*time.Minute)),
		openEvent("d", "u1", at(3*time.Minute)),
		closeEvent("e", "u1", at(4*time.Minute), history.EndExpired),
		openEvent("f", "u1", at(5*time.Minute)),
		openEvent("g", "u1", at(6*time.Minute)),
		openEvent("other", "u2", at(10*time.Minute)),
	)
	want := []string{"g", "f", "e", "d", "c", "b", "a"}

	tests := []struct {
		limit     int
		wantPages []int
	}{
		{1, []int{1, 1, 1, 1, 1, 1, 1}},
		{3, []int{3, 3, 1}},
		{7, []int{7}},
		{0, []int{7}},  // DefaultPageSize
		{-1, []int{7}}, // DefaultPageSize
		{history.MaxPageSize + 1, []int{7}},
	}
	for _, tt := range tests {
		var got []string
		var pages []int
		cursor := ""
		for {
			page, next, total, err := st.History(t.Context(), "u1", tt.limit, cursor)
			if err != nil {
				t.Fatalf("limit %d: History: %v", tt.limit, err)
			}
			if total != 7 {
				t.Errorf("limit %d: total %d, want 7", tt.limit, total)
			}
			pages = append(pages, len(page))
			for _, s := range page {
				got = append(got, s.SessionID)
			}
			if next == "" {
				break
			}
			if len(pages) > 10 {
				t.Fatalf("limit %d: no end after %v", tt.limit, pages)
			}
			cursor = next
		}
		if !slices.Equal(got, want) || !slices.Equal(pages, tt.wantPages) {
			t.Errorf("limit %d: sessions %v in pages %v, want %v in %v", tt.limit, got, pages, want, tt.wantPages)
		}
	}

	page, next, total, err := st.History(t.Context(), "nobody", 10, "")
	if err != nil || len(page) != 0 || next != "" || total != 0 {
		t.Errorf("History(nobody) = %v, %q, %d, %v; want nothing", page, next, total, err)
	}
	for _, bad := range []string{"!!", "bm90LWEtY3Vyc29y", "MTIz"} {
		if _, _, _, err := st.History(t.Context(), "u1", 10, bad); !errors.Is(err, history.ErrInvalid) {
			t.Errorf("History(cursor %q): %v, want ErrInvalid", bad, err)
		}
	}
}

func testStageStats(t *testing.T, o opener) {
	st := store(t, o)
	stage := func(e history.Event, arn string) history.Event { e.StageArn = arn; return e }
	const a, b = "arn:stage/a", "arn:stage/b"
	apply(t, st,
		// Before since: not counted.
		stage(openEvent("old", "u1", at(-time.Hour)), a),
		stage(closeEvent("old", "u1", at(-time.Hour+time.Minute), history.EndLeave), a),
		// Counted: u1 twice, u2, u3 open, u4 known by its close only.
		stage(openEvent("s1", "u1", at(0)), a),
		stage(closeEvent("s1", "u1", at(10*time.Second), history.EndLeave), a),
		stage(openEvent("s2", "u1", at(time.Minute)), a),
		stage(closeEvent("s2", "u1", at(time.Minute+20*time.Second), history.EndExpired), a),
		stage(openEvent("s3", "u2", at(2*time.Minute)), a),
		stage(closeEvent("s3", "u2", at(3*time.Minute), history.EndLeave), a),
		stage(openEvent("s4", "u3", at(3*time.Minute)), a),
		stage(closeEvent("s5", "u4", at(4*time.Minute), history.EndLeave), a),
		// Another stage.
		stage(openEvent("s6", "u1", at(0)), b),
		stage(closeEvent("s6", "u1", at(time.Hour), history.EndLeave), b),
	)
	tests := []struct {
		arn   string
		since time.Time
		want  history.Stats
	}{
		{a, at(0), history.Stats{TotalViews: 5, UniqueViewers: 4, AvgWatchDuration: 30 * time.Second,
			MaxWatchDuration: time.Minute, TotalWatchTime: 90 * time.Second}},
		{a, time.Time{}, history.Stats{TotalViews: 6, UniqueViewers: 4, AvgWatchDuration: 150 * time.Second / 4,
			MaxWatchDuration: time.Minute, TotalWatchTime: 150 * time.Second}},
		{a, at(3*time.Minute + time.Second), history.Stats{TotalViews: 1, UniqueViewers: 1}},
		{b, at(0), history.Stats{TotalViews: 1, UniqueViewers: 1, AvgWatchDuration: time.Hour,
			MaxWatchDuration: time.Hour, TotalWatchTime: time.Hour}},
		{"arn:stage/none", time.Time{}, history.Stats{}},
	}
	for _, tt := range tests {
		got, err := st.StageStats(t.Context(), tt.arn, tt.since)
		if err != nil {
			t.Fatalf("StageStats(%s, %v): %v", tt.arn, tt.since, err)
		}
		if got != tt.want {
			t.Errorf("StageStats(%s, %v) = %+v, want %+v", tt.arn, tt.since, got, tt.want)
		}
	}
}

func snap(broadcast, arn string, when time.Time, viewers int) history.Snapshot {
	return history.Snapshot{StageArn: arn, BroadcastID: broadcast, Role: "replica", ReplicationState: "active",
		Viewers: viewers, Capacity: 100, At: when}
}

func testSeries(t *testing.T, o opener) {
	st := store(t, o)
	putSnapshots(t, st,
		// Step 0 [0, 10s): two instants, the second has more viewers.
		snap("b1", "s/a", at(0), 5), snap("b1", "s/b", at(0), 1),
		snap("b1", "s/a", at(5*time.Second), 9), snap("b1", "s/b", at(5*time.Second), 4),
		// Step 1: nothing. Step 2: three stages.
		snap("b1", "s/a", at(20*time.Second), 2), snap("b1", "s/b", at(20*time.Second), 2), snap("b1", "s/c", at(20*time.Second), 2),
		// At to: excluded.
		snap("b1", "s/a", at(30*time.Second), 50),
		// Another broadcast, the same instant.
		snap("b2", "s/x", at(5*time.Second), 1000),
	)
	// Written again (a retried batch): ignored.
	putSnapshots(t, st, snap("b1", "s/a", at(5*time.Second), 9))

	got, err := st.Series(t.Context(), "b1", at(0), at(30*time.Second), 10*time.Second)
	if err != nil {
		t.Fatalf("Series: %v", err)
	}
	want := []history.Point{
		{At: at(0), Viewers: 13, Stages: 2},
		{At: at(10 * time.Second)},
		{At: at(20 * time.Second), Viewers: 6, Stages: 3},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Series =\n%+v\nwant\n%+v", got, want)
	}

	// A range that is not a whole number of steps ends with a part step.
	got, err = st.Series(t.Context(), "b1", at(5*time.Second), at(21*time.Second), 10*time.Second)
	if err != nil || len(got) != 2 || got[0].Viewers != 13 || got[1].Viewers != 6 {
		t.Errorf("Series(5s..21s) = %+v, %v; want 13 then 6 viewers", got, err)
	}

	tests := []struct {
		name     string
		from, to time.Time
		step     time.Duration
		wantErr  bool
		wantLen  int
	}{
		{"zero step", at(0), at(time.Minute), 0, true, 0},
		{"negative step", at(0), at(time.Minute), -time.Second, true, 0},
		{"too many points", at(0), at(time.Hour), time.Millisecond, true, 0},
		{"empty range", at(time.Minute), at(time.Minute), time.Second, false, 0},
		{"reversed range", at(time.Minute), at(0), time.Second, false, 0},
		{"most points", at(0), at(history.MaxSeriesPoints * time.Second), time.Second, false, history.MaxSeriesPoints},
	}
	for _, tt := range tests {
		got, err := st.Series(t.Context(), "b1", tt.from, tt.to, tt.step)
		if tt.wantErr != errors.Is(err, history.ErrInvalid) || (!tt.wantErr && err != nil) {
			t.Errorf("%s: Series error %v, want ErrInvalid: %v", tt.name, err, tt.wantErr)
		}
		if len(got) != tt.wantLen {
			t.Errorf("%s: %d points, want %d", tt.name, len(got), tt.wantLen)
		}
	}
}

func testBroadcastStats(t *testing.T, o opener) {
	st := store(t, o)
	in := func(e history.Event, broadcast, arn string) history.Event {
		e.BroadcastID, e.StageArn = broadcast, arn
		return e
	}
	apply(t, st,
		in(openEvent("s1", "u1", at(0)), "b1", "s/a"),
		in(closeEvent("s1", "u1", at(100*time.Second), history.EndLeave), "b1", "s/a"),
		in(openEvent("s2", "u1", at(time.Minute)), "b1", "s/b"),
		in(closeEvent("s2", "u1", at(time.Minute+50*time.Second), history.EndBroadcastEnded), "b1", "s/b"),
		in(openEvent("s3", "u2", at(time.Minute)), "b1", "s/b"),
		in(openEvent("s4", "u9", at(0)), "b2", "s/z"),
	)
	putSnapshots(t, st,
		snap("b1", "s/a", at(0), 3), snap("b1", "s/b", at(0), 4),
		// The peak, reached twice: the first instant counts.
		snap("b1", "s/a", at(10*time.Second), 5), snap("b1", "s/b", at(10*time.Second), 6),
		snap("b1", "s/a", at(20*time.Second), 10), snap("b1", "s/b", at(20*time.Second), 1),
		// A stage known only from snapshots.
		snap("b1", "s/c", at(30*time.Second), 0),
		snap("b2", "s/z", at(10*time.Second), 500),
	)
	got, err := st.BroadcastStats(t.Context(), "b1")
	if err != nil {
		t.Fatalf("BroadcastStats: %v", err)
	}
	want := history.BroadcastStats{PeakViewers: 11, PeakAt: at(10 * time.Second), UniqueViewers: 2, Sessions: 3,
		TotalWatchTime: 150 * time.Second, AvgWatchTime: 75 * time.Second, Stages: 3}
	if !got.PeakAt.Equal(want.PeakAt) || got.PeakAt.Location() != time.UTC {
		t.Errorf("PeakAt %v, want %v in UTC", got.PeakAt, want.PeakAt)
	}
	got.PeakAt = want.PeakAt
	if got != want {
		t.Errorf("BroadcastStats(b1) =\n%+v\nwant\n%+v", got, want)
	}
	if got, err := st.BroadcastStats(t.Context(), "none"); err != nil || got != (history.BroadcastStats{}) {
		t.Errorf("BroadcastStats(none) = %+v, %v; want zero", got, err)
	}
}

func testPrune(t *testing.T, o opener) {
	st := store(t, o)
	cut := at(time.Hour)
	apply(t, st,
		openEvent("ended-before", "u", at(0)), closeEvent("ended-before", "u", at(time.Minute), history.EndLeave),
		openEvent("ended-after", "u", at(0)), closeEvent("ended-after", "u", at(2*time.Hour), history.EndLeave),
		openEvent("open-before", "u", at(0)),
		openEvent("open-after", "u", at(2*time.Hour)),
		closeEvent("close-only-before", "u", at(time.Minute), history.EndExpired),
		closeEvent("close-only-after", "u", at(2*time.Hour), history.EndExpired),
		openEvent("ended-at-cut", "u", at(0)), closeEvent("ended-at-cut", "u", cut, history.EndLeave),
	)
	putSnapshots(t, st, snap("b", "s/a", at(0), 1), snap("b", "s/a", cut, 1), snap("b", "s/a", at(2*time.Hour), 1))

	n, err := st.Prune(t.Context(), cut)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if n != 4 {
		t.Errorf("Prune deleted %d rows, want 4 (3 sessions, 1 snapshot)", n)
	}
	var left []string
	for _, s := range sessions(t, st, "u") {
		left = append(left, s.SessionID)
	}
	slices.Sort(left)
	if want := []string{"close-only-after", "ended-after", "ended-at-cut", "open-after"}; !slices.Equal(left, want) {
		t.Errorf("after Prune: %v, want %v", left, want)
	}
	if pts, err := st.Series(t.Context(), "b", at(0), at(3*time.Hour), time.Hour); err != nil ||
		len(pts) != 3 || pts[0].Stages != 0 || pts[1].Stages != 1 || pts[2].Stages != 1 {
		t.Errorf("snapshots after Prune: %+v, %v; want the first gone", pts, err)
	}
	if n, err := st.Prune(t.Context(), cut); err != nil || n != 0 {
		t.Errorf("Prune again = %d, %v; want 0", n, err)
	}
}

func testMigrationsOnce(t *testing.T, o opener) {
	st, applied := o.open(t)
	if len(applied) == 0 || !slices.IsSorted(applied) || applied[0] != 1 {
		t.Fatalf("first opening applied %v, want 1, 2, … in order", applied)
	}
	apply(t, st, openEvent("s1", "u1", at(0)))
	putSnapshots(t, st, snap("b1", "s/a", at(0), 7))
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range 2 {
		again, applied := o.open(t)
		if len(applied) != 0 {
			t.Errorf("opening again applied %v, want none", applied)
		}
		diff(t, one(t, again, "u1"), fullSession("s1", "u1", at(0), time.Time{}, 0, ""))
		if bs, err := again.BroadcastStats(t.Context(), "b1"); err != nil || bs.PeakViewers != 7 {
			t.Errorf("BroadcastStats after reopening = %+v, %v; want the snapshot kept", bs, err)
		}
	}
}

// Instances started together migrate one new database between them.
func testConcurrentOpen(t *testing.T, o opener) {
	const n = 3
	applied := make([][]int, n)
	stores := make([]history.Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { stores[i], applied[i], errs[i] = o.raw(t.Context()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("opening %d: %v", i, err)
			continue
		}
		if err := stores[i].Close(); err != nil {
			t.Errorf("Close %d: %v", i, err)
		}
	}
	var all []int
	for _, a := range applied {
		all = append(all, a...)
	}
	slices.Sort(all)
	if len(all) == 0 || all[0] != 1 || all[len(all)-1] != len(all) {
		t.Errorf("openings applied %v: want every version exactly once", applied)
	}
}

// Columns are the columns of each table, in order, on every database: the
// previous server's, then stagefleet's.
var Columns = map[string][]string{
	"viewer_sessions": {"id", "user_id", "stage_arn", "participant_id", "joined_at", "left_at",
		"watch_duration_seconds", "user_agent", "ip_address", "country_code", "created_at",
		"broadcast_id", "session_id", "end_reason", "instance"},
	"viewer_stats_snapshots": {"id", "stage_arn", "snapshot_time", "viewer_count", "created_at",
		"broadcast_id", "role", "replication_state", "capacity"},
}

// Text PostgreSQL would refuse (NUL, invalid UTF-8) is cleaned, the same on
// every database, rather than failing the batch.
func testTextCleaned(t *testing.T, o opener) {
	st := store(t, o)
	e := openEvent("s1", "u1", at(0))
	e.UserAgent, e.CountryCode = "Bot\x00/1.0 \xff\xfe", "T\x00W"
	apply(t, st, e)
	got := one(t, st, "u1")
	if got.UserAgent != "Bot/1.0 \uFFFD" || got.CountryCode != "TW" {
		t.Errorf("user agent %q, country %q; want %q, %q", got.UserAgent, got.CountryCode, "Bot/1.0 \uFFFD", "TW")
	}
	sn := snap("b\x00", "s/\xff", at(0), 1)
	putSnapshots(t, st, sn)
	if bs, err := st.BroadcastStats(t.Context(), "b"); err != nil || bs.PeakViewers != 1 {
		t.Errorf("BroadcastStats(b) = %+v, %v; want the cleaned snapshot", bs, err)
	}
}
