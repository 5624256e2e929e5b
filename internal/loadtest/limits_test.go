package loadtest

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseRateLimit(t *testing.T) {
	tests := []struct {
		in      string
		want    RateLimit
		wantErr bool
	}{
		{"1000/1m", RateLimit{Requests: 1000, Window: time.Minute}, false},
		{"50/500ms", RateLimit{Requests: 50, Window: 500 * time.Millisecond}, false},
		{"off", RateLimit{}, false},
		{"0", RateLimit{}, false},
		{"1000", RateLimit{}, true},
		{"-1/1m", RateLimit{}, true},
		{"ten/1m", RateLimit{}, true},
		{"10/0s", RateLimit{}, true},
		{"10/soon", RateLimit{}, true},
	}
	for _, tt := range tests {
		got, err := ParseRateLimit(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseRateLimit(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if s := (RateLimit{Requests: 1000, Window: time.Minute}).String(); s != "1000/1m0s" {
		t.Errorf("String() = %q", s)
	}
}

func TestPlanDemand(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		peaks    []int
		requests int
	}{
		// Arrivals over 10 s, each staying 30 s: all there at once; a
		// token, one heartbeat (the one due at 30 s is the leave's time)
		// and a leave each.
		{"storm", Config{Scenario: Storm, Viewers: 100, Rate: 10, Hold: 30 * time.Second, Heartbeat: 15 * time.Second, Broadcasts: 1},
			[]int{100}, 300},
		// Rate × hold: a leave frees its seat for the arrival at that moment.
		{"steady", Config{Scenario: Steady, Viewers: 100, Rate: 4, Hold: 5 * time.Second, Heartbeat: 15 * time.Second, Broadcasts: 1},
			[]int{20}, 200},
		// Everyone stays until the last arrival (0.9 s) plus hold: two
		// heartbeats each.
		{"drain over two broadcasts", Config{Scenario: Drain, Viewers: 10, Rate: 10, Hold: 9 * time.Second, Heartbeat: 4 * time.Second, Broadcasts: 2},
			[]int{5, 5}, 10 + 20 + 10},
		{"flap peaks above the capacity", Config{Scenario: Flap, Rate: 20, Hold: time.Second, Heartbeat: time.Minute, Broadcasts: 1, Capacity: 10, Threshold: 8, Waves: 2},
			[]int{12}, 2 * (6 + 2*6)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg
			p := plan(shape{Scenario: c.Scenario, Viewers: c.Viewers, Rate: c.Rate, Hold: c.Hold, Broadcasts: c.Broadcasts,
				Capacity: c.Capacity, Threshold: c.Threshold, Waves: c.Waves})
			d := planDemand(p, c)
			if !reflect.DeepEqual(d.peaks, tt.peaks) {
				t.Errorf("peaks %v, want %v", d.peaks, tt.peaks)
			}
			if len(d.requests) != tt.requests {
				t.Errorf("%d requests, want %d", len(d.requests), tt.requests)
			}
			for i := 1; i < len(d.requests); i++ {
				if d.requests[i] < d.requests[i-1] {
					t.Fatalf("requests out of order at %d: %v", i, d.requests[i-1:i+1])
				}
			}
		})
	}
}

func TestRefusedByAndBusiest(t *testing.T) {
	s := time.Second
	burst := []time.Duration{0, 0, 0, 0}
	spread := []time.Duration{0, 0, 0, s}
	limit := RateLimit{Requests: 3, Window: 3 * s} // a burst of 3, one more a second
	if n := refusedBy(limit, burst); n != 1 {
		t.Errorf("refusedBy(4 at once) = %d, want 1", n)
	}
	if n := refusedBy(limit, spread); n != 0 {
		t.Errorf("refusedBy(3 at once, 1 a second later) = %d, want 0", n)
	}
	if n := busiest(spread, s); n != 3 {
		t.Errorf("busiest(1s) = %d, want 3 (the one at 1 s is a window later)", n)
	}
	if n := busiest(spread, 2*s); n != 4 {
		t.Errorf("busiest(2s) = %d, want 4", n)
	}
}

func TestCheckLimits(t *testing.T) {
	// 2000 viewers on one broadcast, needing 40 stages of 50; 3000
	// requests, 2000 of them at once and 1000 half a minute later.
	storm := planned{peaks: []int{2000}}
	for range 2000 {
		storm.requests = append(storm.requests, 0)
	}
	for range 1000 {
		storm.requests = append(storm.requests, 30*time.Second)
	}
	rl := func(n int) *RateLimit { return &RateLimit{Requests: n, Window: time.Minute} }
	tests := []struct {
		name   string
		demand planned
		limits limits
		n      int      // warnings
		want   []string // in the warnings, in order
	}{
		{"nothing known", storm, limits{}, 0, nil},
		{"capacity alone", storm, limits{capacity: 50}, 0, nil},
		{"rate limit off", storm, limits{rateLimit: rl(0)}, 0, nil},
		{"rate limit ample", storm, limits{rateLimit: rl(2000)}, 0, nil},
		// A bucket of 1000 refuses 1000 of the first 2000, and takes 500
		// of the next 1000 (refilled at 1000 a minute for 30 s).
		{"rate limit too low", storm, limits{rateLimit: rl(1000)}, 1,
			[]string{"RATE_LIMIT_MAX_REQUESTS=1000 per RATE_LIMIT_WINDOW_MS=60000, would refuse 1500 of the at least 3000 requests this scenario sends from one address (3000 in its busiest window): start serve with RATE_LIMIT_MAX_REQUESTS=0 (or at least 3000)"}},
		{"a 429 with the limit unknown", storm, limits{rateLimited: true}, 1, []string{"429 RATE_LIMITED", "RATE_LIMIT_MAX_REQUESTS=0"}},
		{"a 429 with the limit said off", storm, limits{rateLimited: true, rateLimit: rl(0)}, 1, []string{"429 RATE_LIMITED"}},
		{"a 429 with an ample limit named", storm, limits{rateLimited: true, rateLimit: rl(2000)}, 0, nil},
		{"MAX_STAGES too low", storm, limits{capacity: 50, maxStages: 20}, 1,
			[]string{"peaks at 2000 viewers, and MAX_STAGES=20 stages of 50 seat 1000: start serve with MAX_STAGES=40 or more"}},
		{"MAX_STAGES just enough", storm, limits{capacity: 50, maxStages: 40}, 0, nil},
		{"MAX_STAGES is per broadcast", planned{peaks: []int{1000, 1000}}, limits{capacity: 50, maxStages: 20}, 0, nil},
		{"STAGE_QUOTA with old stages held", storm, limits{capacity: 50, stageQuota: 100, fleetStages: 70, runStages: 1}, 1,
			[]string{"needs 39 more stages and the deployment holds 70, over STAGE_QUOTA=100: start serve with STAGE_QUOTA=109 or more"}},
		{"STAGE_QUOTA just enough", storm, limits{capacity: 50, stageQuota: 100, fleetStages: 61, runStages: 1}, 0, nil},
		{"STAGE_QUOTA counts every broadcast", planned{peaks: []int{1000, 1000}}, limits{capacity: 50, stageQuota: 30, fleetStages: 2, runStages: 2}, 1,
			[]string{"needs 38 more stages", "STAGE_QUOTA=40"}},
		{"emulator full", storm, limits{capacity: 50, emuMaxStages: 100, emuStages: 62, runStages: 1}, 1,
			[]string{"IVS emulator holds 62 of its 100", "--emulator-max-stages", "to 101"}},
		{"emulator just enough", storm, limits{capacity: 50, emuMaxStages: 100, emuStages: 61, runStages: 1}, 0, nil},
		{"everything at once", storm, limits{capacity: 50, rateLimit: rl(10), maxStages: 10, stageQuota: 20, emuMaxStages: 20, runStages: 1}, 4,
			[]string{"RATE_LIMIT_MAX_REQUESTS", "MAX_STAGES=10", "STAGE_QUOTA=20", "--emulator-max-stages"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkLimits(tt.demand, tt.limits)
			if len(got) != tt.n {
				t.Fatalf("warnings %q; want %d", got, tt.n)
			}
			rest := strings.Join(got, "\n")
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("warnings %q lack %q (or not in this order)", got, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}
