package loadtest

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/stagefleet/stagefleet/internal/emulator"
)

// Tags stagefleet puts on its stages (fleet.TagBroadcast, fleet.TagRole):
// written here, as the load test knows the service only from outside.
const (
	tagBroadcast = "stagefleet:broadcast"
	tagRole      = "stagefleet:role"
	roleReplica  = "replica"
)

// stageTrack is what the samples saw of one of the run's stages.
type stageTrack struct {
	arn, broadcast, role string
	// created is when a sample first saw the stage; gone, when one first
	// missed it (deleted).
	created, deleted time.Duration
	gone             bool
	// active is when a sample first saw a replication into the stage ACTIVE.
	active         time.Duration
	isActive       bool
	maxSubscribers int
}

// sample is one point of the series, with the IVS counters at that moment.
type sample struct {
	at       time.Duration
	point    Sample
	counters map[string]emulator.OpCounter
}

// sampler polls the emulator's state for the run's stages, their seats and
// replications, and IVS's call counters.
type sampler struct {
	c          *client
	every      time.Duration
	broadcasts map[string]bool
	rec        *recorder
	progress   func(Progress)
	start      time.Time

	mu       sync.Mutex
	phase    string
	samples  []sample
	stages   map[string]*stageTrack
	quotas   map[string]float64
	failures int
}

func newSampler(c *client, every time.Duration, broadcasts []string, rec *recorder, progress func(Progress)) *sampler {
	s := &sampler{
		c: c, every: every, rec: rec, progress: progress, start: time.Now(), phase: "starting",
		broadcasts: map[string]bool{}, stages: map[string]*stageTrack{},
	}
	for _, b := range broadcasts {
		s.broadcasts[b] = true
	}
	return s
}

func (s *sampler) setPhase(p string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.phase = p
}

// run samples every interval until ctx ends. A failed sample is counted and
// skipped: the next one sees the same stages.
func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.sample(ctx); err != nil && ctx.Err() == nil {
				s.mu.Lock()
				s.failures++
				s.mu.Unlock()
			}
		}
	}
}

// sample takes one sample.
func (s *sampler) sample(ctx context.Context) error {
	var st emulator.State
	// The participants are not needed, and a million of them would make
	// each sample hundreds of megabytes.
	res, err := s.c.callEmulator(ctx, http.MethodGet, "/_emulator/state?participants=false", nil, &st)
	if err != nil {
		return err
	}
	if res.Status != http.StatusOK {
		return fmt.Errorf("GET /_emulator/state: %s", res)
	}
	now := time.Now()
	c := s.rec.counts()
	s.mu.Lock()
	p := s.observe(now, st, c)
	phase := s.phase
	s.mu.Unlock()
	if s.progress != nil {
		s.progress(Progress{
			Phase: phase, Elapsed: now.Sub(s.start), Planned: c.planned, Requested: c.asked, Waiting: c.waiting,
			Seated: c.seatedNow, Left: c.left, Refused: c.refused, Stages: p.Stages,
		})
	}
	return nil
}

// observe records one state; s.mu is held.
func (s *sampler) observe(now time.Time, st emulator.State, c counts) Sample {
	at := now.Sub(s.start)
	p := Sample{Seconds: at.Seconds(), Seated: c.seatedNow, Waiting: c.waiting, Refused: c.refused}
	present := map[string]bool{}
	for _, stage := range st.Stages {
		b := stage.Tags[tagBroadcast]
		if !s.broadcasts[b] {
			continue
		}
		present[stage.Arn] = true
		t := s.stages[stage.Arn]
		if t == nil {
			t = &stageTrack{arn: stage.Arn, broadcast: b, role: stage.Tags[tagRole], created: at}
			s.stages[stage.Arn] = t
		}
		t.maxSubscribers = max(t.maxSubscribers, stage.MaxSubscribers)
		p.Stages++
		p.Subscribers += stage.Subscribers
		if t.role == roleReplica {
			p.Replicas++
		}
	}
	for _, t := range s.stages {
		if !t.gone && !present[t.arn] {
			t.gone, t.deleted = true, at
		}
	}
	for _, r := range st.Replications {
		if t := s.stages[r.DestinationStageArn]; t != nil && r.State == "ACTIVE" && !t.isActive {
			t.isActive, t.active = true, at
		}
	}
	s.samples = append(s.samples, sample{at: at, point: p, counters: st.Counters})
	s.quotas = st.Quotas
	return p
}

// replicasNow returns the run's replica stages at the last sample and when
// it was taken.
func (s *sampler) replicasNow() (int, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) == 0 {
		return 0, time.Time{}
	}
	last := s.samples[len(s.samples)-1]
	return last.point.Replicas, s.start.Add(last.at)
}

// tracks returns the stages seen, oldest first.
func (s *sampler) tracks() []stageTrack {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]stageTrack, 0, len(s.stages))
	for _, t := range s.stages {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b stageTrack) int {
		return cmp.Or(cmp.Compare(a.created, b.created), cmp.Compare(a.arn, b.arn))
	})
	return out
}

// ivsCalls returns the calls each IVS operation took during the run (the
// first sample is the baseline), with the busiest second of each.
func ivsCalls(samples []sample, quotas map[string]float64) []OperationCalls {
	if len(samples) < 2 {
		return []OperationCalls{}
	}
	first, last := samples[0].counters, samples[len(samples)-1].counters
	out := []OperationCalls{}
	for op, c := range last {
		b := first[op]
		calls := c.Calls - b.Calls
		if calls == 0 {
			continue
		}
		out = append(out, OperationCalls{
			Operation:      op,
			Calls:          calls,
			Throttled:      c.Throttled - b.Throttled,
			Errors:         c.Errors - b.Errors,
			PeakPerSecond:  math.Round(peakRate(samples, op)*10) / 10,
			QuotaPerSecond: quotas[op],
		})
	}
	slices.SortFunc(out, func(a, b OperationCalls) int { return cmp.Compare(a.Operation, b.Operation) })
	return out
}

// peakRate is the most calls of op in any stretch of at least a second
// between two samples, per second.
func peakRate(samples []sample, op string) float64 {
	peak := 0.0
	i := 0
	for j := range samples {
		for i+1 < j && samples[j].at-samples[i+1].at >= time.Second {
			i++
		}
		d := samples[j].at - samples[i].at
		if d < time.Second {
			continue
		}
		rate := float64(samples[j].counters[op].Calls-samples[i].counters[op].Calls) / d.Seconds()
		peak = max(peak, rate)
	}
	return peak
}
