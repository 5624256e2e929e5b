// Package postgres is history.Store on PostgreSQL through pgx: for
// deployments that keep history in a database server, such as the previous
// server's, whose table names and columns it keeps.
package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/history/internal/histsql"
)

// migrationLock is the advisory lock key that serialises the migrations of
// instances starting together.
const migrationLock int64 = 0x73746167_68697374 // "staghist"

// Store is history.Store on a PostgreSQL database.
type Store struct {
	pool    *pgxpool.Pool
	applied []int
}

var _ history.Store = (*Store)(nil)

// Open connects to the database of connString (a postgres:// URL or
// key=value string, pool settings such as pool_max_conns included) and
// applies the migrations it lacks, in one transaction under an advisory
// lock, so that instances starting together apply each migration once.
// Migrations a newer release applied are left alone.
func Open(ctx context.Context, connString string) (*Store, error) {
	pool, err := pgxpool.New(ctx, connString)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	applied, err := migrate(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &Store{pool: pool, applied: applied}, nil
}

// AppliedMigrations returns the versions of the migrations this Open
// applied, in order: none when the schema was already current.
func (s *Store) AppliedMigrations() []int { return s.applied }

func migrate(ctx context.Context, pool *pgxpool.Pool) ([]int, error) {
	ms, err := histsql.Migrations(histsql.Postgres)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	var applied []int
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// The lock comes first: CREATE TABLE IF NOT EXISTS is not safe
		// against another transaction creating the same table.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return fmt.Errorf("taking the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+histsql.MigrationsTable+` (
			version    INTEGER PRIMARY KEY,
			name       TEXT        NOT NULL,
			applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("creating %s: %w", histsql.MigrationsTable, err)
		}
		rows, _ := tx.Query(ctx, `SELECT version FROM `+histsql.MigrationsTable)
		done, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil {
			return fmt.Errorf("reading %s: %w", histsql.MigrationsTable, err)
		}
		for _, m := range histsql.Pending(ms, done) {
			// Without arguments Exec uses the simple protocol, which takes
			// a file of several statements.
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+histsql.MigrationsTable+` (version, name) VALUES ($1, $2)`,
				m.Version, m.Name); err != nil {
				return fmt.Errorf("recording migration %04d: %w", m.Version, err)
			}
			applied = append(applied, m.Version)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("history: migrating: %w", err)
	}
	return applied, nil
}

// Close closes the pool's connections.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// The open's columns win over a close's, whichever came first, so the row
// ends the same in any order; a second open finds joined_at set and
// changes nothing.
const openSQL = `INSERT INTO viewer_sessions
	(session_id, broadcast_id, user_id, stage_arn, participant_id, instance, joined_at, user_agent, ip_address, country_code)
	VALUES ($1, $2, $3, $4, NULLIF($5, ''), $6, $7, NULLIF($8, ''), NULLIF($9, ''), NULLIF($10, ''))
	ON CONFLICT (session_id) DO UPDATE SET
		broadcast_id = EXCLUDED.broadcast_id, user_id = EXCLUDED.user_id, stage_arn = EXCLUDED.stage_arn,
		participant_id = EXCLUDED.participant_id, instance = EXCLUDED.instance, joined_at = EXCLUDED.joined_at,
		user_agent = EXCLUDED.user_agent, ip_address = EXCLUDED.ip_address, country_code = EXCLUDED.country_code,
		watch_duration_seconds = CASE WHEN viewer_sessions.left_at IS NOT NULL
			THEN GREATEST(0, floor(extract(epoch FROM viewer_sessions.left_at - EXCLUDED.joined_at)))::integer END
	WHERE viewer_sessions.joined_at IS NULL`

// The first close recorded is the one kept.
const closeSQL = `INSERT INTO viewer_sessions
	(session_id, broadcast_id, user_id, stage_arn, participant_id, instance, left_at, end_reason)
	VALUES ($1, $2, $3, $4, NULLIF($5, ''), $6, $7, $8)
	ON CONFLICT (session_id) DO UPDATE SET
		left_at = EXCLUDED.left_at, end_reason = EXCLUDED.end_reason,
		watch_duration_seconds = CASE WHEN viewer_sessions.joined_at IS NOT NULL
			THEN GREATEST(0, floor(extract(epoch FROM EXCLUDED.left_at - viewer_sessions.joined_at)))::integer END
	WHERE viewer_sessions.left_at IS NULL`

// Apply implements history.Store: the events go as one pipelined batch,
// which PostgreSQL runs as one implicit transaction.
func (s *Store) Apply(ctx context.Context, events []history.Event) error {
	if err := histsql.Validate(events); err != nil {
		return err
	}
	if len(events) == 0 {
		return nil
	}
	// Rows are locked in session order, the same in every batch, so that
	// instances writing the same sessions at once wait for each other
	// instead of deadlocking. The sort is stable: a session's own events
	// keep their order.
	sorted := slices.Clone(events)
	slices.SortStableFunc(sorted, func(a, b history.Event) int { return cmp.Compare(a.SessionID, b.SessionID) })
	b := &pgx.Batch{}
	for _, e := range sorted {
		e = histsql.CleanEvent(e)
		if e.Kind == history.Open {
			b.Queue(openSQL, e.SessionID, e.BroadcastID, e.UserID, e.StageArn, e.ParticipantID, e.Instance,
				e.At, e.UserAgent, e.IPAddress, e.CountryCode)
		} else {
			b.Queue(closeSQL, e.SessionID, e.BroadcastID, e.UserID, e.StageArn, e.ParticipantID, e.Instance,
				e.At, e.EndReason)
		}
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("history: applying %d events: %w", len(events), err)
	}
	return nil
}

// PutSnapshots implements history.Store, in one statement over arrays.
func (s *Store) PutSnapshots(ctx context.Context, snaps []history.Snapshot) error {
	if err := histsql.Validate(snaps); err != nil {
		return err
	}
	if len(snaps) == 0 {
		return nil
	}
	n := len(snaps)
	arns, times, viewers := make([]string, n), make([]time.Time, n), make([]int32, n)
	broadcasts, roles, states, capacity := make([]string, n), make([]string, n), make([]string, n), make([]int32, n)
	for i, sn := range snaps {
		sn = histsql.CleanSnapshot(sn)
		arns[i], times[i], viewers[i] = sn.StageArn, sn.At, int32(min(sn.Viewers, 1<<31-1))
		broadcasts[i], roles[i], states[i], capacity[i] = sn.BroadcastID, sn.Role, sn.ReplicationState, int32(min(sn.Capacity, 1<<31-1))
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO viewer_stats_snapshots
		(stage_arn, snapshot_time, viewer_count, broadcast_id, role, replication_state, capacity)
		SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::integer[], $4::text[], $5::text[], $6::text[], $7::integer[])
		ON CONFLICT (stage_arn, snapshot_time) DO NOTHING`,
		arns, times, viewers, broadcasts, roles, states, capacity)
	if err != nil {
		return fmt.Errorf("history: writing %d snapshots: %w", n, err)
	}
	return nil
}

const sessionColumns = `id, session_id, broadcast_id, user_id, stage_arn, COALESCE(participant_id, ''), instance,
	joined_at, left_at, watch_duration_seconds, COALESCE(end_reason, ''),
	COALESCE(user_agent, ''), COALESCE(ip_address, ''), COALESCE(country_code, ''), created_at`

// History implements history.Store.
func (s *Store) History(ctx context.Context, userID string, limit int, cursor string) ([]history.Session, string, int, error) {
	limit = histsql.PageSize(limit)
	query := `SELECT ` + sessionColumns + ` FROM viewer_sessions WHERE user_id = $1
		ORDER BY COALESCE(joined_at, left_at) DESC, session_id DESC LIMIT $2`
	args := []any{userID, limit + 1}
	if cursor != "" {
		c, err := histsql.DecodeCursor(cursor)
		if err != nil {
			return nil, "", 0, err
		}
		query = `SELECT ` + sessionColumns + ` FROM viewer_sessions
			WHERE user_id = $1 AND (COALESCE(joined_at, left_at), session_id) < ($3, $4)
			ORDER BY COALESCE(joined_at, left_at) DESC, session_id DESC LIMIT $2`
		args = append(args, c.At, c.SessionID)
	}
	rows, _ := s.pool.Query(ctx, query, args...)
	page, err := pgx.CollectRows(rows, scanSession)
	if err != nil {
		return nil, "", 0, fmt.Errorf("history: sessions of %s: %w", userID, err)
	}
	page, next := histsql.NextPage(page, limit)
	var total int
	if err := s.pool.QueryRow(ctx, `SELECT COUNT(*) FROM viewer_sessions WHERE user_id = $1`, userID).Scan(&total); err != nil {
		return nil, "", 0, fmt.Errorf("history: counting sessions of %s: %w", userID, err)
	}
	return page, next, total, nil
}

func scanSession(row pgx.CollectableRow) (history.Session, error) {
	var (
		ss           history.Session
		joined, left pgtype.Timestamptz
		watch        pgtype.Int4
	)
	err := row.Scan(&ss.ID, &ss.SessionID, &ss.BroadcastID, &ss.UserID, &ss.StageArn, &ss.ParticipantID,
		&ss.Instance, &joined, &left, &watch, &ss.EndReason, &ss.UserAgent, &ss.IPAddress, &ss.CountryCode,
		&ss.CreatedAt)
	if joined.Valid {
		ss.JoinedAt = joined.Time.UTC()
	}
	if left.Valid {
		ss.LeftAt = left.Time.UTC()
	}
	ss.WatchDuration = time.Duration(watch.Int32) * time.Second
	ss.CreatedAt = ss.CreatedAt.UTC()
	return ss, err
}

// StageStats implements history.Store.
func (s *Store) StageStats(ctx context.Context, stageArn string, since time.Time) (history.Stats, error) {
	var (
		st                    history.Stats
		total, closed, maxDur int64
	)
	err := s.pool.QueryRow(ctx, `SELECT COUNT(*), COUNT(DISTINCT user_id),
			COALESCE(SUM(watch_duration_seconds), 0), COUNT(watch_duration_seconds), COALESCE(MAX(watch_duration_seconds), 0)
		FROM viewer_sessions
		WHERE stage_arn = $1 AND (joined_at >= $2 OR (joined_at IS NULL AND left_at >= $2))`,
		stageArn, since).Scan(&st.TotalViews, &st.UniqueViewers, &total, &closed, &maxDur)
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
	rows, _ := s.pool.Query(ctx, `SELECT snapshot_time, SUM(viewer_count), COUNT(*)
		FROM viewer_stats_snapshots
		WHERE broadcast_id = $1 AND snapshot_time >= $2 AND snapshot_time < $3
		GROUP BY snapshot_time`, broadcastID, from, to)
	instants, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (histsql.Instant, error) {
		var in histsql.Instant
		err := row.Scan(&in.At, &in.Viewers, &in.Stages)
		return in, err
	})
	if err != nil {
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
	err := s.pool.QueryRow(ctx, `SELECT COUNT(*), COUNT(DISTINCT user_id),
			COALESCE(SUM(watch_duration_seconds), 0), COUNT(watch_duration_seconds),
			(SELECT COUNT(*) FROM (SELECT stage_arn FROM viewer_sessions WHERE broadcast_id = $1
				UNION SELECT stage_arn FROM viewer_stats_snapshots WHERE broadcast_id = $1) AS stages)
		FROM viewer_sessions WHERE broadcast_id = $1`,
		broadcastID).Scan(&bs.Sessions, &bs.UniqueViewers, &total, &closed, &bs.Stages)
	if err != nil {
		return history.BroadcastStats{}, fmt.Errorf("history: stats of broadcast %s: %w", broadcastID, err)
	}
	bs.TotalWatchTime = time.Duration(total) * time.Second
	bs.AvgWatchTime = histsql.Average(total, closed)
	err = s.pool.QueryRow(ctx, `SELECT snapshot_time, SUM(viewer_count) AS viewers
		FROM viewer_stats_snapshots WHERE broadcast_id = $1
		GROUP BY snapshot_time ORDER BY viewers DESC, snapshot_time LIMIT 1`, broadcastID).Scan(&bs.PeakAt, &bs.PeakViewers)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return history.BroadcastStats{}, fmt.Errorf("history: peak of broadcast %s: %w", broadcastID, err)
	default:
		bs.PeakAt = bs.PeakAt.UTC()
	}
	return bs, nil
}

// Prune implements history.Store, both deletes in one transaction.
func (s *Store) Prune(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		for _, q := range []string{
			`DELETE FROM viewer_sessions WHERE left_at < $1 OR (left_at IS NULL AND joined_at < $1)`,
			`DELETE FROM viewer_stats_snapshots WHERE snapshot_time < $1`,
		} {
			tag, err := tx.Exec(ctx, q, before)
			if err != nil {
				return err
			}
			n += tag.RowsAffected()
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("history: pruning: %w", err)
	}
	return n, nil
}
