// Package fleet is stagefleet's domain: broadcasts and their origin stages,
// hosts, viewer seats, replication and IVS events. It imports no HTTP and no
// AWS SDK types; it reaches IVS, the store and token signing through ports.
package fleet

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/token"
)

// Tags that mark a stage as stagefleet's: whose broadcast it serves, in
// which role, and for which deployment (several may share an account).
const (
	TagBroadcast  = "stagefleet:broadcast"
	TagRole       = "stagefleet:role"
	TagDeployment = "stagefleet:deployment"
)

// DefaultDeployment is the deployment of stages tagged before the
// deployment tag existed, and of a fleet configured with none.
const DefaultDeployment = "default"

// DefaultBroadcast is the broadcast of requests that name none.
const DefaultBroadcast = "default"

// broadcastIDPattern is what a broadcast id may be: it names keys, tags
// and stage names.
var broadcastIDPattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// ValidBroadcastID says whether id may name a broadcast: 1 to 64 letters,
// digits, '_' and '-'. The API and the live channels check ids with it.
func ValidBroadcastID(id string) bool { return broadcastIDPattern.MatchString(id) }

// Config is the fleet's policy.
type Config struct {
	// StageCapacity is the most viewers seated on one stage.
	StageCapacity int
	// HeartbeatTimeout is a seat's lease: it is freed when no heartbeat
	// renews it for this long.
	HeartbeatTimeout time.Duration
	// SeatWait is how long a viewer waits for a seat before a 503 when no
	// stage is on its way; MaxSeatWait bounds the wait for one that is.
	SeatWait    time.Duration
	MaxSeatWait time.Duration
	// Token lifetimes.
	PublisherTTL   time.Duration
	ViewerTTL      time.Duration
	MediaServerTTL time.Duration
	// OriginArn is an existing stage to use as the default broadcast's
	// origin (MASTER_STAGE_ARN); empty means stagefleet creates it.
	OriginArn string
	// ReconnectWindow is passed to StartParticipantReplication.
	ReconnectWindow time.Duration
	// EventDedupTTL is how long an event id is remembered.
	EventDedupTTL time.Duration

	// ScaleUpThreshold: seats on a stage at which more room is made; the
	// controller keeps at least StageCapacity - ScaleUpThreshold free.
	ScaleUpThreshold int
	// MaxStages bounds a broadcast's origin and replica stages.
	MaxStages int
	// MinIdleStages is the warm pool: empty replica stages kept ready.
	MinIdleStages int
	// ScaleDownStabilization is how long a replica stage stays empty
	// before it is removed.
	ScaleDownStabilization time.Duration
	// ReconcileInterval is how often the store is compared with IVS.
	ReconcileInterval time.Duration
	// ScaleInterval is how often every broadcast gets a controller pass
	// without a signal.
	ScaleInterval time.Duration
	// Now is the clock; nil means time.Now. Windows and back-offs use it.
	Now func() time.Time

	// InstanceID names this instance in leases and logs (a random suffix
	// is added); empty: host name and process id.
	InstanceID string
	// LeaseTTL is how long a broadcast's control lease lasts unless
	// renewed: another instance takes over a crashed one's broadcasts
	// within it.
	LeaseTTL time.Duration

	// DeploymentID tells this deployment's stages from another's in the
	// same account: only those are adopted, counted and deleted.
	DeploymentID string
	// EventMaxSkew: an event dated further ahead of the clock counts as
	// received now.
	EventMaxSkew time.Duration
	// MaxBroadcasts bounds the broadcasts at once.
	MaxBroadcasts int
	// StageQuota bounds this deployment's stages, all broadcasts together.
	StageQuota int
	// BroadcastIdleTimeout ends a broadcast with no host and no viewer for
	// this long (0: never).
	BroadcastIdleTimeout time.Duration
	// SeatKeySecret keys the seat keys that prove a seat to a heartbeat
	// after the store lost it; nil: a random key made at start.
	SeatKeySecret []byte
	// Quotas are IVS's TPS quotas by operation, as the IVS client paces
	// calls: a pass spends at most a second's worth of each.
	Quotas map[string]float64
	// Workers reconcile broadcasts at once (CONTROLLER_WORKERS).
	Workers int
	// Observer hears of seats taken and ended (the viewing history); nil:
	// nobody.
	Observer SeatObserver
	// Metrics hears of joins, reconciles, repairs, leases and events; nil:
	// nobody.
	Metrics Metrics
}

// Service is the fleet.
type Service struct {
	cfg      Config
	instance string
	store    store.Store
	// seats is all the join path uses: one round trip to it, and no AWS
	// call (invariant 5), held to it by its type.
	seats  store.SeatStore
	ivs    IVS
	tokens token.Issuer
	log    *slog.Logger
	now    func() time.Time

	origins singleflight.Group
	// seatCheck asks the seat watcher to look now.
	seatCheck chan struct{}

	queue          *workQueue
	observer       SeatObserver
	metrics        Metrics
	resyncs        sync.Map     // broadcast id -> struct{}: reconcile with a fresh IVS read
	reconcileToken atomic.Int64 // the reconcile lease's token last held
	status         controllerStatus
	locals         sync.Map // broadcast id -> *local
	provisioning   *ewma    // stage created -> host replication active
	provisionStart sync.Map // stage ARN -> time.Time
}

// New returns a fleet service.
func New(cfg Config, st store.Store, i IVS, tokens token.Issuer, log *slog.Logger) *Service {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	if cfg.MaxStages <= 0 {
		cfg.MaxStages = 20
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = 10 * time.Second
	}
	if cfg.ScaleInterval <= 0 {
		cfg.ScaleInterval = time.Second
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID = defaultInstanceID()
	}
	if cfg.DeploymentID == "" {
		cfg.DeploymentID = DefaultDeployment
	}
	if cfg.MaxBroadcasts <= 0 {
		cfg.MaxBroadcasts = 20
	}
	if cfg.StageQuota <= 0 {
		cfg.StageQuota = 100
	}
	if cfg.MaxSeatWait < cfg.SeatWait {
		cfg.MaxSeatWait = max(cfg.SeatWait, 10*time.Second)
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if len(cfg.SeatKeySecret) == 0 {
		cfg.SeatKeySecret = []byte(rand.Text())
	}
	// A lease holder must be unique, even if two instances were given
	// the same INSTANCE_ID: leases held by "the same" holder are renewed,
	// not refused, and both would work on a broadcast at once.
	holder := cfg.InstanceID + "-" + newParticipantID()[:6]
	s := &Service{
		cfg:       cfg,
		instance:  holder,
		store:     st,
		seats:     st,
		ivs:       i,
		tokens:    tokens,
		log:       log,
		now:       now,
		seatCheck: make(chan struct{}, 1),
		queue:     newWorkQueue(nil, log),
		observer:  cfg.Observer,
		metrics:   cfg.Metrics,
		// Until measured, assume IVS's usual: a few seconds from
		// CreateStage to an active replica.
		provisioning: newEWMA(3 * time.Second),
	}
	s.queue.onReconcile = func(_ string, took time.Duration, err error) { s.metrics.Reconciled(took, err) }
	return s
}

// sweepCalls bounds a broadcast's expiry sweep per tick: ExpireBatch
// seats a call, the rest on the next tick.
const sweepCalls = 10

func (s *Service) expireSeats(ctx context.Context) {
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		s.log.Warn("listing broadcasts for seat expiry", "error", err)
		return
	}
	for _, b := range bs {
		for range sweepCalls {
			// Seats answered with an error were freed all the same (a
			// store that sweeps in steps fails part-way).
			freed, err := s.store.ExpireSeats(ctx, b.ID, s.now())
			for _, seat := range freed {
				s.log.Debug("seat expired", "broadcast", b.ID, "stage", seat.StageArn, "user", seat.UserID)
				// The viewer was last known present at its last heartbeat.
				s.observer.SeatClosed(seat, EndExpired, seat.ExpiresAt.Add(-s.cfg.HeartbeatTimeout))
			}
			if len(freed) > 0 {
				s.log.Info("seats expired", "broadcast", b.ID, "seats", len(freed))
				s.seatsChanged()
			}
			if err != nil {
				s.log.Warn("expiring seats", "broadcast", b.ID, "error", err)
				break
			}
			if len(freed) < store.ExpireBatch {
				break
			}
		}
	}
}

// origin returns the broadcast's origin stage, creating it (tagged) on first
// use. Concurrent first uses in this process share one creation; across
// instances, the store's create-if-absent picks one and the others delete
// what they created.
func (s *Service) origin(ctx context.Context, broadcastID string) (string, error) {
	if b, err := s.store.GetBroadcast(ctx, broadcastID); err == nil {
		if !b.EndingSince.IsZero() {
			return "", endingErr(broadcastID)
		}
		return b.OriginArn, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return "", failWrap(ErrUnavailable, err, "reading broadcast %s", broadcastID)
	}
	arn, err, _ := s.origins.Do(broadcastID, func() (any, error) {
		if err := s.admitBroadcast(ctx, broadcastID); err != nil {
			return "", err
		}
		return s.createOrigin(context.WithoutCancel(ctx), broadcastID)
	})
	if err != nil {
		return "", err
	}
	return arn.(string), nil
}

func (s *Service) createOrigin(ctx context.Context, broadcastID string) (string, error) {
	var st IVSStage
	created := false
	if broadcastID == DefaultBroadcast && s.cfg.OriginArn != "" {
		var err error
		if st, err = s.ivs.GetStage(ctx, s.cfg.OriginArn); err != nil {
			return "", failWrap(ErrUnavailable, err, "MASTER_STAGE_ARN %s cannot be read", s.cfg.OriginArn)
		}
	} else {
		var err error
		st, err = s.ivs.CreateStage(ctx, stageName(broadcastID, store.RoleOrigin), s.stageTags(broadcastID, store.RoleOrigin))
		if err != nil {
			return "", ivsFailure(err, "creating the origin stage of broadcast %s", broadcastID)
		}
		created = true
	}
	now := s.now()
	rec := store.Stage{Arn: st.Arn, BroadcastID: broadcastID, Role: store.RoleOrigin, Name: st.Name, Capacity: s.cfg.StageCapacity, CreatedAt: now}
	// drop takes back an origin that did not become the broadcast's: its
	// record would otherwise seat viewers where no host will publish.
	drop := func(record bool, why string) {
		ctx := context.WithoutCancel(ctx)
		if record {
			if _, err := s.store.DeleteStage(ctx, st.Arn); err != nil {
				s.log.Warn("dropping origin record", "stage", st.Arn, "why", why, "error", err)
			}
		}
		if created {
			if err := s.ivs.DeleteStage(ctx, st.Arn); err != nil {
				s.log.Warn("deleting origin stage", "stage", st.Arn, "why", why, "error", err)
			}
		}
	}
	if err := s.store.PutStage(ctx, rec); err != nil {
		drop(false, "not recorded")
		return "", failWrap(ErrUnavailable, err, "recording origin stage")
	}
	b, err := s.store.CreateBroadcast(ctx, store.Broadcast{ID: broadcastID, OriginArn: st.Arn, CreatedAt: now})
	switch {
	case errors.Is(err, store.ErrExists) && b.OriginArn == st.Arn:
		// Reconcile adopted this very stage meanwhile.
		return st.Arn, nil
	case errors.Is(err, store.ErrExists):
		drop(true, "another instance made the broadcast's origin")
		return b.OriginArn, nil
	case err != nil:
		drop(true, "broadcast not recorded")
		return "", failWrap(ErrUnavailable, err, "recording broadcast %s", broadcastID)
	}
	s.log.Info("origin stage ready", "broadcast", broadcastID, "stage", st.Arn, "created", created)
	return st.Arn, nil
}

func stageName(broadcastID string, role store.Role) string {
	return "stagefleet-" + broadcastID + "-" + string(role)
}

func (s *Service) stageTags(broadcastID string, role store.Role) map[string]string {
	return map[string]string{TagBroadcast: broadcastID, TagRole: string(role), TagDeployment: s.cfg.DeploymentID}
}

// ours says whether a stage is tagged as this deployment's: a stage of
// another deployment in the same account is neither adopted, counted nor
// deleted.
func (s *Service) ours(st IVSStage) bool {
	if st.Tags[TagBroadcast] == "" {
		return false
	}
	d := st.Tags[TagDeployment]
	if d == "" {
		d = DefaultDeployment
	}
	return d == s.cfg.DeploymentID
}

// ivsFailure turns an IVS error into a fleet error with a message for the
// caller.
func ivsFailure(err error, format string, args ...any) *Error {
	kind := ErrUnavailable
	switch {
	case errors.Is(err, ErrIVSNotFound):
		kind = ErrNotFound
	case errors.Is(err, ErrIVSNotPublishing):
		kind = ErrNotPublishing
	case errors.Is(err, ErrIVSQuota):
		kind = ErrStageLimit
	case errors.Is(err, ErrIVSValidation):
		kind = ErrInvalid
	}
	return failWrap(kind, err, format, args...)
}

// newParticipantID returns a random id (base32, 26 characters) that fits
// IVS's participant id pattern.
func newParticipantID() string { return rand.Text() }

// anyPublishing says whether a host publishes: the broadcast is live.
func anyPublishing(hosts []store.Host) bool {
	for _, h := range hosts {
		if h.Publishing {
			return true
		}
	}
	return false
}
