package loadtest

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Report is what a run measured, and how that compares with the service's
// targets. The text report and the JSON report are this one struct.
type Report struct {
	Scenario   Scenario  `json:"scenario"`
	API        string    `json:"api"`
	Emulator   string    `json:"emulator"`
	Broadcasts []string  `json:"broadcasts"`
	Settings   Settings  `json:"settings"`
	StartedAt  time.Time `json:"startedAt"`
	// DurationSeconds is the whole run, hosts going live included.
	DurationSeconds float64 `json:"durationSeconds"`
	// ViewersStartSeconds is when the first viewer was due, on the clock
	// of Series (0 is the start of the run).
	ViewersStartSeconds float64 `json:"viewersStartSeconds"`
	// StoppedBy is completed, timeout or interrupted.
	StoppedBy string `json:"stoppedBy"`
	// Warnings name the target's settings that made the scenario
	// impossible, as found before the viewers started.
	Warnings []string `json:"warnings"`

	Viewers ViewerCounts `json:"viewers"`
	// TokenLatency is how long POST /api/token/viewer took to answer 200
	// (a request that waited for a seat included).
	TokenLatency Distribution `json:"tokenLatency"`
	// TimeToSeat runs from a viewer's first token request to the emulator
	// accepting its join, retries after 503s included.
	TimeToSeat Distribution `json:"timeToSeat"`
	// Refused counts the viewer-token answers that viewers retried, by
	// error code: STAGE_FULL, STAGE_LIMIT_REACHED, RATE_LIMITED, NOT_FOUND.
	Refused map[string]int `json:"refused"`
	// Errors counts failed steps by kind (viewer token, emulator join,
	// heartbeat, leave); a viewer whose token or join failed is not seated.
	Errors map[string]int `json:"errors"`

	Stages StageCounts `json:"stages"`
	// ReplicationLag runs from a replica stage first appearing in IVS to a
	// replication into it first being ACTIVE, to within one sample
	// interval.
	ReplicationLag Distribution     `json:"replicationLag"`
	Flap           FlapCheck        `json:"flap"`
	Drain          *DrainCheck      `json:"drain,omitempty"`
	IVSCalls       []OperationCalls `json:"ivsCalls"`
	// Renewals are million's renewal rounds (absent in other scenarios).
	Renewals *RenewalCounts `json:"renewals,omitempty"`
	// Ends are million's broadcasts ended at the end of the run.
	Ends []BroadcastEnd `json:"ends,omitempty"`
	// Resources are the peak memory of the processes named with
	// --process and what the Redis named with --redis did.
	Resources *Resources `json:"resources,omitempty"`
	// Series is the audience and the stages over time, one point per sample.
	Series        []Sample `json:"series"`
	SamplesFailed int      `json:"samplesFailed"`

	Targets []Target `json:"targets"`
	Pass    bool     `json:"pass"`
}

// Settings are the run's settings once defaults and what the server
// reported are filled in.
type Settings struct {
	Viewers          int     `json:"viewers"`
	Rate             float64 `json:"rate"`
	HoldSeconds      float64 `json:"holdSeconds"`
	HeartbeatSeconds float64 `json:"heartbeatSeconds"`
	Broadcasts       int     `json:"broadcasts"`
	Capacity         int     `json:"capacity"`
	Threshold        int     `json:"threshold"`
	Waves            int     `json:"waves"`
	// Concurrency and RenewalRounds are million's workers and rounds.
	Concurrency          int     `json:"concurrency,omitempty"`
	RenewalRounds        int     `json:"renewalRounds,omitempty"`
	StabilizationSeconds float64 `json:"stabilizationSeconds"`
	DrainWaitSeconds     float64 `json:"drainWaitSeconds"`
	TimeoutSeconds       float64 `json:"timeoutSeconds"`
	SampleIntervalMs     float64 `json:"sampleIntervalMs"`
	// MaxStages, StageQuota and RateLimit are the server's settings as the
	// operator gave them (absent: unknown).
	MaxStages  int    `json:"maxStages,omitempty"`
	StageQuota int    `json:"stageQuota,omitempty"`
	RateLimit  string `json:"rateLimit,omitempty"`
}

// ViewerCounts count the simulated viewers.
type ViewerCounts struct {
	Planned   int `json:"planned"`
	Requested int `json:"requested"`
	Seated    int `json:"seated"`
	Left      int `json:"left"`
	// StoppedWaiting were still waiting for a seat when the run stopped.
	StoppedWaiting int `json:"stoppedWaiting"`
	// JoinsPerSecond is the viewers seated divided by the time from the
	// first token request to the last seat.
	JoinsPerSecond float64 `json:"joinsPerSecond"`
}

// Distribution summarizes durations, in milliseconds.
type Distribution struct {
	Count int     `json:"count"`
	P50Ms float64 `json:"p50Ms"`
	P95Ms float64 `json:"p95Ms"`
	P99Ms float64 `json:"p99Ms"`
	MaxMs float64 `json:"maxMs"`
}

// StageCounts are about the run's stages, as IVS (the emulator) saw them.
type StageCounts struct {
	// Capacity is the server's STAGE_CAPACITY.
	Capacity int `json:"capacity"`
	// Peak is the most stages at once (origins included); PeakReplicas the
	// most replica stages.
	Peak         int `json:"peak"`
	PeakReplicas int `json:"peakReplicas"`
	// MaxSeats is the most subscribers one stage ever held at once.
	MaxSeats int `json:"maxSeats"`
	// OverCapacity is how many stages ever held more than Capacity.
	OverCapacity int          `json:"overCapacity"`
	PerStage     []StageSeats `json:"perStage"`
}

// StageSeats is one stage of the run.
type StageSeats struct {
	Arn            string `json:"arn"`
	Broadcast      string `json:"broadcast"`
	Role           string `json:"role"`
	MaxSubscribers int    `json:"maxSubscribers"`
	// CreatedSeconds and DeletedSeconds are when samples first saw it and
	// first missed it (absent: still there).
	CreatedSeconds float64  `json:"createdSeconds"`
	DeletedSeconds *float64 `json:"deletedSeconds,omitempty"`
}

// Sample is one point of the series.
type Sample struct {
	Seconds float64 `json:"t"`
	// PlannedArrivals are the viewers the plan has arrived by now.
	PlannedArrivals int `json:"plannedArrivals"`
	// Seated are viewers on a stage now; Waiting, viewers asking for a seat.
	Seated  int `json:"seated"`
	Waiting int `json:"waiting"`
	// Refused are the viewer-token answers retried so far.
	Refused int `json:"refused"`
	// Stages and Replicas are the run's stages in IVS; Subscribers, their
	// subscribers as IVS counts them.
	Stages      int `json:"stages"`
	Replicas    int `json:"replicas"`
	Subscribers int `json:"subscribers"`
}

// OperationCalls are the calls one IVS operation took during the run.
type OperationCalls struct {
	Operation string `json:"operation"`
	Calls     int    `json:"calls"`
	Throttled int    `json:"throttled"`
	Errors    int    `json:"errors"`
	// PeakPerSecond is the busiest stretch of a second or more.
	PeakPerSecond float64 `json:"peakPerSecond"`
	// QuotaPerSecond is the emulator's TPS quota; 0: none.
	QuotaPerSecond float64 `json:"quotaPerSecond"`
}

// FlapCheck says whether the replica stages churned. A slot is the n-th
// replica stage of a broadcast: it is created when the broadcast's replica
// count rises to n and deleted when it falls below.
type FlapCheck struct {
	WindowSeconds   float64 `json:"windowSeconds"`
	ReplicasCreated int     `json:"replicasCreated"`
	ReplicasDeleted int     `json:"replicasDeleted"`
	// MostCreationsPerSlot is the most times one slot was created within
	// one window (target: at most 1).
	MostCreationsPerSlot int `json:"mostCreationsPerSlotPerWindow"`
	// ShortestRecreateSeconds is the shortest time between two creations of
	// one slot (absent: no slot was created twice).
	ShortestRecreateSeconds *float64 `json:"shortestRecreateSeconds,omitempty"`
}

// DrainCheck is what was left after drain's wait (in million: after the
// broadcasts were ended).
type DrainCheck struct {
	WaitSeconds float64 `json:"waitSeconds"`
	// ReplicasLeft are the replica stages still in IVS after the wait.
	ReplicasLeft []string `json:"replicasLeft"`
	// DrainedAfterSeconds is when the last replica stage went, after the
	// last viewer left (absent: some are left).
	DrainedAfterSeconds *float64 `json:"drainedAfterSeconds,omitempty"`
}

// Target is one pass/fail check.
type Target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Pass bool   `json:"pass"`
	// Miss says by how much a target was missed.
	Miss string `json:"miss,omitempty"`
}

// seatTarget is the time-to-seat target at the 99th percentile.
const seatTarget = 2 * time.Second

// percentile returns the p-th percentile (0 < p ≤ 1) of sorted by nearest
// rank: the smallest value with at least p of all values at or below it.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

func distribution(ds []time.Duration) Distribution {
	s := slices.Sorted(slices.Values(ds))
	if len(s) == 0 {
		return Distribution{}
	}
	return Distribution{
		Count: len(s),
		P50Ms: ms(percentile(s, 0.50)),
		P95Ms: ms(percentile(s, 0.95)),
		P99Ms: ms(percentile(s, 0.99)),
		MaxMs: ms(s[len(s)-1]),
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func seconds(d time.Duration) float64 { return round3(d.Seconds()) }

// round3 rounds to three decimals, as the report gives its figures.
func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

// flapCheck counts creations per slot per window from the stages' lives.
func flapCheck(tracks []stageTrack, window time.Duration) FlapCheck {
	f := FlapCheck{WindowSeconds: seconds(window)}
	type change struct {
		at    time.Duration
		delta int
	}
	byBroadcast := map[string][]change{}
	for _, t := range tracks {
		if t.role != roleReplica {
			continue
		}
		f.ReplicasCreated++
		byBroadcast[t.broadcast] = append(byBroadcast[t.broadcast], change{t.created, +1})
		if t.gone {
			f.ReplicasDeleted++
			byBroadcast[t.broadcast] = append(byBroadcast[t.broadcast], change{t.deleted, -1})
		}
	}
	var shortest *time.Duration
	for _, changes := range byBroadcast {
		// A deletion and a creation seen in one sample: the slot was freed,
		// then taken again.
		slices.SortStableFunc(changes, func(a, b change) int { return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.delta, b.delta)) })
		created := map[int][]time.Duration{}
		n := 0
		for _, c := range changes {
			if c.delta < 0 {
				n--
				continue
			}
			n++
			// To the millisecond, as reported: a re-creation reported one
			// window apart is not inside the window.
			created[n] = append(created[n], c.at.Round(time.Millisecond))
		}
		for _, times := range created {
			i := 0
			for j := range times {
				for i < j && times[j]-times[i] >= window {
					i++
				}
				f.MostCreationsPerSlot = max(f.MostCreationsPerSlot, j-i+1)
				if j > 0 {
					if d := times[j] - times[j-1]; shortest == nil || d < *shortest {
						shortest = &d
					}
				}
			}
		}
	}
	if shortest != nil {
		s := seconds(*shortest)
		f.ShortestRecreateSeconds = &s
	}
	return f
}

// report gathers what the run measured.
func (r *run) report(viewersStart, allLeft time.Time, drained *time.Duration) *Report {
	cfg := r.cfg
	rep := &Report{
		Scenario:   cfg.Scenario,
		API:        strings.Join(r.c.apis, ","),
		Emulator:   r.c.emu,
		Broadcasts: r.broadcasts,
		Settings: Settings{
			Viewers: cfg.Viewers, Rate: cfg.Rate, HoldSeconds: seconds(cfg.Hold), HeartbeatSeconds: seconds(cfg.Heartbeat),
			Broadcasts: cfg.Broadcasts, Capacity: cfg.Capacity, Threshold: cfg.Threshold, Waves: cfg.Waves,
			StabilizationSeconds: seconds(cfg.Stabilization), DrainWaitSeconds: seconds(cfg.DrainWait),
			TimeoutSeconds: seconds(cfg.Timeout), SampleIntervalMs: ms(cfg.SampleEvery),
			MaxStages: cfg.MaxStages, StageQuota: cfg.StageQuota,
		},
		Warnings:            append([]string{}, r.warnings...),
		StartedAt:           r.smp.start.UTC().Round(time.Millisecond),
		DurationSeconds:     seconds(time.Since(r.smp.start)),
		ViewersStartSeconds: seconds(viewersStart.Sub(r.smp.start)),
	}

	rec := r.rec
	rec.mu.Lock()
	rep.Viewers = ViewerCounts{
		Planned: rec.planned, Requested: rec.asked, Seated: len(rec.timeToSeat), Left: rec.leftTotal, StoppedWaiting: rec.stopped,
	}
	if span := rec.lastSeat.Sub(rec.firstAsk); len(rec.timeToSeat) > 0 && span > 0 {
		rep.Viewers.JoinsPerSecond = math.Round(float64(len(rec.timeToSeat))/span.Seconds()*10) / 10
	}
	rep.TokenLatency = distribution(rec.tokenLatency)
	rep.TimeToSeat = distribution(rec.timeToSeat)
	rep.Refused = maps.Clone(rec.refused)
	rep.Errors = maps.Clone(rec.errors)
	rec.mu.Unlock()

	s := r.smp
	s.mu.Lock()
	samples := slices.Clone(s.samples)
	quotas := s.quotas
	rep.SamplesFailed = s.failures
	s.mu.Unlock()
	if cfg.RateLimit != nil {
		rep.Settings.RateLimit = cfg.RateLimit.String()
	}
	if cfg.Scenario == Million {
		rep.Settings.Concurrency, rep.Settings.RenewalRounds = cfg.Concurrency, cfg.Renewals
	}
	rep.Series = make([]Sample, len(samples))
	for i, smp := range samples {
		rep.Series[i] = smp.point
		// The plan is in order of arrival.
		due := smp.at - viewersStart.Sub(r.smp.start)
		rep.Series[i].PlannedArrivals = sort.Search(len(r.arrivals), func(j int) bool { return r.arrivals[j].At > due })
		rep.Stages.Peak = max(rep.Stages.Peak, smp.point.Stages)
		rep.Stages.PeakReplicas = max(rep.Stages.PeakReplicas, smp.point.Replicas)
	}
	rep.IVSCalls = ivsCalls(samples, quotas)

	tracks := s.tracks()
	rep.Stages.Capacity = cfg.Capacity
	rep.Stages.PerStage = []StageSeats{}
	var lags []time.Duration
	left := []string{}
	for _, t := range tracks {
		st := StageSeats{Arn: t.arn, Broadcast: t.broadcast, Role: t.role, MaxSubscribers: t.maxSubscribers, CreatedSeconds: seconds(t.created)}
		if t.gone {
			d := seconds(t.deleted)
			st.DeletedSeconds = &d
		} else if t.role == roleReplica {
			left = append(left, t.arn)
		}
		rep.Stages.PerStage = append(rep.Stages.PerStage, st)
		rep.Stages.MaxSeats = max(rep.Stages.MaxSeats, t.maxSubscribers)
		if t.maxSubscribers > cfg.Capacity {
			rep.Stages.OverCapacity++
		}
		if t.role == roleReplica && t.isActive {
			lags = append(lags, t.active-t.created)
		}
	}
	rep.ReplicationLag = distribution(lags)
	rep.Flap = flapCheck(tracks, cfg.Stabilization)
	if (cfg.Scenario == Drain || cfg.Scenario == Million) && !allLeft.IsZero() {
		rep.Drain = &DrainCheck{WaitSeconds: seconds(cfg.DrainWait), ReplicasLeft: left}
		if drained != nil && len(left) == 0 {
			d := seconds(*drained)
			rep.Drain.DrainedAfterSeconds = &d
		}
	}
	return rep
}

// evaluate checks the report against the targets.
func (rep *Report) evaluate() {
	v := rep.Viewers
	seated := Target{Name: "every viewer seated", Want: fmt.Sprintf("all %d", v.Planned), Got: fmt.Sprintf("%d of %d", v.Seated, v.Planned)}
	seated.Pass = v.Planned > 0 && v.Seated == v.Planned
	if !seated.Pass {
		seated.Miss = fmt.Sprintf("%d not seated", v.Planned-v.Seated)
	}

	st := rep.Stages
	capacity := Target{Name: "no stage over capacity", Want: fmt.Sprintf("at most %d on a stage", st.Capacity), Got: fmt.Sprintf("the fullest held %d", st.MaxSeats)}
	capacity.Pass = st.OverCapacity == 0
	if !capacity.Pass {
		capacity.Miss = fmt.Sprintf("%d stage(s) over; the fullest held %d, %d over", st.OverCapacity, st.MaxSeats, st.MaxSeats-st.Capacity)
	}

	p99 := time.Duration(rep.TimeToSeat.P99Ms * float64(time.Millisecond))
	seat := Target{Name: "p99 time to seat", Want: "under " + fmtDuration(seatTarget), Got: fmtDuration(p99)}
	switch {
	case rep.TimeToSeat.Count == 0:
		seat.Got, seat.Miss = "no viewer seated", "no viewer seated"
	case p99 < seatTarget:
		seat.Pass = true
	default:
		seat.Miss = fmtDuration(p99-seatTarget) + " over"
	}

	f := rep.Flap
	window := time.Duration(f.WindowSeconds * float64(time.Second))
	flap := Target{
		Name: "no flapping",
		Want: "a stage slot created at most once per " + fmtDuration(window),
		Got:  fmt.Sprintf("most per slot and window %d (%d replicas created, %d deleted)", f.MostCreationsPerSlot, f.ReplicasCreated, f.ReplicasDeleted),
		Pass: f.MostCreationsPerSlot <= 1,
	}
	if !flap.Pass {
		flap.Miss = fmt.Sprintf("%d creations in one window, the closest two %.3f s apart", f.MostCreationsPerSlot, *f.ShortestRecreateSeconds)
	}
	rep.Targets = []Target{seated, capacity, seat, flap}

	if r := rep.Renewals; r != nil {
		renew := Target{Name: "every renewal answered", Want: fmt.Sprintf("all %d renewed", r.Requested),
			Got: fmt.Sprintf("%d of %d in %d round(s), %.0f/s", r.Renewed, r.Requested, r.Rounds, r.PerSecond)}
		renew.Pass = r.Renewed == r.Requested && r.Rounds > 0
		if !renew.Pass {
			renew.Miss = fmt.Sprintf("%d not renewed", r.Requested-r.Renewed)
		}
		rep.Targets = append(rep.Targets, renew)
	}
	if rep.Scenario == Drain || rep.Scenario == Million {
		event := "everyone left"
		drain := Target{Name: "drain leaves no replica stage", Want: "0 left"}
		if rep.Scenario == Million {
			event = "the broadcast ended"
			drain.Name = "ending the broadcast leaves no replica stage"
		}
		switch {
		case rep.Drain == nil:
			drain.Got, drain.Miss = "not reached", "the run stopped before everyone left"
		default:
			n := len(rep.Drain.ReplicasLeft)
			drain.Got = fmt.Sprintf("%d left after %s", n, fmtDuration(time.Duration(rep.Drain.WaitSeconds*float64(time.Second))))
			if rep.Drain.DrainedAfterSeconds != nil {
				drain.Got = fmt.Sprintf("0 left, the last gone %s after %s", fmtDuration(time.Duration(*rep.Drain.DrainedAfterSeconds*float64(time.Second))), event)
			}
			drain.Pass = n == 0
			if !drain.Pass {
				drain.Miss = fmt.Sprintf("%d replica stage(s) left", n)
			}
		}
		rep.Targets = append(rep.Targets, drain)
	}
	rep.Pass = true
	for _, t := range rep.Targets {
		rep.Pass = rep.Pass && t.Pass
	}
}

// fmtDuration prints milliseconds below a second, else seconds.
func fmtDuration(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", ms(d))
	case d < time.Second:
		return fmt.Sprintf("%.0f ms", ms(d))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}
