// Package histsql is what the SQL implementations of history.Store share:
// their embedded migrations, the page cursor and the folding of snapshot
// instants into a series. Sharing them is what makes a cursor, a series and
// a schema version mean the same on every database.
package histsql

import (
	"embed"
	"encoding/base64"
	"fmt"
	"io/fs"
	"math"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/stagefleet/stagefleet/internal/history"
)

// Dialects whose migrations are embedded.
const (
	Postgres = "postgres"
	SQLite   = "sqlite"
)

//go:embed migrations
var migrations embed.FS

// Migration is one schema step, applied once, in version order.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// MigrationsTable records the applied versions, one row each.
const MigrationsTable = "history_schema_migrations"

// Migrations returns a dialect's migrations, in version order. Their files
// are named NNNN_name.sql, and versions run from 1 without a gap, so that a
// file added out of order fails every test instead of a deployment.
func Migrations(dialect string) ([]Migration, error) {
	return load(migrations, path.Join("migrations", dialect))
}

func load(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("reading migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		base, ok := strings.CutSuffix(e.Name(), ".sql")
		if !ok || e.IsDir() {
			return nil, fmt.Errorf("migration %s: not an .sql file", e.Name())
		}
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || len(num) != 4 || name == "" {
			return nil, fmt.Errorf("migration %s: want NNNN_name.sql", e.Name())
		}
		body, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", e.Name(), err)
		}
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(body)})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration %04d_%s: want version %d", m.Version, m.Name, i+1)
		}
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("no migrations in %s", dir)
	}
	return ms, nil
}

// Pending returns the migrations whose versions are not in applied, in
// order. Versions in applied that ms lacks were applied by a newer release;
// they are left alone, since migrations only add, and an older release
// still works on the schema they made (rolling back a deployment must not
// stop it from starting).
func Pending(ms []Migration, applied []int) []Migration {
	var out []Migration
	for _, m := range ms {
		if !slices.Contains(applied, m.Version) {
			out = append(out, m)
		}
	}
	return out
}

// PageSize applies History's limit rules.
func PageSize(limit int) int {
	switch {
	case limit <= 0:
		return history.DefaultPageSize
	case limit > history.MaxPageSize:
		return history.MaxPageSize
	}
	return limit
}

// Cursor is the position after the last session of a page: its sort time
// (joined_at, or left_at while the start is unknown) and its session id.
type Cursor struct {
	At        time.Time
	SessionID string
}

// Encode makes the opaque cursor string. Times are kept to the microsecond,
// as both databases keep them.
func (c Cursor) Encode() string {
	raw := strconv.FormatInt(c.At.UnixMicro(), 10) + "/" + c.SessionID
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

// DecodeCursor reads a cursor made by Encode.
func DecodeCursor(s string) (Cursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Cursor{}, fmt.Errorf("%w: cursor %q", history.ErrInvalid, s)
	}
	micros, id, ok := strings.Cut(string(raw), "/")
	us, err := strconv.ParseInt(micros, 10, 64)
	if !ok || err != nil || id == "" {
		return Cursor{}, fmt.Errorf("%w: cursor %q", history.ErrInvalid, s)
	}
	return Cursor{At: time.UnixMicro(us).UTC(), SessionID: id}, nil
}

// Instant is a broadcast's snapshots at one instant, summed over its stages.
type Instant struct {
	At      time.Time
	Viewers int
	Stages  int
}

// SeriesSteps checks Series's arguments and answers how many points it
// returns.
func SeriesSteps(from, to time.Time, step time.Duration) (int, error) {
	if step <= 0 {
		return 0, fmt.Errorf("%w: series step %v", history.ErrInvalid, step)
	}
	if !to.After(from) {
		return 0, nil
	}
	// Checked with Add, not Sub: Sub saturates at about 292 years, and a
	// step times the point count must itself fit in a Duration.
	if step > time.Duration(math.MaxInt64/history.MaxSeriesPoints) ||
		from.Add(history.MaxSeriesPoints*step).Before(to) {
		return 0, fmt.Errorf("%w: series from %s to %s by %v is more than %d points",
			history.ErrInvalid, from.Format(time.RFC3339), to.Format(time.RFC3339), step, history.MaxSeriesPoints)
	}
	span := to.Sub(from)
	n := span / step
	if span%step != 0 {
		n++
	}
	return int(n), nil
}

// Fold makes n points of step from from out of instants within
// [from, from+n*step): each point keeps the most viewers and the most stages
// of its instants.
func Fold(from time.Time, step time.Duration, n int, instants []Instant) []history.Point {
	points := make([]history.Point, n)
	for i := range points {
		points[i].At = from.Add(time.Duration(i) * step)
	}
	for _, in := range instants {
		if in.At.Before(from) {
			continue // Sub's quotient would round it into step 0
		}
		i := int(in.At.Sub(from) / step)
		if i >= n {
			continue
		}
		points[i].Viewers = max(points[i].Viewers, in.Viewers)
		points[i].Stages = max(points[i].Stages, in.Stages)
	}
	return points
}

// Average divides a total watch time in seconds by the sessions it sums,
// zero for none.
func Average(totalSeconds, sessions int64) time.Duration {
	if sessions == 0 {
		return 0
	}
	return time.Duration(totalSeconds) * time.Second / time.Duration(sessions)
}

// CleanEvent makes every text of e storable: PostgreSQL refuses NUL bytes
// and invalid UTF-8 in text, and a user agent sent by a client may hold
// either. A refused event would fail its whole batch on every retry, so
// both databases store the same cleaned text instead: NULs removed,
// each run of invalid bytes replaced with U+FFFD.
func CleanEvent(e history.Event) history.Event {
	for _, s := range []*string{&e.SessionID, &e.BroadcastID, &e.UserID, &e.StageArn, &e.ParticipantID,
		&e.Instance, &e.EndReason, &e.UserAgent, &e.IPAddress, &e.CountryCode} {
		*s = clean(*s)
	}
	return e
}

// CleanSnapshot is CleanEvent for a snapshot.
func CleanSnapshot(s history.Snapshot) history.Snapshot {
	for _, p := range []*string{&s.StageArn, &s.BroadcastID, &s.Role, &s.ReplicationState} {
		*p = clean(*p)
	}
	return s
}

func clean(s string) string {
	if utf8.ValidString(s) && !strings.Contains(s, "\x00") {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
}

// NextPage cuts a page read with one row more than limit to limit rows,
// and answers the cursor of the rest ("" when there is none): the last
// row's place in the order, its joined_at (left_at for a session whose
// start is unknown) and its id.
func NextPage(page []history.Session, limit int) ([]history.Session, string) {
	if len(page) <= limit {
		return page, ""
	}
	page = page[:limit]
	last := page[limit-1]
	at := last.JoinedAt
	if at.IsZero() {
		at = last.LeftAt
	}
	return page, Cursor{At: at, SessionID: last.SessionID}.Encode()
}

// Validate refuses a batch (of events or snapshots) with an invalid
// record, whole.
func Validate[T interface{ Validate() error }](batch []T) error {
	for _, r := range batch {
		if err := r.Validate(); err != nil {
			return err
		}
	}
	return nil
}
