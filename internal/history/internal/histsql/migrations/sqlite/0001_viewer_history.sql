-- The same tables as PostgreSQL's. SQLite has no time type: times are
-- INTEGER microseconds since 1970-01-01 UTC (PostgreSQL's precision), so
-- that comparisons and durations are exact integer arithmetic
-- (datetime(joined_at / 1000000, 'unixepoch') reads one).

CREATE TABLE viewer_sessions (
    id                     INTEGER PRIMARY KEY,
    user_id                TEXT    NOT NULL,
    stage_arn              TEXT    NOT NULL,
    participant_id         TEXT,
    -- NULL while only the session's close is known (it came first).
    joined_at              INTEGER,
    left_at                INTEGER,
    -- left_at - joined_at in whole seconds, NULL until both are known.
    watch_duration_seconds INTEGER,
    user_agent             TEXT,
    ip_address             TEXT,
    country_code           TEXT,
    created_at             INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    broadcast_id           TEXT    NOT NULL DEFAULT '',
    -- Every write is idempotent on it.
    session_id             TEXT    NOT NULL,
    end_reason             TEXT
        CHECK (end_reason IN ('leave', 'expired', 'moved', 'stage_removed', 'broadcast_ended')),
    instance               TEXT    NOT NULL DEFAULT ''
);

CREATE UNIQUE INDEX idx_viewer_sessions_session_id ON viewer_sessions (session_id);
CREATE INDEX idx_viewer_sessions_user_id ON viewer_sessions (user_id, joined_at);
CREATE INDEX idx_viewer_sessions_stage_arn ON viewer_sessions (stage_arn, joined_at);
CREATE INDEX idx_viewer_sessions_joined_at ON viewer_sessions (joined_at);
CREATE INDEX idx_viewer_sessions_broadcast_id ON viewer_sessions (broadcast_id);

CREATE TABLE viewer_stats_snapshots (
    id                INTEGER PRIMARY KEY,
    stage_arn         TEXT    NOT NULL,
    snapshot_time     INTEGER NOT NULL,
    viewer_count      INTEGER NOT NULL,
    created_at        INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    broadcast_id      TEXT    NOT NULL DEFAULT '',
    role              TEXT    NOT NULL DEFAULT '',
    replication_state TEXT    NOT NULL DEFAULT '',
    capacity          INTEGER NOT NULL DEFAULT 0
);

-- Unique: a snapshot written again (a batch retried after an ambiguous
-- commit) is ignored.
CREATE UNIQUE INDEX idx_viewer_stats_snapshots_stage_time ON viewer_stats_snapshots (stage_arn, snapshot_time);
CREATE INDEX idx_viewer_stats_snapshots_broadcast_time ON viewer_stats_snapshots (broadcast_id, snapshot_time);
