// Package sqlite is history.Store on SQLite, a file under the data
// directory: the embedded default, which needs no server. It uses
// modernc.org/sqlite, a SQLite without cgo, so the binary stays static.
//
// Times are stored as integer microseconds since the Unix epoch (SQLite has
// no time type); otherwise the schema is PostgreSQL's.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"modernc.org/sqlite" // the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/history/internal/histsql"
)

// FileName is the database's file in the data directory. SQLite keeps two
// more beside it while open: FileName-wal and FileName-shm.
const FileName = "history.db"

// Store is history.Store on one SQLite file.
type Store struct {
	// write has one connection: SQLite takes one writer at a time, and
	// queuing writers here is cheaper than their retrying on SQLITE_BUSY.
	write *sql.DB
	// read serves queries; in WAL mode they run beside the writer.
	read    *sql.DB
	applied []int
}

var _ history.Store = (*Store)(nil)

// Open opens the history database in dir, creating dir and the database
// when missing, and applies the migrations it lacks, all in one
// transaction that excludes every other writer of the file (another Open
// included). Migrations a newer release applied are left alone.
func Open(ctx context.Context, dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("history: creating %s: %w", dir, err)
	}
	// WAL lets queries run beside the writer; synchronous=NORMAL in WAL
	// mode loses no committed transaction when the process crashes, only,
	// possibly, the last ones on a power loss, which history can afford.
	// Writes begin IMMEDIATE so that a transaction never has to upgrade its
	// lock half-way (which fails at once with SQLITE_BUSY).
	dsn := "file:" + filepath.Join(dir, FileName) +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	write, err := sql.Open("sqlite", dsn+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("history: opening %s: %w", dir, err)
	}
	write.SetMaxOpenConns(1)
	applied, err := migrate(ctx, write)
	// Instances opening a new database together race to set its journal
	// mode, which SQLite can refuse at once with SQLITE_BUSY instead of
	// waiting out busy_timeout: try again, as long as busy_timeout.
	for deadline := time.Now().Add(10 * time.Second); busy(err) && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
		applied, err = migrate(ctx, write)
	}
	if err != nil {
		write.Close()
		return nil, err
	}
	read, err := sql.Open("sqlite", dsn+"&_pragma=query_only(1)")
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("history: opening %s: %w", dir, err)
	}
	read.SetMaxOpenConns(4)
	return &Store{write: write, read: read, applied: applied}, nil
}

// busy says err is SQLite's SQLITE_BUSY (of any extended code).
func busy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// AppliedMigrations returns the versions of the migrations this Open
// applied, in order: none when the schema was already current.
func (s *Store) AppliedMigrations() []int { return s.applied }

func migrate(ctx context.Context, db *sql.DB) (applied []int, err error) {
	ms, err := histsql.Migrations(histsql.SQLite)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("history: migrating: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+histsql.MigrationsTable+` (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL)`); err != nil {
		return nil, fmt.Errorf("history: creating %s: %w", histsql.MigrationsTable, err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT version FROM `+histsql.MigrationsTable)
	if err != nil {
		return nil, fmt.Errorf("history: reading %s: %w", histsql.MigrationsTable, err)
	}
	var done []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return nil, fmt.Errorf("history: reading %s: %w", histsql.MigrationsTable, err)
		}
		done = append(done, v)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, fmt.Errorf("history: reading %s: %w", histsql.MigrationsTable, err)
	}
	for _, m := range histsql.Pending(ms, done) {
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return nil, fmt.Errorf("history: migration %04d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+histsql.MigrationsTable+` (version, name, applied_at) VALUES (?, ?, ?)`,
			m.Version, m.Name, time.Now().UnixMicro()); err != nil {
			return nil, fmt.Errorf("history: recording migration %04d: %w", m.Version, err)
		}
		applied = append(applied, m.Version)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("history: migrating: %w", err)
	}
	return applied, nil
}

// Close closes the database.
func (s *Store) Close() error {
	return errors.Join(s.read.Close(), s.write.Close())
}

// The open's columns win over a close's, whichever came first, so the row
// ends the same in any order; a second open finds joined_at set and
// changes nothing.
const openSQL = `INSERT INTO viewer_sessions
	(session_id, broadcast_id, user_id, stage_arn, participant_id, instance, joined_at, user_agent, ip_address, country_code)
	VALUES (?1, ?2, ?3, ?4, NULLIF(?5, ''), ?6, ?7, NULLIF(?8, ''), NULLIF(?9, ''), NULLIF(?10, ''))
	ON CONFLICT (session_id) DO UPDATE SET
		broadcast_id = excluded.broadcast_id, user_id = excluded.user_id, stage_arn = excluded.stage_arn,
		participant_id = excluded.participant_id, instance = excluded.instance, joined_at = excluded.joined_at,
		user_agent = excluded.user_agent, ip_address = excluded.ip_address, country_code = excluded.country_code,
		watch_duration_seconds = CASE WHEN viewer_sessions.left_at IS NOT NULL
			THEN MAX(0, (viewer_sessions.left_at - excluded.joined_at) / 1000000) END
	WHERE viewer_sessions.joined_at IS NULL`

// The first close recorded is the one kept.
const closeSQL = `INSERT INTO viewer_sessions
	(session_id, broadcast_id, user_id, stage_arn, participant_id, instance, left_at, end_reason)
	VALUES (?1, ?2, ?3, ?4, NULLIF(?5, ''), ?6, ?7, ?8)
	ON CONFLICT (session_id) DO UPDATE SET
		left_at = excluded.left_at, end_reason = excluded.end_reason,
		watch_duration_seconds = CASE WHEN viewer_sessions.joined_at IS NOT NULL
			THEN MAX(0, (excluded.left_at - viewer_sessions.joined_at) / 1000000) END
	WHERE viewer_sessions.left_at IS NULL`

// Apply implements history.Store.
func (s *Store) Apply(ctx context.Context, events []history.Event) error {
	if err := histsql.Validate(events); err != nil {
		return err
	}
	if len(events) == 0 {
		return nil
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		open, err := tx.PrepareContext(ctx, openSQL)
		if err != nil {
			return err
		}
		defer open.Close()
		closing, err := tx.PrepareContext(ctx, closeSQL)
		if err != nil {
			return err
		}
		defer closing.Close()
		for _, e := range events {
			e = histsql.CleanEvent(e)
			if e.Kind == history.Open {
				_, err = open.ExecContext(ctx, e.SessionID, e.BroadcastID, e.UserID, e.StageArn, e.ParticipantID,
					e.Instance, e.At.UnixMicro(), e.UserAgent, e.IPAddress, e.CountryCode)
			} else {
				_, err = closing.ExecContext(ctx, e.SessionID, e.BroadcastID, e.UserID, e.StageArn, e.ParticipantID,
					e.Instance, e.At.UnixMicro(), e.EndReason)
			}
			if err != nil {
				return fmt.Errorf("session %s: %w", e.SessionID, err)
			}
		}
		return nil
	})
}

// PutSnapshots implements history.Store.
func (s *Store) PutSnapshots(ctx context.Context, snaps []history.Snapshot) error {
	if err := histsql.Validate(snaps); err != nil {
		return err
	}
	if len(snaps) == 0 {
		return nil
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO viewer_stats_snapshots
			(stage_arn, snapshot_time, viewer_count, broadcast_id, role, replication_state, capacity)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (stage_arn, snapshot_time) DO NOTHING`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, sn := range snaps {
			sn = histsql.CleanSnapshot(sn)
			if _, err := stmt.ExecContext(ctx, sn.StageArn, sn.At.UnixMicro(), sn.Viewers, sn.BroadcastID,
				sn.Role, sn.ReplicationState, sn.Capacity); err != nil {
				return fmt.Errorf("snapshot of %s: %w", sn.StageArn, err)
			}
		}
		return nil
	})
}

func (s *Store) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if err := fn(tx); err != nil {
		return errors.Join(fmt.Errorf("history: %w", err), tx.Rollback())
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

const sessionColumns = `id, session_id, broadcast_id, user_id, stage_arn, COALESCE(participant_id, ''), instance,
	joined_at, left_at, watch_duration_seconds, COALESCE(end_reason, ''),
	COALESCE(user_agent, ''), COALESCE(ip_address, ''), COALESCE(country_code, ''), created_at`

// History implements history.Store.
func (s *Store) History(ctx context.Context, userID string, limit int, cursor string) ([]history.Session, string, int, error) {
	limit = histsql.PageSize(limit)
	query := `SELECT ` + sessionColumns + ` FROM viewer_sessions WHERE user_id = ?1
		ORDER BY COALESCE(joined_at, left_at) DESC, session_id DESC LIMIT ?2`
	args := []any{userID, limit + 1}
	if cursor != "" {
		c, err := histsql.DecodeCursor(cursor)
		if err != nil {
			return nil, "", 0, err
		}
		query = `SELECT ` + sessionColumns + ` FROM viewer_sessions
			WHERE user_id = ?1 AND (COALESCE(joined_at, left_at), session_id) < (?3, ?4)
			ORDER BY COALESCE(joined_at, left_at) DESC, session_id DESC LIMIT ?2`
		args = append(args, c.At.UnixMicro(), c.SessionID)
	}
	rows, err := s.read.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, "", 0, fmt.Errorf("history: sessions of %s: %w", userID, err)
	}
	defer rows.Close()
	var page []history.Session
	for rows.Next() {
		var (
			ss                  history.Session
			joined, left, watch sql.NullInt64
			created             int64
		)
		if err := rows.Scan(&ss.ID, &ss.SessionID, &ss.BroadcastID, &ss.UserID, &ss.StageArn, &ss.ParticipantID,
			&ss.Instance, &joined, &left, &watch, &ss.EndReason, &ss.UserAgent, &ss.IPAddress, &ss.CountryCode,
			&created); err != nil {
			return nil, "", 0, fmt.Errorf("history: sessions of %s: %w", userID, err)
		}
		ss.JoinedAt, ss.LeftAt = fromMicros(joined), fromMicros(left)
		ss.WatchDuration = time.Duration(watch.Int64) * time.Second
		ss.CreatedAt = time.UnixMicro(created).UTC()
		page = append(page, ss)
	}
	if err := rows.Err(); err != nil {
		return nil, "", 0, fmt.Errorf("history: sessions of %s: %w", userID, err)
	}
	page, next := histsql.NextPage(page, limit)
	var total int
	if err := s.read.QueryRowContext(ctx, `SELECT COUNT(*) FROM viewer_sessions WHERE user_id = ?`, userID).Scan(&total); err != nil {
		return nil, "", 0, fmt.Errorf("history: counting sessions of %s: %w", userID, err)
	}
	return page, next, total, nil
}

func fromMicros(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMicro(v.Int64).UTC()
}

// StageStats implements history.Store.
func (s *Store) StageStats(ctx context.Context, stageArn string, since time.Time) (history.Stats, error) {
	var (
		st                    history.Stats
		total, closed, maxDur int64
	)
	err := s.read.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(DISTINCT user_id),
			COALESCE(SUM(watch_duration_seconds), 0), COUNT(watch_duration_seconds), COALESCE(MAX(watch_duration_seconds), 0)
		FROM viewer_sessions
		WHERE stage_arn = ?1 AND (joined_at >= ?2 OR (joined_at IS NULL AND left_at >= ?2))`,
		stageArn, since.UnixMicro()).Scan(&st.TotalViews, &st.UniqueViewers, &total, &closed, &maxDur)
	if err != nil {
		return history.Stats{}, fmt.Errorf("history: stats of %s: %w", stageArn, err)
	}
	st.TotalWatchTime = time.Duration(total) * time.Second
	st.MaxWatchDuration = time.Duration(maxDur) * time.Second
	st.AvgWatchDuration = histsql.Average(total, closed)
	return st, nil
}

// Series implements history.Store.
func (s *Store) Series(ctx context.Context, broadcastID string, from, to time.Time, step time.Duration) ([]history.Point, error) {
	n, err := histsql.SeriesSteps(from, to, step)
	if err != nil || n == 0 {
		return nil, err
	}
	rows, err := s.read.QueryContext(ctx, `SELECT snapshot_time, SUM(viewer_count), COUNT(*)
		FROM viewer_stats_snapshots
		WHERE broadcast_id = ? AND snapshot_time >= ? AND snapshot_time < ?
		GROUP BY snapshot_time`, broadcastID, from.UnixMicro(), to.UnixMicro())
	if err != nil {
		return nil, fmt.Errorf("history: series of %s: %w", broadcastID, err)
	}
	defer rows.Close()
	var instants []histsql.Instant
	for rows.Next() {
		var (
			in histsql.Instant
			at int64
		)
		if err := rows.Scan(&at, &in.Viewers, &in.Stages); err != nil {
			return nil, fmt.Errorf("history: series of %s: %w", broadcastID, err)
		}
		in.At = time.UnixMicro(at)
		instants = append(instants, in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: series of %s: %w", broadcastID, err)
	}
	return histsql.Fold(from, step, n, instants), nil
}

// BroadcastStats implements history.Store.
func (s *Store) BroadcastStats(ctx context.Context, broadcastID string) (history.BroadcastStats, error) {
	var (
		bs            history.BroadcastStats
		total, closed int64
	)
	err := s.read.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(DISTINCT user_id),
			COALESCE(SUM(watch_duration_seconds), 0), COUNT(watch_duration_seconds),
			(SELECT COUNT(*) FROM (SELECT stage_arn FROM viewer_sessions WHERE broadcast_id = ?1
				UNION SELECT stage_arn FROM viewer_stats_snapshots WHERE broadcast_id = ?1))
		FROM viewer_sessions WHERE broadcast_id = ?1`,
		broadcastID).Scan(&bs.Sessions, &bs.UniqueViewers, &total, &closed, &bs.Stages)
	if err != nil {
		return history.BroadcastStats{}, fmt.Errorf("history: stats of broadcast %s: %w", broadcastID, err)
	}
	bs.TotalWatchTime = time.Duration(total) * time.Second
	bs.AvgWatchTime = histsql.Average(total, closed)
	var peakAt int64
	err = s.read.QueryRowContext(ctx, `SELECT snapshot_time, SUM(viewer_count) AS viewers
		FROM viewer_stats_snapshots WHERE broadcast_id = ?
		GROUP BY snapshot_time ORDER BY viewers DESC, snapshot_time LIMIT 1`, broadcastID).Scan(&peakAt, &bs.PeakViewers)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return history.BroadcastStats{}, fmt.Errorf("history: peak of broadcast %s: %w", broadcastID, err)
	default:
		bs.PeakAt = time.UnixMicro(peakAt).UTC()
	}
	return bs, nil
}

// Prune implements history.Store.
func (s *Store) Prune(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{
			`DELETE FROM viewer_sessions WHERE left_at < ?1 OR (left_at IS NULL AND joined_at < ?1)`,
			`DELETE FROM viewer_stats_snapshots WHERE snapshot_time < ?1`,
		} {
			res, err := tx.ExecContext(ctx, q, before.UnixMicro())
			if err != nil {
				return fmt.Errorf("pruning: %w", err)
			}
			deleted, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("pruning: %w", err)
			}
			n += deleted
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
