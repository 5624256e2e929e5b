package loadtest

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/stagefleet/stagefleet/internal/emulator"
)

// RateLimit is the server's rate limit: RATE_LIMIT_MAX_REQUESTS per
// RATE_LIMIT_WINDOW_MS from one client address.
type RateLimit struct {
	// Requests per Window; 0: no limit.
	Requests int
	Window   time.Duration
}

// ParseRateLimit reads a rate limit as --rate-limit takes it: "N/WINDOW"
// (serve's default is 1000/1m), or "0" or "off" for none.
func ParseRateLimit(s string) (RateLimit, error) {
	if s == "0" || s == "off" {
		return RateLimit{}, nil
	}
	n, w, ok := strings.Cut(s, "/")
	requests, err := strconv.Atoi(n)
	if !ok || err != nil || requests < 0 {
		return RateLimit{}, fmt.Errorf("%q: want requests/window, e.g. 1000/1m (serve's default), or off", s)
	}
	window, err := time.ParseDuration(w)
	if err != nil || window <= 0 {
		return RateLimit{}, fmt.Errorf("%q: the window must be a positive duration, e.g. 1m", s)
	}
	return RateLimit{Requests: requests, Window: window}, nil
}

func (l RateLimit) String() string {
	if l.Requests == 0 {
		return "off"
	}
	return fmt.Sprintf("%d/%v", l.Requests, l.Window)
}

// limits are what the target allows, as far as the run knows: from the
// operator's flags (the API reports neither MAX_STAGES, STAGE_QUOTA nor
// its rate limit), the API and the emulator. Zero is unknown.
type limits struct {
	capacity   int
	maxStages  int
	stageQuota int
	rateLimit  *RateLimit
	// rateLimited: the API answered 429 RATE_LIMITED before the first
	// viewer, so some rate limit is on even when its value is unknown.
	rateLimited bool
	// The emulator's stages per account, and what it held when checked:
	// all stages, stagefleet's (by their tag: the deployment's, which
	// STAGE_QUOTA counts) and this run's (its origins).
	emuMaxStages, emuStages, fleetStages, runStages int
}

// planned is what a plan asks of the target, assuming every viewer is
// seated at its first request: fewer stages and requests than a real run
// needs, so that a warning is about what cannot work at all.
type planned struct {
	// peaks is the most viewers present at once, per broadcast.
	peaks []int
	// requests are the API requests the viewers send, from the start of
	// the viewers, sorted: a viewer token, heartbeats, a leave each.
	requests []time.Duration
}

func planDemand(p []arrival, cfg Config) planned {
	hold, heartbeat, drain := cfg.Hold, cfg.Heartbeat, cfg.Scenario == Drain
	// Drain's audience leaves together, Hold after the last is seated.
	var drainAt time.Duration
	if drain {
		for _, a := range p {
			drainAt = max(drainAt, a.At)
		}
		drainAt += hold
	}
	type change struct {
		at    time.Duration
		delta int
	}
	changes := make([][]change, cfg.Broadcasts)
	var out planned
	for _, a := range p {
		leave := a.LeaveAt
		switch {
		case drain:
			leave = drainAt
		case leave == 0:
			leave = a.At + hold
		}
		changes[a.Broadcast] = append(changes[a.Broadcast], change{a.At, +1}, change{leave, -1})
		out.requests = append(out.requests, a.At)
		for hb := a.At + heartbeat; heartbeat > 0 && hb < leave; hb += heartbeat {
			out.requests = append(out.requests, hb)
		}
		out.requests = append(out.requests, leave)
	}
	slices.Sort(out.requests)
	out.peaks = make([]int, cfg.Broadcasts)
	for b, cs := range changes {
		// A leave and a join at one moment: the seat is free first.
		slices.SortFunc(cs, func(x, y change) int { return cmp.Or(cmp.Compare(x.at, y.at), cmp.Compare(x.delta, y.delta)) })
		n := 0
		for _, c := range cs {
			n += c.delta
			out.peaks[b] = max(out.peaks[b], n)
		}
	}
	return out
}

// refusedBy is how many of requests (sorted offsets) a token bucket of l
// refuses: the server's limiter, played on the plan.
func refusedBy(l RateLimit, requests []time.Duration) int {
	lim := rate.NewLimiter(rate.Limit(float64(l.Requests)/l.Window.Seconds()), l.Requests)
	var start time.Time
	refused := 0
	for _, at := range requests {
		if !lim.AllowN(start.Add(at), 1) {
			refused++
		}
	}
	return refused
}

// busiest is the most of requests (sorted offsets) within any window.
func busiest(requests []time.Duration, window time.Duration) int {
	most, i := 0, 0
	for j := range requests {
		for requests[j]-requests[i] >= window {
			i++
		}
		most = max(most, j-i+1)
	}
	return most
}

// checkLimits returns a warning, naming the setting to change, for each
// known limit of the target that the plan cannot run within.
func checkLimits(d planned, l limits) []string {
	var out []string
	switch rl := l.rateLimit; {
	case rl != nil && rl.Requests > 0:
		if n := refusedBy(*rl, d.requests); n > 0 {
			// A bucket as large as the busiest window refuses nothing.
			most := busiest(d.requests, rl.Window)
			out = append(out, fmt.Sprintf("the rate limit, RATE_LIMIT_MAX_REQUESTS=%d per RATE_LIMIT_WINDOW_MS=%d, would refuse %d of the at least %d requests this scenario sends from one address (%d in its busiest window): start serve with RATE_LIMIT_MAX_REQUESTS=0 (or at least %d)",
				rl.Requests, rl.Window.Milliseconds(), n, len(d.requests), most, most))
		}
	case l.rateLimited:
		// A 429 shows a limit is on, whether or not the operator said.
		out = append(out, fmt.Sprintf("the API answered 429 RATE_LIMITED before the first viewer, and this scenario sends at least %d requests from one address (%d in its busiest minute): start serve with RATE_LIMIT_MAX_REQUESTS=0 (pass --rate-limit to have it checked)",
			len(d.requests), busiest(d.requests, time.Minute)))
	}
	if l.capacity <= 0 {
		return out
	}
	need, most := 0, 0 // stages for every broadcast's peak; the largest peak
	for _, peak := range d.peaks {
		need += stagesFor(peak, l.capacity)
		most = max(most, peak)
	}
	if l.maxStages > 0 && l.maxStages*l.capacity < most {
		out = append(out, fmt.Sprintf("a broadcast's audience peaks at %d viewers, and MAX_STAGES=%d stages of %d seat %d: start serve with MAX_STAGES=%d or more",
			most, l.maxStages, l.capacity, l.maxStages*l.capacity, stagesFor(most, l.capacity)))
	}
	more := max(0, need-l.runStages) // the run's origins are there already
	if l.stageQuota > 0 && l.fleetStages+more > l.stageQuota {
		out = append(out, fmt.Sprintf("the run needs %d more stages and the deployment holds %d, over STAGE_QUOTA=%d: start serve with STAGE_QUOTA=%d or more",
			more, l.fleetStages, l.stageQuota, l.fleetStages+more))
	}
	if l.emuMaxStages > 0 && l.emuStages+more > l.emuMaxStages {
		out = append(out, fmt.Sprintf("the run needs %d more stages and the IVS emulator holds %d of its %d per account: restart serve (its emulator starts empty) or raise --emulator-max-stages (stagefleet emulator: --max-stages) to %d",
			more, l.emuStages, l.emuMaxStages, l.emuStages+more))
	}
	return out
}

// stagesFor is how many stages of capacity seat n viewers (at least the
// origin).
func stagesFor(n, capacity int) int {
	return max(1, (n+capacity-1)/capacity)
}

// targetLimits gathers what is known of the target's limits once its
// hosts are live. The emulator's state is asked for afresh, so that the
// run's origins are counted; if it does not answer, the emulator's limits
// stay unknown (the run finds out soon enough).
func (r *run) targetLimits(ctx context.Context) limits {
	l := limits{
		capacity: r.cfg.Capacity, maxStages: r.cfg.MaxStages, stageQuota: r.cfg.StageQuota, rateLimit: r.cfg.RateLimit,
		rateLimited: r.c.rateLimited.Load(),
	}
	var st emulator.State
	res, err := r.c.callEmulator(ctx, http.MethodGet, "/_emulator/state?participants=false", nil, &st)
	if err != nil || res.Status != http.StatusOK {
		r.log.Warn("the emulator's limits are unknown: its state did not answer", "answer", res, "error", err)
		return l
	}
	ours := map[string]bool{}
	for _, b := range r.broadcasts {
		ours[b] = true
	}
	l.emuMaxStages, l.emuStages = st.Limits.MaxStages, len(st.Stages)
	for _, s := range st.Stages {
		b, ok := s.Tags[tagBroadcast]
		if ok {
			l.fleetStages++
		}
		if ours[b] {
			l.runStages++
		}
	}
	return l
}
