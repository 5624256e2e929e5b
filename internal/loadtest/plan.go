package loadtest

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Scenario is the shape of the audience over time.
type Scenario string

// The scenarios.
const (
	// Steady: viewers arrive at a constant rate and each stays Hold, so the
	// audience levels off at about Rate × Hold with constant churn.
	Steady Scenario = "steady"
	// Storm: a crowd arrives at a high rate (2,000 at 200/s by default), each
	// staying Hold after being seated.
	Storm Scenario = "storm"
	// Flap: the audience of each broadcast swings in waves between below
	// the scale-up threshold and above the stage capacity.
	Flap Scenario = "flap"
	// Drain: a storm, then everyone leaves at once; the run then waits past
	// the scale-down stabilization window and counts the stages left.
	Drain Scenario = "drain"
	// Million: a million viewers (by default) seated as fast as the
	// deployment takes them, their seats renewed in rounds, then the
	// broadcast ended; see million.go.
	Million Scenario = "million"
)

// Scenarios lists every scenario.
var Scenarios = []Scenario{Steady, Storm, Flap, Drain, Million}

// ParseScenario returns the scenario named s.
func ParseScenario(s string) (Scenario, error) {
	if slices.Contains(Scenarios, Scenario(s)) {
		return Scenario(s), nil
	}
	return "", fmt.Errorf("unknown scenario %q: use steady, storm, flap, drain or million", s)
}

// scenarioDefaults are what a scenario uses where Config leaves a value 0.
// Flap's audience comes from the stage capacity (see flapBounds).
var scenarioDefaults = map[Scenario]struct {
	viewers int
	rate    float64
	hold    time.Duration
}{
	Steady: {viewers: 600, rate: 20, hold: 10 * time.Second},
	Storm:  {viewers: 2000, rate: 200, hold: 30 * time.Second},
	Flap:   {rate: 10, hold: 5 * time.Second},
	Drain:  {viewers: 2000, rate: 200, hold: 10 * time.Second},
	// Million's rate is a ceiling: the deployment sets the pace.
	Million: {viewers: 1_000_000, rate: 10_000, hold: 10 * time.Second},
}

// arrival is one simulated viewer's plan.
type arrival struct {
	Broadcast int
	// At is when the viewer asks for its first token, from the start.
	At time.Duration
	// LeaveAt is when it leaves, from the start; 0 means Hold after it is
	// seated (or, in drain, with everyone else).
	LeaveAt time.Duration
}

// shape is what a plan is made from.
type shape struct {
	Scenario   Scenario
	Viewers    int // over all broadcasts
	Rate       float64
	Hold       time.Duration
	Broadcasts int
	Capacity   int
	Threshold  int
	Waves      int
}

// flapBounds returns the audience one broadcast swings between in flap:
// from low, below the threshold, to high, above it and (by default) above
// the capacity, so that a replica stage is both called for and used.
func flapBounds(viewersPerBroadcast, capacity, threshold int) (low, high int) {
	margin := max(1, capacity-threshold)
	low = max(0, threshold-margin)
	high = viewersPerBroadcast
	if high == 0 {
		high = capacity + margin
	}
	return low, high
}

// plan lays out every viewer's arrival and, where the scenario fixes it,
// departure. Viewers are spread round robin over the broadcasts.
func plan(s shape) []arrival {
	if s.Scenario == Flap {
		return flapPlan(s)
	}
	out := make([]arrival, s.Viewers)
	for i := range out {
		out[i] = arrival{Broadcast: i % s.Broadcasts, At: rateOffset(i, s.Rate)}
	}
	return out
}

// flapPlan: each broadcast grows to low, then swings low → high → low
// Waves times, pausing Hold at each end; the last in is the first out, so
// the viewers seated beyond the threshold are the ones who leave and the
// stage that took them empties. Joins and leaves both go at the broadcast's
// share of Rate. Whoever is left leaves at the end.
func flapPlan(s shape) []arrival {
	low, high := flapBounds(s.Viewers/s.Broadcasts, s.Capacity, s.Threshold)
	rate := s.Rate / float64(s.Broadcasts)
	var out []arrival
	for b := range s.Broadcasts {
		var (
			n     int // steps taken: joins and leaves go one per 1/rate
			pause time.Duration
			stack []int // indexes into out of the viewers present, last in on top
		)
		now := func() time.Duration { return rateOffset(n, rate) + pause }
		join := func() {
			out = append(out, arrival{Broadcast: b, At: now()})
			stack = append(stack, len(out)-1)
			n++
		}
		leave := func() {
			out[stack[len(stack)-1]].LeaveAt = now()
			stack = stack[:len(stack)-1]
			n++
		}
		for len(stack) < low {
			join()
		}
		for range s.Waves {
			for len(stack) < high {
				join()
			}
			pause += s.Hold
			for len(stack) > low {
				leave()
			}
			pause += s.Hold
		}
		end := now()
		for _, i := range stack {
			out[i].LeaveAt = end
		}
	}
	slices.SortStableFunc(out, func(a, b arrival) int { return cmp.Compare(a.At, b.At) })
	return out
}

// rateOffset is when the i-th of a series at rate per second happens.
func rateOffset(i int, rate float64) time.Duration {
	return time.Duration(float64(i) / rate * float64(time.Second))
}

// planLength is when the last planned event happens: the last arrival, the
// last planned departure.
func planLength(p []arrival) time.Duration {
	var end time.Duration
	for _, a := range p {
		end = max(end, a.At, a.LeaveAt)
	}
	return end
}
