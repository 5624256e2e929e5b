package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stagefleet/stagefleet/internal/store"
)

// StateSource is what a scrape reads of the store: every broadcast's
// stages and replications.
type StateSource interface {
	ListBroadcasts(ctx context.Context) ([]store.Broadcast, error)
	ListStages(ctx context.Context, broadcastID string) ([]store.Stage, error)
	ListReplications(ctx context.Context, broadcastID string) ([]store.Replication, error)
}

// stateTimeout bounds a scrape's store reads: a scrape must answer within
// Prometheus's own timeout (10 s by default), the rest of it included.
const stateTimeout = 5 * time.Second

// Stage states as stagefleet_stages reports them.
const (
	StageSeatable     = "seatable"
	StageProvisioning = "provisioning"
	StageDraining     = "draining"
	StageIdle         = "idle"
)

var (
	stageRoles   = []store.Role{store.RoleOrigin, store.RoleReplica, store.RoleManual}
	stageStates  = []string{StageSeatable, StageProvisioning, StageDraining, StageIdle}
	replStates   = []string{store.ReplPending, store.ReplStarting, store.ReplActive, store.ReplStopped, store.ReplFailed}
	waitingDesc  = prometheus.NewDesc(namespace+"_waiting_viewers", "Viewers waiting for a seat on this instance, by broadcast.", []string{"broadcast"}, nil)
	seatsDesc    = prometheus.NewDesc(namespace+"_seats", "Viewers seated, by broadcast (the store's count: the same on every instance).", []string{"broadcast"}, nil)
	capacityDesc = prometheus.NewDesc(namespace+"_seat_capacity", "Seats of the stages that take viewers now, by broadcast (the store's count).", []string{"broadcast"}, nil)
	stagesDesc   = prometheus.NewDesc(namespace+"_stages", "Stages by role (origin, replica, manual) and state (seatable, provisioning, draining, idle) (the store's count).", []string{"role", "state"}, nil)
	replsDesc    = prometheus.NewDesc(namespace+"_replications", "Host replications by state (pending, starting, active, stopped, failed) (the store's count).", []string{"state"}, nil)
	endingDesc   = prometheus.NewDesc(namespace+"_broadcasts_ending", "Broadcasts being ended; the next reconcile finishes an end that was cut short (the store's count).", nil, nil)
	oldestEnd    = prometheus.NewDesc(namespace+"_oldest_end_seconds", "Seconds since the oldest end in progress began, 0 when none: one that keeps growing is an end that keeps failing (the controller's log says why).", nil, nil)
)

// stageState is what a stage is doing: taking viewers, being removed, a
// replica not yet taking viewers (its replications are starting), or
// neither (an origin with no host publishing, a manual stage).
func stageState(st store.Stage) string {
	switch {
	case st.Draining:
		return StageDraining
	case st.Seatable:
		return StageSeatable
	case st.Role == store.RoleReplica:
		return StageProvisioning
	}
	return StageIdle
}

// stateCollector reads the gauges at scrape time, so that they are never
// stale and cost nothing between scrapes.
type stateCollector struct {
	src        StateSource
	waiting    func() map[string]int
	broadcasts *broadcastLabels
}

// ObserveState makes every scrape read the store's stages and
// replications from src, and this instance's waiting viewers by broadcast
// from waiting. Call it once, before serving or RunCloudWatch.
func (m *Metrics) ObserveState(src StateSource, waiting func() map[string]int) {
	m.state = &stateCollector{src: src, waiting: waiting, broadcasts: m.broadcasts}
	m.reg.MustRegister(m.state)
}

// ObserveHistory reports the viewing history's writer at every scrape:
// records waiting to be written (pending) and dropped since the start
// (dropped). Call it once, when the history is on.
func (m *Metrics) ObserveHistory(pending func() int, dropped func() int64) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "history_pending",
			Help: "Viewing history records (session events and snapshots) queued or being written.",
		}, func() float64 { return float64(pending()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "history_dropped_total",
			Help: "Viewing history records dropped: the buffer was full (a long database outage) or the record was invalid.",
		}, func() float64 { return float64(dropped()) }),
	)
}

// snapshot is one reading of the state.
type snapshot struct {
	// broadcasts by label value: folded broadcasts add up under Other.
	broadcasts              map[string]*broadcastState
	stages                  map[[2]string]int // role, state
	replications            map[string]int
	totalSeats, totalStages int
	ending                  int
	oldestEnd               time.Duration
}

type broadcastState struct{ waiting, seats, capacity int }

func (c *stateCollector) read(ctx context.Context) (snapshot, error) {
	s := snapshot{broadcasts: map[string]*broadcastState{}, stages: map[[2]string]int{}, replications: map[string]int{}}
	bs, err := c.src.ListBroadcasts(ctx)
	if err != nil {
		return s, fmt.Errorf("listing broadcasts: %w", err)
	}
	waiting := c.waiting()
	for _, b := range bs {
		stages, err := c.src.ListStages(ctx, b.ID)
		if err != nil {
			return s, fmt.Errorf("listing stages of %s: %w", b.ID, err)
		}
		reps, err := c.src.ListReplications(ctx, b.ID)
		if err != nil {
			return s, fmt.Errorf("listing replications of %s: %w", b.ID, err)
		}
		if !b.EndingSince.IsZero() {
			s.ending++
			s.oldestEnd = max(s.oldestEnd, time.Since(b.EndingSince))
		}
		label := c.broadcasts.of(b.ID)
		g := s.broadcasts[label]
		if g == nil {
			g = &broadcastState{}
			s.broadcasts[label] = g
		}
		g.waiting += waiting[b.ID]
		for _, st := range stages {
			g.seats += st.Seats
			if st.Seatable {
				g.capacity += st.Capacity
			}
			s.stages[[2]string{string(st.Role), stageState(st)}]++
			s.totalSeats += st.Seats
		}
		s.totalStages += len(stages)
		for _, r := range reps {
			s.replications[r.State]++
		}
	}
	return s, nil
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{waitingDesc, seatsDesc, capacityDesc, stagesDesc, replsDesc, endingDesc, oldestEnd} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	s, err := c.read(ctx)
	if err != nil {
		// Served as a scrape error (logged); every other metric is still
		// served.
		ch <- prometheus.NewInvalidMetric(stagesDesc, err)
		return
	}
	for b, g := range s.broadcasts {
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(g.waiting), b)
		ch <- prometheus.MustNewConstMetric(seatsDesc, prometheus.GaugeValue, float64(g.seats), b)
		ch <- prometheus.MustNewConstMetric(capacityDesc, prometheus.GaugeValue, float64(g.capacity), b)
	}
	// Every role and state, 0 included, so that a state emptied reads 0
	// rather than vanishing.
	for _, role := range stageRoles {
		for _, state := range stageStates {
			ch <- prometheus.MustNewConstMetric(stagesDesc, prometheus.GaugeValue, float64(s.stages[[2]string{string(role), state}]), string(role), state)
		}
	}
	ch <- prometheus.MustNewConstMetric(endingDesc, prometheus.GaugeValue, float64(s.ending))
	ch <- prometheus.MustNewConstMetric(oldestEnd, prometheus.GaugeValue, s.oldestEnd.Seconds())
	for _, state := range replStates {
		ch <- prometheus.MustNewConstMetric(replsDesc, prometheus.GaugeValue, float64(s.replications[state]), state)
	}
}
