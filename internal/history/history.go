// Package history is stagefleet's viewing history: one row per viewer session
// (a seat from its taking to its end) and periodic snapshots of the viewers on
// each stage, kept in a SQL database for the history routes, reports and
// retention.
//
// Store is the port. It has two implementations, chosen once at start like
// the state store: history/sqlite (a file under a data directory; the
// embedded default) and history/postgres (pgx). Both apply their embedded
// schema migrations when opened and pass the conformance suite in
// history/historytest.
//
// The join path never writes to the database: it hands events to a Writer,
// which queues them in memory and writes them in batches from its own
// goroutine, retrying while the database is unreachable.
//
// docs/history.md describes the tables, the guarantees and the measured
// figures.
package history

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrInvalid wraps every error about an argument the caller passed: an
// event or snapshot that cannot be recorded, a cursor this store did not
// make, a series whose step does not fit its range.
var ErrInvalid = errors.New("history: invalid argument")

// Kind tells an opening event from a closing one.
type Kind uint8

const (
	// Open is a viewer taking a seat: Event.At is joined_at.
	Open Kind = iota + 1
	// Close is a seat's end: Event.At is left_at, the last moment the viewer
	// was known present (the leave, or the last heartbeat of an expired
	// seat), and Event.EndReason says why it ended.
	Close
)

func (k Kind) String() string {
	switch k {
	case Open:
		return "open"
	case Close:
		return "close"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// End reasons, stored in viewer_sessions.end_reason (a CHECK constraint
// holds the column to these).
const (
	EndLeave          = "leave"           // the viewer left (POST /api/viewer/leave)
	EndExpired        = "expired"         // no heartbeat within the lease
	EndMoved          = "moved"           // the viewer took a seat elsewhere (a rejoin)
	EndStageRemoved   = "stage_removed"   // the stage was deleted under the viewer
	EndBroadcastEnded = "broadcast_ended" // the broadcast ended
)

// Event opens or closes one viewer session.
//
// SessionID identifies the session across instances and restarts: every
// write is idempotent on it. Both events of a session carry the same
// identity (SessionID, BroadcastID, UserID, StageArn, ParticipantID); the
// client details (UserAgent, IPAddress, CountryCode) come with the open and
// are ignored on a close.
type Event struct {
	Kind          Kind
	SessionID     string
	BroadcastID   string
	UserID        string
	StageArn      string
	ParticipantID string
	// Instance is the stagefleet instance that recorded the event. The
	// session keeps the opening instance's (the one that seated the viewer);
	// a close's stands only until its open arrives.
	Instance string
	// At is joined_at for Open, left_at for Close.
	At time.Time
	// EndReason is one of the End constants, for Close only.
	EndReason   string
	UserAgent   string
	IPAddress   string
	CountryCode string
}

// Validate reports why e cannot be recorded, wrapping ErrInvalid, or nil.
// Store.Apply refuses a batch with an invalid event, and Writer.Record drops
// one (counted in Dropped): retrying would not make it valid.
func (e Event) Validate() error {
	switch {
	case e.Kind != Open && e.Kind != Close:
		return fmt.Errorf("%w: event kind %v", ErrInvalid, e.Kind)
	case e.SessionID == "":
		return fmt.Errorf("%w: %v event without a session id", ErrInvalid, e.Kind)
	case e.UserID == "" || e.StageArn == "":
		return fmt.Errorf("%w: %v event %q without a user id or stage ARN", ErrInvalid, e.Kind, e.SessionID)
	case e.At.IsZero():
		return fmt.Errorf("%w: %v event %q without a time", ErrInvalid, e.Kind, e.SessionID)
	case e.Kind == Open && e.EndReason != "":
		return fmt.Errorf("%w: open event %q with an end reason", ErrInvalid, e.SessionID)
	case e.Kind == Close && !validEndReason(e.EndReason):
		return fmt.Errorf("%w: close event %q with end reason %q", ErrInvalid, e.SessionID, e.EndReason)
	}
	return nil
}

func validEndReason(r string) bool {
	switch r {
	case EndLeave, EndExpired, EndMoved, EndStageRemoved, EndBroadcastEnded:
		return true
	}
	return false
}

// Snapshot is the number of viewers seated on one stage at one instant.
//
// The snapshots of one broadcast taken together must share At: the viewers
// of a broadcast at an instant are the sum over the snapshots at that
// instant, which is what Series and BroadcastStats read. A snapshot is
// recorded once per (StageArn, At); the same again is ignored.
type Snapshot struct {
	StageArn    string
	BroadcastID string
	// Role is the stage's role (origin, replica, manual).
	Role string
	// ReplicationState is the state of the host replication into the stage,
	// empty for the origin.
	ReplicationState string
	Viewers          int
	Capacity         int
	At               time.Time
}

// Validate reports why s cannot be recorded, wrapping ErrInvalid, or nil.
func (s Snapshot) Validate() error {
	switch {
	case s.StageArn == "":
		return fmt.Errorf("%w: snapshot without a stage ARN", ErrInvalid)
	case s.At.IsZero():
		return fmt.Errorf("%w: snapshot of %s without a time", ErrInvalid, s.StageArn)
	case s.Viewers < 0 || s.Capacity < 0:
		return fmt.Errorf("%w: snapshot of %s with %d viewers, capacity %d", ErrInvalid, s.StageArn, s.Viewers, s.Capacity)
	}
	return nil
}

// Session is one row of viewer_sessions.
type Session struct {
	// ID is the row's id, the previous server's primary key.
	ID            int64
	SessionID     string
	BroadcastID   string
	UserID        string
	StageArn      string
	ParticipantID string
	Instance      string
	// JoinedAt is zero while only the session's close has been recorded.
	JoinedAt time.Time
	// LeftAt is zero while the session is open.
	LeftAt time.Time
	// WatchDuration is LeftAt - JoinedAt in whole seconds (never negative),
	// zero until both are known.
	WatchDuration time.Duration
	// EndReason is empty while the session is open.
	EndReason   string
	UserAgent   string
	IPAddress   string
	CountryCode string
	CreatedAt   time.Time
}

// Stats sums up the sessions of one stage. The durations are taken over the
// closed sessions whose start is known; the counts over every session.
type Stats struct {
	TotalViews       int
	UniqueViewers    int
	AvgWatchDuration time.Duration
	MaxWatchDuration time.Duration
	TotalWatchTime   time.Duration
}

// Point is one step of a broadcast's audience series: the most viewers seen
// at one instant of [At, At+step) over all the broadcast's stages, and the
// most stages snapshotted at one instant. Steps without snapshots are zero.
type Point struct {
	At      time.Time
	Viewers int
	Stages  int
}

// BroadcastStats sums up one broadcast.
type BroadcastStats struct {
	// PeakViewers is the most viewers at one snapshot instant, summed over
	// the broadcast's stages; PeakAt is the first instant with that many
	// (zero without snapshots).
	PeakViewers int
	PeakAt      time.Time
	// UniqueViewers counts distinct users, Sessions every session.
	UniqueViewers int
	Sessions      int
	// TotalWatchTime and AvgWatchTime are over the closed sessions whose
	// start is known.
	TotalWatchTime time.Duration
	AvgWatchTime   time.Duration
	// Stages counts the distinct stages that seated a viewer or were
	// snapshotted.
	Stages int
}

// Page sizes of Store.History.
const (
	DefaultPageSize = 50
	MaxPageSize     = 1000
)

// MaxSeriesPoints bounds the points one Series call returns.
const MaxSeriesPoints = 10_000

// Store keeps viewing history. Its methods are safe for concurrent use.
type Store interface {
	// Apply records events in one transaction: all or none. A session's
	// events take effect in the order given.
	//
	// It is idempotent on Event.SessionID, and the final row does not depend
	// on the order in which a session's events arrive or how often:
	//   - an open inserts the session, or, when only its close was recorded
	//     (another instance's close, a crash between the two), fills in
	//     joined_at, the identity, the client details and the instance and
	//     computes watch_duration_seconds; an open of a session whose start
	//     is known changes nothing;
	//   - a close sets left_at, end_reason and watch_duration_seconds on a
	//     session not yet closed, or inserts a closed session without a
	//     start; a close of a closed session changes nothing, so the first
	//     close recorded is the one kept.
	//
	// A batch with an invalid event (Event.Validate) is refused whole with an
	// error wrapping ErrInvalid.
	Apply(ctx context.Context, events []Event) error
	// PutSnapshots records snapshots in one transaction; one already
	// recorded for the same stage and instant is ignored. An invalid one
	// refuses the batch with an error wrapping ErrInvalid.
	PutSnapshots(ctx context.Context, snaps []Snapshot) error
	// History pages through a user's sessions, newest first: by joined_at
	// (left_at while the start is unknown), then by session id. limit <= 0
	// means DefaultPageSize, above MaxPageSize it is MaxPageSize. cursor is
	// "" for the first page, else the next of the page before; next is ""
	// after the last page. total counts all the user's sessions. A cursor
	// this store did not make is an error wrapping ErrInvalid.
	History(ctx context.Context, userID string, limit int, cursor string) (page []Session, next string, total int, err error)
	// StageStats sums up the sessions on a stage that started at or after
	// since (zero: all).
	StageStats(ctx context.Context, stageArn string, since time.Time) (Stats, error)
	// Series is a broadcast's audience from its snapshots, one Point per
	// step from from (included) to to (excluded). A step that is not
	// positive, or more than MaxSeriesPoints points, is an error wrapping
	// ErrInvalid.
	Series(ctx context.Context, broadcastID string, from, to time.Time, step time.Duration) ([]Point, error)
	// BroadcastStats sums up a broadcast; one with no history is all zero.
	BroadcastStats(ctx context.Context, broadcastID string) (BroadcastStats, error)
	// Prune deletes the sessions that ended before before (or, never
	// closed, started before it) and the snapshots taken before it, and
	// answers how many rows it deleted in all.
	Prune(ctx context.Context, before time.Time) (int64, error)
	// Close releases the database.
	Close() error
}
