// Package api is stagefleet's HTTP API, compatible with the previous
// server's: routes, the JSON envelope, auth, rate limit, request limits,
// validation, and the IVS events webhook.
package api

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

// Fleet is what the API needs of the fleet.
type Fleet interface {
	PublisherToken(ctx context.Context, broadcastID, userID string) (fleet.IssuedToken, error)
	ViewerToken(ctx context.Context, broadcastID, userID, stageArn string) (fleet.IssuedToken, error)
	MediaServerToken(ctx context.Context, serverID, stageArn string) (fleet.IssuedToken, error)
	Heartbeat(ctx context.Context, broadcastID, userID string, proof fleet.SeatProof) (store.Seat, error)
	Leave(ctx context.Context, broadcastID, userID string) (store.Seat, bool, error)
	Rejoin(ctx context.Context, broadcastID, userID, stageArn, participantID string) (fleet.IssuedToken, error)
	EndBroadcast(ctx context.Context, broadcastID, reason string) (fleet.Ended, error)

	CreateStage(ctx context.Context, broadcastID, name string, tags map[string]string) (fleet.StageView, error)
	Stage(ctx context.Context, arn string) (fleet.StageView, error)
	UpdateStage(ctx context.Context, arn, name string) (fleet.StageView, error)
	DeleteStage(ctx context.Context, arn string) error
	Stages(ctx context.Context, broadcastID string) ([]fleet.StageView, error)
	Origin(ctx context.Context, broadcastID string) (fleet.StageView, error)

	StartReplication(ctx context.Context, r fleet.Replication) (store.Replication, error)
	StopReplication(ctx context.Context, r fleet.Replication) error
	ReplicationStatus(ctx context.Context, stageArn string) ([]store.Replication, error)

	Hosts(ctx context.Context, broadcastID string) ([]store.Host, error)
	Publisher(ctx context.Context, broadcastID string) (store.Host, bool, error)
	Seat(ctx context.Context, broadcastID, userID string) (store.Seat, bool, error)
	SeatsPage(ctx context.Context, stageArn, cursor string, limit int) ([]store.Seat, string, store.Stage, error)
	BroadcastSeatsPage(ctx context.Context, broadcastID, cursor string, limit int) ([]store.Seat, string, error)
	WatchTotals(ctx context.Context, broadcastID string) (viewers int, seconds int64, err error)
	Broadcasts(ctx context.Context) ([]store.Broadcast, error)
	Broadcast(ctx context.Context, id string) (store.Broadcast, error)
	HandleEvent(ctx context.Context, ev fleet.Event) (fleet.EventResult, error)
	SeatLease() time.Duration
	Now() time.Time
}

// Health is what GET /health and GET /api/health report: the previous
// server's fields, and a named check per part.
type Health struct {
	// Status is HealthHealthy, HealthDegraded or HealthUnhealthy (the
	// answer is then a 503).
	Status      string         `json:"status"`
	Uptime      float64        `json:"uptime"`
	Environment string         `json:"environment"`
	Version     string         `json:"version"`
	Services    HealthServices `json:"services"`
	Memory      HealthMemory   `json:"memory"`
	// Checks name every part looked at and what was found.
	Checks     map[string]Check `json:"checks"`
	IVS        Component        `json:"ivs"`
	Store      Component        `json:"store"`
	Controller Component        `json:"controller"`
}

// Health states, as the previous server's clients wait for them.
const (
	HealthHealthy   = "healthy"
	HealthDegraded  = "degraded"
	HealthUnhealthy = "unhealthy"
)

// HealthServices is the previous server's view of its dependencies.
type HealthServices struct {
	// Redis is "connected", "disconnected", or "not used (memory store)".
	Redis string    `json:"redis"`
	AWS   HealthAWS `json:"aws"`
}

// HealthAWS is the previous server's services.aws.
type HealthAWS struct {
	Region string `json:"region"`
	// StageConfigured says the default broadcast has an origin stage.
	StageConfigured bool   `json:"stageConfigured"`
	Mode            string `json:"mode"`
}

// HealthMemory is the process's memory in MB, under the previous server's
// (Node's) names.
type HealthMemory struct {
	HeapUsed  float64 `json:"heapUsed"`
	HeapTotal float64 `json:"heapTotal"`
	RSS       float64 `json:"rss"`
}

// Check is one part's health: "ok", "degraded" or "failed", and why.
type Check struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// Component is the health of one part.
type Component struct {
	Status   string `json:"status"`
	Mode     string `json:"mode,omitempty"`
	Endpoint string `json:"endpoint,omitempty"`
	Embedded bool   `json:"embedded,omitempty"`
	Tokens   string `json:"tokens,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Options configure the API.
type Options struct {
	APISecretKey    string
	SkipAuth        bool
	InternalSecret  string
	EventsSecret    string
	RateLimitWindow time.Duration
	// RateLimitMax requests per client per window; 0 turns the limit off.
	RateLimitMax int
	MaxBodyBytes int64
	// TrustedProxies are the load balancers whose X-Forwarded-For names
	// the client (for the rate limit and the access log); a request from
	// any other address is its connection's client.
	TrustedProxies []netip.Prefix
	// AccessLogPerSecond bounds the access-log lines of answers below 500,
	// written at debug; 0 writes none. A 5xx is always logged, at warn.
	AccessLogPerSecond int
	Health             func(context.Context) Health
	// Version is the service's, for GET /.
	Version string
	// History is the viewing history; nil when it is off (its routes answer
	// 404).
	History History
	// CORSOrigins may call the API from a browser (CORS_ORIGINS); "*" is
	// any origin.
	CORSOrigins []string
	// Metrics serves GET /metrics (behind x-api-key); nil: that route
	// answers 404, the metrics being served on METRICS_ADDR.
	Metrics http.Handler
	// Live serves GET /ws; nil: that route answers 404.
	Live   Live
	Logger *slog.Logger
}

type server struct {
	opts  Options
	fleet Fleet
	log   *slog.Logger
	// proxies are the trusted ones, whose headers name the client.
	proxies trustedProxies
}

// route is one registered route; the OpenAPI document is checked against
// this list.
type route struct {
	method, path string
	// open routes need no x-api-key.
	open bool
	// unlimited routes are not counted by the per-client rate limit.
	unlimited bool
	handler   func(*server, http.ResponseWriter, *http.Request) *apiError
}

// eventsPath is the IVS events webhook. Events are not counted by the rate
// limit: they come in bursts from a few addresses (EventBridge, or the
// embedded emulator over loopback, the same address as local clients),
// carry their own secret, and a refused event delays replication or is
// dropped after retries.
const eventsPath = "/api/events/ivs"

var routes = []route{
	{"GET", "/api/health", true, false, (*server).health},
	{"GET", "/health", true, false, (*server).health},
	{"GET", "/{$}", true, false, (*server).root},
	{"GET", "/openapi.json", true, false, (*server).openAPI},
	{"GET", "/metrics", false, false, (*server).metrics},
	{"POST", eventsPath, true, true, (*server).ivsEvent},
	{"POST", "/api/token/publisher", false, false, (*server).publisherToken},
	{"POST", "/api/token/viewer", false, false, (*server).viewerToken},
	{"POST", "/api/token/mediaserver", false, false, (*server).mediaServerToken},
	{"GET", "/api/stage/list", false, false, (*server).stageList},
	{"GET", "/api/stage/master/info", false, false, (*server).masterInfo},
	{"POST", "/api/stage", false, false, (*server).createStage},
	{"GET", "/api/stage/{stageArn...}", false, false, (*server).getStage},
	{"PUT", "/api/stage/{stageArn...}", false, false, (*server).updateStage},
	{"DELETE", "/api/stage/{stageArn...}", false, false, (*server).deleteStage},
	{"POST", "/api/stage/replication/start", false, false, (*server).startReplication},
	{"DELETE", "/api/stage/replication/stop", false, false, (*server).stopReplication},
	{"GET", "/api/stage/replication/status/{stageArn...}", false, false, (*server).replicationStatus},
	{"GET", "/api/stage/replication/publisher-info", false, false, (*server).publisherInfo},
	{"POST", "/api/viewer/heartbeat", false, false, (*server).heartbeat},
	{"POST", "/api/viewer/leave", false, false, (*server).leave},
	{"POST", "/api/viewer/rejoin", false, false, (*server).rejoin},
	{"GET", "/api/viewer/list/{stageArn...}", false, false, (*server).viewerList},
	{"GET", "/api/viewer/duration", false, false, (*server).viewerDuration},
	{"GET", "/api/stats", false, false, (*server).stats},
	{"GET", "/api/stats/viewers", false, false, (*server).statsViewers},
	{"GET", "/api/stats/stages", false, false, (*server).statsStages},
	{"GET", "/api/stats/stages/{stageId}", false, false, (*server).statsStage},
	{"GET", "/api/stats/publisher", false, false, (*server).statsPublisher},
	{"GET", "/api/viewer/history/{userId}", false, false, (*server).viewerHistory},
	{"GET", "/api/viewer/stats/{stageArn...}", false, false, (*server).viewerStats},
	{"GET", "/api/stats/history", false, false, (*server).statsHistory},
	{"GET", "/api/stats/broadcasts/{broadcastId}", false, false, (*server).broadcastStats},
	// GET /ws checks the key itself: a browser sends it in the query or a
	// subprotocol, since it cannot set headers on a WebSocket.
	{"GET", "/ws", true, false, (*server).ws},
	{"DELETE", "/api/broadcasts/{broadcastId}", false, false, (*server).endBroadcast},
	{"GET", "/dashboard", true, false, (*server).dashboardPage},
	{"GET", "/dashboard/static/{file...}", true, false, (*server).dashboardFile},
}

// New returns the API's handler.
func New(opts Options, f Fleet) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 64 << 10
	}
	proxies := trustedProxies(opts.TrustedProxies)
	s := &server{opts: opts, fleet: f, log: opts.Logger, proxies: proxies}
	client := proxies.clientIP
	limit := func(h http.Handler) http.Handler { return h }
	if opts.RateLimitMax > 0 {
		limit = newRateLimiter(opts.RateLimitMax, opts.RateLimitWindow, client).middleware
	}
	mux := http.NewServeMux()
	for _, rt := range routes {
		var h http.Handler = s.adapt(rt.handler)
		if !rt.open {
			h = requireAPIKey(opts.APISecretKey, opts.SkipAuth, h)
		}
		if strings.Contains(rt.path, "{") {
			h = notShadowed(h)
		}
		if !rt.unlimited {
			h = limit(h)
		}
		mux.Handle(rt.method+" "+rt.path, h)
	}
	mux.Handle("/", limit(unrouted(mux)))
	h := withCORS(opts.CORSOrigins, cleanPaths(limitBody(opts.MaxBodyBytes, mux)))
	return newAccessLog(opts.Logger, opts.AccessLogPerSecond, client).observe(h)
}

func (s *server) adapt(h func(*server, http.ResponseWriter, *http.Request) *apiError) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A 5xx's cause is logged where it is known (fail), and the
		// request itself by the access log.
		if e := h(s, w, r); e != nil {
			writeError(w, e)
		}
	})
}

// fail maps an error from the fleet, logging the cause of a 5xx: at error
// for a fault, at debug for a refusal the client is told to retry (no seat
// or no stage left), which is the service working as designed and comes by
// the thousand in a join storm.
func (s *server) fail(err error) *apiError {
	e := fromFleet(err)
	switch {
	case refusal(e):
		s.log.Debug("fleet refused", "code", e.code, "error", err)
	case e.status >= 500:
		s.log.Error("fleet error", "code", e.code, "error", err)
	}
	return e
}

// refusal says whether e is a 503 that tells the client to come back
// (STAGE_FULL, STAGE_LIMIT_REACHED, or any 503 with Retry-After) rather
// than a fault.
func refusal(e *apiError) bool {
	return e.status == http.StatusServiceUnavailable &&
		(e.retryAfter > 0 || e.code == CodeStageFull || e.code == CodeStageLimitReached)
}
