// Package store holds stagefleet's shared state: broadcasts, their stages,
// hosts, replications and viewer seats. Store is the port; memory and redis
// implement it, and storetest is the conformance suite both must pass.
//
// IVS is the source of truth for stages and replications; everything here
// can be rebuilt from IVS by the reconcile loop, except seats, which viewers
// re-establish with heartbeats.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors a Store returns; callers test them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	// ErrNotLive: the broadcast has no host publishing, so no seat is given.
	ErrNotLive = errors.New("no host is live")
	// ErrFull: no eligible stage has a free seat.
	ErrFull = errors.New("no free seat")
	// ErrNotEligible: the stage asked for does not take viewers now.
	ErrNotEligible = errors.New("stage does not take viewers")
	// ErrExists: a create-if-absent found the record already there.
	ErrExists = errors.New("already exists")
	// ErrLeaseHeld: another holder has the lease.
	ErrLeaseHeld = errors.New("lease held by another instance")
	// ErrFenced: a write made under a lease that is no longer held (it
	// expired, or another holder took it) was refused; nothing was written.
	ErrFenced = errors.New("lease lost; write refused")
	// ErrNotOwner: the seat exists but belongs to another participant or
	// stage than the caller named; it was left as it was.
	ErrNotOwner = errors.New("seat held by another participant")
)

// EventLogLimit is the most event ids a store remembers for
// de-duplication at once (per store, whatever their TTL): past it the ids
// closest to expiry are forgotten first, so a flood of events cannot grow
// the store without bound. Implementations may take a lower limit.
const EventLogLimit = 100_000

// ExpireBatch is the most seats one ExpireSeats call frees: a broadcast
// whose audience left at once is swept in steps, none holding the store
// for long.
const ExpireBatch = 1000

// Role is what a stage is to its broadcast.
type Role string

const (
	RoleOrigin  Role = "origin"
	RoleReplica Role = "replica"
	// RoleManual stages were created through the API: tagged as
	// stagefleet's but unmanaged (no viewers seated, nothing replicated,
	// never deleted by the controller).
	RoleManual Role = "manual"
)

// Broadcast is one live show.
type Broadcast struct {
	ID        string    `json:"id"`
	OriginArn string    `json:"originArn"`
	CreatedAt time.Time `json:"createdAt"`
	// IdleSince is when the broadcast last had neither a publishing host
	// nor a seat (zero while it has either); it ends after
	// BROADCAST_IDLE_TIMEOUT of that.
	IdleSince time.Time `json:"idleSince,omitzero"`
	// OriginReplacedAt is when the origin was last recreated because IVS no
	// longer had it (zero if never): hosts need new tokens since then.
	OriginReplacedAt time.Time `json:"originReplacedAt,omitzero"`
	// ReplacedOriginArn is the origin that IVS lost.
	ReplacedOriginArn string `json:"replacedOriginArn,omitempty"`
	// Failures counts the controller's failed passes in a row; no pass
	// calls IVS for the broadcast before RetryAt (exponential back-off,
	// shared by every instance).
	Failures int       `json:"failures,omitempty"`
	RetryAt  time.Time `json:"retryAt,omitzero"`
	// Creating counts replica stages a controller pass is creating (until
	// CreatingUntil, in case it never records them), so that every pass
	// counts them as coming.
	Creating      int       `json:"creating,omitempty"`
	CreatingUntil time.Time `json:"creatingUntil,omitzero"`
	// EndingSince is when the broadcast's end began (zero unless it is
	// ending), for EndReason: an end cut short (a crash, IVS refusing) is
	// finished by the next reconcile, on whichever instance, and takes
	// no host or viewer meanwhile.
	EndingSince time.Time `json:"endingSince,omitzero"`
	EndReason   string    `json:"endReason,omitempty"`
}

// Stage is stagefleet's record of one IVS stage.
type Stage struct {
	Arn         string `json:"arn"`
	BroadcastID string `json:"broadcastId"`
	Role        Role   `json:"role"`
	Name        string `json:"name"`
	Capacity    int    `json:"capacity"`
	// Seatable says the stage takes viewers: an origin while a host
	// publishes; a replica, not draining, while a host publishes and every
	// publishing host's replication into it is active. Kept by fleet.
	Seatable bool `json:"seatable"`
	Seats    int  `json:"seats"`
	// CreatedAt is when the stage was recorded, after IVS had created it.
	CreatedAt time.Time `json:"createdAt"`
	// EmptySince is when a replica stage last became empty (zero while it
	// has seats); it is removed after the stabilization window.
	EmptySince time.Time `json:"emptySince"`
	// Draining marks a replica stage being removed: it takes no viewers.
	Draining bool `json:"draining"`
}

// Host is a publishing participant (or one given a host token) of an origin.
type Host struct {
	BroadcastID   string    `json:"broadcastId"`
	ParticipantID string    `json:"participantId"`
	UserID        string    `json:"userId"`
	StageArn      string    `json:"stageArn"`
	JoinedAt      time.Time `json:"joinedAt"`
	Publishing    bool      `json:"publishing"`
	// EventTime is the time of the last IVS event applied to this host, so
	// late events do not undo newer ones.
	EventTime time.Time `json:"eventTime"`
}

// Replication states: pending (host not publishing), starting, active,
// stopped, failed (retried with back-off).
const (
	ReplPending  = "pending"
	ReplStarting = "starting"
	ReplActive   = "active"
	ReplStopped  = "stopped"
	ReplFailed   = "failed"
)

// Replication is one host copied from its origin into one stage.
type Replication struct {
	BroadcastID   string    `json:"broadcastId"`
	ParticipantID string    `json:"participantId"`
	SourceArn     string    `json:"sourceStageArn"`
	DestArn       string    `json:"destinationStageArn"`
	State         string    `json:"state"`
	Reason        string    `json:"reason,omitempty"`
	UpdatedAt     time.Time `json:"updatedAt"`
	// EventTime is the time of the last IVS event applied.
	EventTime time.Time `json:"eventTime"`
	// Attempts counts failed starts since the last success; RetryAt is
	// when the next may be made (exponential back-off with jitter).
	Attempts int       `json:"attempts"`
	RetryAt  time.Time `json:"retryAt"`
}

// Seat is one viewer's place on one stage: a lease.
type Seat struct {
	BroadcastID   string    `json:"broadcastId"`
	UserID        string    `json:"userId"`
	StageArn      string    `json:"stageArn"`
	ParticipantID string    `json:"participantId"`
	TakenAt       time.Time `json:"takenAt"`
	ExpiresAt     time.Time `json:"expiresAt"`
	// StageSeats is set by ReserveSeat only: the seats on the seat's stage
	// right after it, this one included (what the previous server called
	// currentViewers). Not stored.
	StageSeats int `json:"-"`
	// Replaced is set by ReserveSeat only: the viewer's previous seat,
	// freed because its stage no longer took viewers, so that its session
	// can be closed. Not stored.
	Replaced *Seat `json:"-"`
}

// SeatTotals sum a broadcast's seats, so that its viewers' total watch
// time at t is Seats×t − TakenAtSum (Unix seconds) without reading them.
type SeatTotals struct {
	Seats int
	// TakenAtSum is the sum of the seats' TakenAt in Unix seconds.
	TakenAtSum int64
	// Untracked are seats the sums leave out: taken before the store kept
	// them (Redis data from an earlier version). A reader who needs exact
	// totals with Untracked above 0 reads the seats instead.
	Untracked int
}

// SeatRequest asks for a seat in one atomic step.
type SeatRequest struct {
	BroadcastID string
	UserID      string
	// StageArn, when set, asks for that stage only.
	StageArn string
	// ParticipantID is used for a new seat; an existing seat keeps its own.
	ParticipantID string
	Now           time.Time
	TTL           time.Duration
}

// SeatOwner names whose seat a renewal is for: the participant id of the
// viewer's token and, when not empty, the stage it watches. A renewal
// whose owner does not match the seat is refused (ErrNotOwner), so that
// nobody renews, or learns of, a seat that is not theirs.
type SeatOwner struct {
	ParticipantID string
	StageArn      string
}

// Lease gives one holder (a stagefleet instance) a broadcast's work of one
// kind until ExpiresAt, unless renewed. Token, the fencing token, grows with
// every grant of the broadcast's leases, so a write fenced with an old grant
// is refused even if its holder does not know it lost the lease.
type Lease struct {
	BroadcastID string
	// Name tells the broadcast's leases apart, e.g. "control".
	Name      string
	Holder    string
	Token     int64
	ExpiresAt time.Time
}

// Demand is what one instance sees of a broadcast's audience now: viewers
// waiting for a seat there, and the rate at which it seats new viewers.
// The controller sums every instance's, so that whichever instance scales
// sees the whole audience.
type Demand struct {
	Instance string    `json:"instance"`
	Waiting  int       `json:"waiting"`
	JoinRate float64   `json:"joinRate"`
	At       time.Time `json:"at"`
}

type fenceKey struct{}

// WithFence makes the writes to l's broadcast made with the returned
// context conditional on l still being held: each such write checks the
// lease in the same atomic step and fails with ErrFenced if it was lost.
// Writes to other broadcasts and seat operations are not fenced.
func WithFence(ctx context.Context, l Lease) context.Context {
	return context.WithValue(ctx, fenceKey{}, l)
}

// FenceFor returns the fence ctx carries for writes to broadcastID.
func FenceFor(ctx context.Context, broadcastID string) (Lease, bool) {
	l, ok := ctx.Value(fenceKey{}).(Lease)
	return l, ok && l.BroadcastID == broadcastID
}

// Store is stagefleet's state port: the five concerns below, each a small
// interface of its own so that a consumer asks for the least it needs (the
// join path needs seats only). Every method is one atomic step (but the
// Redis store with seat groups, whose broadcast-wide reads, cross-group
// joins and ends take a step per group: see its package). Lists are
// ordered: stages by CreatedAt then ARN, hosts by JoinedAt then
// participant id, replications by destination then participant, seats by
// TakenAt then user. The storetest package holds every implementation to
// this.
type Store interface {
	SeatStore
	RecordStore
	LeaseStore
	DemandStore
	EventLog
	Ping(ctx context.Context) error
	Close() error
}

// SeatStore holds viewers' seats: leases on stages, never beyond a stage's
// capacity. A seat's lease ends at ExpiresAt (expired when ExpiresAt is not
// after now).
type SeatStore interface {
	// ReserveSeat is the join path's one round trip: it returns the
	// viewer's seat if it has one on a stage that still takes viewers
	// (renewed, whatever stage is asked for, so a viewer is never moved
	// while watching; a seat on a stage that stopped serving is given up
	// when another is taken, and answered as Replaced),
	// else takes one on the asked-for stage or on the fullest seatable
	// stage with room (Fuller), never beyond capacity. ErrNotLive, ErrFull,
	// ErrNotEligible, ErrNotFound.
	ReserveSeat(ctx context.Context, req SeatRequest) (Seat, error)
	// RenewSeat extends a seat's lease if owner matches it (ErrNotOwner
	// otherwise, with nothing changed; ErrNotFound if there is no seat).
	RenewSeat(ctx context.Context, broadcastID, userID string, owner SeatOwner, now time.Time, ttl time.Duration) (Seat, error)
	// ReleaseSeat frees a seat (ErrNotFound if there is none).
	ReleaseSeat(ctx context.Context, broadcastID, userID string) (Seat, error)
	// ExpireSeats frees seats of the broadcast whose lease ended, at most
	// ExpireBatch of them (the longest expired first where the store
	// keeps them in order): a sweep is incremental, and its caller calls
	// again while it gets a full batch. Seats answered with an error were
	// freed all the same (a store that sweeps in steps can fail part-way).
	ExpireSeats(ctx context.Context, broadcastID string, now time.Time) ([]Seat, error)
	ListSeats(ctx context.Context, broadcastID string) ([]Seat, error)
	// GetSeat returns one viewer's seat, ErrNotFound when it has none.
	GetSeat(ctx context.Context, broadcastID, userID string) (Seat, error)
	// ScanSeats returns at most count of the broadcast's seats from cursor
	// ("" to begin) and the cursor of the rest ("" when done), in the
	// store's order: a seat held throughout a scan is returned at least
	// once. A page may hold fewer than count while a cursor is still
	// given. count must be at least 1. In Redis a page costs O(count),
	// whatever the number of seats (the memory store sorts the broadcast's
	// user ids per page).
	ScanSeats(ctx context.Context, broadcastID, cursor string, count int) ([]Seat, string, error)
	// SeatTotals sums the broadcast's seats in one step; in Redis in
	// O(stages), whatever the number of seats.
	SeatTotals(ctx context.Context, broadcastID string) (SeatTotals, error)
}

// RecordStore holds what stagefleet knows of its broadcasts: stages, hosts
// and replications. Its writes (CreateBroadcast, Put*, SetSeatable,
// Delete*) honour a fence in their context (WithFence).
type RecordStore interface {
	// CreateBroadcast records b unless the broadcast exists (ErrExists,
	// with the existing one returned).
	CreateBroadcast(ctx context.Context, b Broadcast) (Broadcast, error)
	GetBroadcast(ctx context.Context, id string) (Broadcast, error)
	ListBroadcasts(ctx context.Context) ([]Broadcast, error)
	// PutBroadcast replaces an existing broadcast's record (ErrNotFound if
	// there is none): its origin, idle time and the like.
	PutBroadcast(ctx context.Context, b Broadcast) error
	// DeleteBroadcast drops the broadcast and everything recorded under
	// it: stages, hosts, replications, seats (returned) and demand.
	// Leases are left to expire. ErrNotFound if there is no broadcast.
	DeleteBroadcast(ctx context.Context, id string) ([]Seat, error)
	// DropSeats frees up to n of the broadcast's seats, whichever, and
	// returns them (none for n below 1): a broadcast's end takes its seats a bounded step at a
	// time (before DeleteBroadcast), so that a million seats never make
	// one long step. It honours a fence, as the record writes do. Seats
	// answered with an error were freed all the same.
	DropSeats(ctx context.Context, broadcastID string, n int) ([]Seat, error)

	// PutStage creates or updates a stage record; Seats is kept as stored.
	PutStage(ctx context.Context, s Stage) error
	GetStage(ctx context.Context, arn string) (Stage, error)
	ListStages(ctx context.Context, broadcastID string) ([]Stage, error)
	// SetSeatable changes whether a stage takes viewers.
	SetSeatable(ctx context.Context, arn string, seatable bool) error
	// DeleteStage drops the record and frees its seats, returned.
	DeleteStage(ctx context.Context, arn string) ([]Seat, error)

	PutHost(ctx context.Context, h Host) error
	GetHost(ctx context.Context, broadcastID, participantID string) (Host, error)
	ListHosts(ctx context.Context, broadcastID string) ([]Host, error)
	DeleteHost(ctx context.Context, broadcastID, participantID string) error

	PutReplication(ctx context.Context, r Replication) error
	GetReplication(ctx context.Context, broadcastID, participantID, destArn string) (Replication, error)
	ListReplications(ctx context.Context, broadcastID string) ([]Replication, error)
	DeleteReplication(ctx context.Context, broadcastID, participantID, destArn string) error
}

// LeaseStore gives a broadcast's work of one kind to one instance at a
// time, with fencing tokens.
type LeaseStore interface {
	// AcquireLease grants the lease (broadcastID, name) to holder for ttl
	// if it is free or expired, with a new token; held by holder already,
	// it is renewed for ttl with its token kept. Held by another:
	// ErrLeaseHeld, with that lease returned.
	AcquireLease(ctx context.Context, broadcastID, name, holder string, ttl time.Duration) (Lease, error)
	// ReleaseLease frees l if it is still held with l's token; otherwise
	// it does nothing. Wanted reports that another holder asked for the
	// lease while l held it, so that l's holder can let it have a turn
	// before taking the lease again.
	ReleaseLease(ctx context.Context, l Lease) (wanted bool, err error)
}

// DemandStore shares each instance's view of a broadcast's audience.
type DemandStore interface {
	// PutDemand records an instance's demand for a broadcast, replacing
	// its previous one.
	PutDemand(ctx context.Context, broadcastID string, d Demand) error
	// ListDemand returns the broadcast's demands recorded at since or
	// later, one per instance, by instance; older ones may be dropped.
	ListDemand(ctx context.Context, broadcastID string, since time.Time) ([]Demand, error)
}

// EventLog remembers event ids for de-duplication.
type EventLog interface {
	// FirstSeen records an event id for ttl and reports whether it is new.
	// At most EventLogLimit ids (or the store's lower limit) are kept.
	FirstSeen(ctx context.Context, eventID string, ttl time.Duration) (bool, error)
	// ForgetEvent drops an event id, so that a retry of an event that
	// failed to apply is applied.
	ForgetEvent(ctx context.Context, eventID string) error
}

// Fuller orders stages for seating: the fullest first (so that replica
// stages empty out and can be removed), then the oldest, then by ARN.
func Fuller(a, b Stage) bool {
	if a.Seats != b.Seats {
		return a.Seats > b.Seats
	}
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.Before(b.CreatedAt)
	}
	return a.Arn < b.Arn
}
