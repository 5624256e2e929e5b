// Package emulator is a local Amazon IVS real-time service. It speaks the
// service's restJson1 wire protocol, so any official AWS client (Go, JS,
// Python SDKs, the AWS CLI) works against it unchanged, and it simulates
// participants joining, publishing and being replicated through a control API
// under /_emulator/.
//
// It deliberately shares no code with the rest of stagefleet: it must behave
// like AWS, not like stagefleet's assumptions of AWS.
package emulator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Config is what an Emulator is built from. The zero value of a field means
// the default of DefaultConfig unless said otherwise.
type Config struct {
	Region    string
	AccountID string

	// StageCapacity is the number of subscribers one stage holds.
	StageCapacity int
	// MaxPublishers is the number of publishers one stage holds.
	MaxPublishers int
	// MaxStages is the account's stage quota.
	MaxStages int

	// Quotas is each operation's rate limit in requests per second; an
	// operation that is absent or has 0 is not limited.
	Quotas map[string]float64
	// Latency is added before each operation is served; key "*" applies to
	// every operation that has no entry of its own. None may exceed 20 s
	// (New refuses it), nor may it with an injected fault's latency added
	// (the sum is capped), so that answers fit in the server's WriteTimeout.
	Latency map[string]time.Duration
	// ReplicaDelay is how long a started replication takes to become ACTIVE.
	ReplicaDelay time.Duration

	// EventsURLs receive every event as an HTTP POST.
	EventsURLs []string
	// EventsSecret, when set, is sent as header x-stagefleet-events-secret.
	EventsSecret string
	// Delivery perturbs event delivery the way EventBridge may.
	Delivery Delivery

	Logger *slog.Logger
}

// DefaultQuotas returns IVS real-time's default per-account TPS quotas. Those
// for replication are assumed (AWS does not publish them).
func DefaultQuotas() map[string]float64 {
	q := map[string]float64{"CreateParticipantToken": 50}
	for _, op := range []string{
		"CreateStage", "DeleteStage", "GetStage", "ListStages", "UpdateStage",
		"GetParticipant", "ListParticipants", "DisconnectParticipant",
		"GetStageSession", "ListStageSessions",
		"StartParticipantReplication", "StopParticipantReplication", "ListParticipantReplicas",
	} {
		q[op] = 5
	}
	for _, op := range []string{"ImportPublicKey", "GetPublicKey", "ListPublicKeys", "DeletePublicKey"} {
		q[op] = 3
	}
	for _, op := range []string{"TagResource", "UntagResource", "ListTagsForResource"} {
		q[op] = 10
	}
	return q
}

// DefaultConfig returns the configuration of an emulator that behaves like a
// fresh AWS account in us-east-1 with default quotas, and answers fast.
func DefaultConfig() Config {
	return Config{
		Region:        "us-east-1",
		AccountID:     "123456789012",
		StageCapacity: 10000,
		MaxPublishers: 12,
		MaxStages:     100,
		Quotas:        DefaultQuotas(),
	}
}

// Emulator is one emulated IVS real-time account in one region.
type Emulator struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	// signer signs the tokens CreateParticipantToken returns.
	signer *ecdsa.PrivateKey

	events *eventBus

	mu       sync.Mutex
	st       *state
	limiters map[string]*rate.Limiter
	faults   map[string]Fault
	counters map[string]*OpCounter
	// observed is what the emulator noticed about its clients; like
	// counters, it is not account state, but Reset clears it too.
	observed Observations
}

// New builds an emulator from cfg, filling unset fields from DefaultConfig.
func New(cfg Config) (*Emulator, error) {
	def := DefaultConfig()
	if cfg.Region == "" {
		cfg.Region = def.Region
	}
	if cfg.AccountID == "" {
		cfg.AccountID = def.AccountID
	}
	if cfg.StageCapacity <= 0 {
		cfg.StageCapacity = def.StageCapacity
	}
	if cfg.MaxPublishers <= 0 {
		cfg.MaxPublishers = def.MaxPublishers
	}
	if cfg.MaxStages <= 0 {
		cfg.MaxStages = def.MaxStages
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Delivery.validate(); err != nil {
		return nil, err
	}
	for op, d := range cfg.Latency {
		if err := checkLatency(d); err != nil {
			return nil, fmt.Errorf("latency of %s: %w", op, err)
		}
	}
	signer, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate token signing key: %w", err)
	}
	e := &Emulator{
		cfg:      cfg,
		log:      cfg.Logger,
		now:      time.Now,
		signer:   signer,
		st:       newState(),
		limiters: newLimiters(cfg.Quotas),
		faults:   map[string]Fault{},
		counters: map[string]*OpCounter{},
	}
	e.events = newEventBus(cfg.EventsURLs, cfg.EventsSecret, cfg.Delivery, cfg.Logger)
	return e, nil
}

func newLimiters(quotas map[string]float64) map[string]*rate.Limiter {
	l := make(map[string]*rate.Limiter, len(quotas))
	for op, tps := range quotas {
		if tps > 0 {
			l[op] = rate.NewLimiter(rate.Limit(tps), max(1, int(tps)))
		}
	}
	return l
}

// AddEventsURL makes the emulator post every later event to url as well.
func (e *Emulator) AddEventsURL(url string) { e.events.addURL(url) }

// Close stops event delivery; events not yet delivered are dropped.
func (e *Emulator) Close() {
	e.mu.Lock()
	e.st.stopTimers()
	e.mu.Unlock()
	e.events.close()
}

// Handler serves the IVS real-time API and the /_emulator/ control API.
func (e *Emulator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{operation}", e.serveOperation)
	mux.HandleFunc("GET /tags/{arn...}", e.serveTags("ListTagsForResource"))
	mux.HandleFunc("POST /tags/{arn...}", e.serveTags("TagResource"))
	mux.HandleFunc("DELETE /tags/{arn...}", e.serveTags("UntagResource"))
	e.registerControl(mux)
	return mux
}

// ListenAndServe serves Handler on addr, with NewHTTPServer's limits, until
// ctx is done.
func (e *Emulator) ListenAndServe(ctx context.Context, addr string) error {
	srv := NewHTTPServer(e.Handler())
	srv.Addr = addr
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	}
}
