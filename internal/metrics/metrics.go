// Package metrics is stagefleet's Prometheus instrumentation: one registry
// (never the global default), its collectors, and the small methods the
// fleet, the IVS client and the store wrapper call. The packages it serves
// define the interfaces they call through; app hands them a *Metrics.
//
// Labels are bounded: a broadcast id is a label value only for the first
// MaxBroadcasts broadcasts seen, the rest count under "other"; stage ARNs,
// participant and user ids are never label values.
package metrics

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Other is the broadcast label value of every broadcast past the first
// MaxBroadcasts seen.
const Other = "other"

// DefaultMaxBroadcasts is METRICS_MAX_BROADCASTS's default.
const DefaultMaxBroadcasts = 20

const namespace = "stagefleet"

// Options configure Metrics.
type Options struct {
	// MaxBroadcasts broadcasts get their own label value; 0 means
	// DefaultMaxBroadcasts.
	MaxBroadcasts int
	// Logger is told of scrapes that failed in part; nil: nowhere.
	Logger *slog.Logger
}

// Metrics owns the registry and every collector.
type Metrics struct {
	reg        *prometheus.Registry
	log        *slog.Logger
	broadcasts *broadcastLabels

	viewerTokens *prometheus.CounterVec
	joinSeconds  prometheus.Histogram
	seatSeconds  prometheus.Histogram

	ivsCalls     *prometheus.CounterVec
	ivsRetries   *prometheus.CounterVec
	ivsThrottles *prometheus.CounterVec

	reconciles       *prometheus.CounterVec
	reconcileSeconds prometheus.Histogram
	repairs          *prometheus.CounterVec
	leaseAcquired    *prometheus.CounterVec
	leaseLost        *prometheus.CounterVec

	eventsReceived prometheus.Counter
	events         *prometheus.CounterVec
	eventLag       prometheus.Histogram

	storeCalls  *prometheus.CounterVec
	storeErrors *prometheus.CounterVec

	// state reads the store at scrape time (ObserveState).
	state *stateCollector
}

// New returns Metrics with the Go runtime and process collectors
// registered.
func New(o Options) *Metrics {
	if o.MaxBroadcasts <= 0 {
		o.MaxBroadcasts = DefaultMaxBroadcasts
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		reg:        prometheus.NewRegistry(),
		log:        o.Logger,
		broadcasts: newBroadcastLabels(o.MaxBroadcasts),

		viewerTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "viewer_tokens_total",
			Help: "Viewer token requests (and rejoins without a seat) by broadcast and outcome: ok, not_live, full, limit, not_found, canceled, error.",
		}, []string{"broadcast", "outcome"}),
		joinSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "viewer_token_duration_seconds",
			Help:    "Time to answer a viewer token request, any outcome, the wait for a seat included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		seatSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "time_to_seat_seconds",
			Help:    "How long a seated viewer waited for a seat: 0 when one was free, else the wait while every seat was taken.",
			Buckets: []float64{0, .05, .1, .25, .5, 1, 2, 3, 5, 10, 20, 30},
		}),

		ivsCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "ivs_calls_total",
			Help: "IVS calls (a paginated list counts a call per page) by operation and outcome: ok, throttled, not_found, conflict, quota, validation, not_publishing, access_denied, canceled, error.",
		}, []string{"operation", "outcome"}),
		ivsRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "ivs_retries_total",
			Help: "Attempts of IVS calls after their first, made by the SDK's retryer.",
		}, []string{"operation"}),
		ivsThrottles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "ivs_throttles_total",
			Help: "IVS attempts held back: by IVS (source service: ThrottlingException) or by this client's quota pacer (source pacer: the attempt waited for the operation's TPS quota).",
		}, []string{"operation", "source"}),

		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "reconciles_total",
			Help: "Controller reconciles of one broadcast, by outcome: ok or error (retried with back-off).",
		}, []string{"outcome"}),
		reconcileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "reconcile_duration_seconds",
			Help:    "Time one reconcile of one broadcast took, its IVS calls included.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "repairs_total",
			Help: "Records repaired from what IVS showed in a resync, by kind: host_repaired, host_restored, replication_repaired, replication_restored, stage_adopted, orphan_deleted.",
		}, []string{"kind"}),
		leaseAcquired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "lease_acquisitions_total",
			Help: "Leases granted to this instance (a renewal of a lease held is not counted), by lease: control or reconcile.",
		}, []string{"lease"}),
		leaseLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "lease_losses_total",
			Help: "Leases this instance lost while working under them (not renewed in time), by lease.",
		}, []string{"lease"}),

		eventsReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "events_received_total",
			Help: "IVS events received.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "events_total",
			Help: "IVS events handled, by result: applied, stale, duplicate, ignored, error.",
		}, []string{"result"}),
		eventLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "event_lag_seconds",
			Help:    "Time from an IVS event's own time to its receipt here (0 for an event dated ahead of this clock).",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),

		storeCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "store_calls_total",
			Help: "Store calls (a round trip each with Redis) by method.",
		}, []string{"method"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "store_errors_total",
			Help: "Store calls that failed, by method; answers such as not found, full or lease held are not failures.",
		}, []string{"method"}),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.viewerTokens, m.joinSeconds, m.seatSeconds,
		m.ivsCalls, m.ivsRetries, m.ivsThrottles,
		m.reconciles, m.reconcileSeconds, m.repairs, m.leaseAcquired, m.leaseLost,
		m.eventsReceived, m.events, m.eventLag,
		m.storeCalls, m.storeErrors,
	)
	return m
}

// Handler serves the registry in Prometheus's text format. A scrape whose
// store reads fail still serves every other metric; the failure is logged.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      errorLog{m.log},
		ErrorHandling: promhttp.ContinueOnError,
		// promhttp_metric_handler_errors_total, in this registry.
		Registry: m.reg,
	})
}

// errorLog writes promhttp's errors to the service's log.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Println(v ...any) {
	l.log.Warn("metrics scrape", "error", strings.TrimSpace(fmt.Sprintln(v...)))
}

// broadcastLabels gives the first max broadcast ids seen their own label
// value and every later one Other, so that the series stay bounded however
// many broadcasts a deployment runs. A broadcast keeps its label value for
// the life of the process.
type broadcastLabels struct {
	max  int
	seen sync.Map // broadcast id -> struct{}
	mu   sync.Mutex
	n    int // under mu
}

func newBroadcastLabels(max int) *broadcastLabels { return &broadcastLabels{max: max} }

func (l *broadcastLabels) of(id string) string {
	// A broadcast named "other" would be told from the folded ones by
	// nothing: it is counted with them.
	if id == Other {
		return Other
	}
	if _, ok := l.seen.Load(id); ok {
		return id
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen.Load(id); ok {
		return id
	}
	if l.n >= l.max {
		// Not remembered: what is kept stays bounded too.
		return Other
	}
	l.seen.Store(id, struct{}{})
	l.n++
	return id
}

// known is id when it already has its own label value, else Other: it
// gives none out.
func (l *broadcastLabels) known(id string) string {
	if _, ok := l.seen.Load(id); ok && id != Other {
		return id
	}
	return Other
}

// seconds is d in seconds, never below 0.
func seconds(d time.Duration) float64 { return max(0, d.Seconds()) }
