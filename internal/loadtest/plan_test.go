package loadtest

import (
	"cmp"
	"slices"
	"testing"
	"time"
)

// audience replays a plan with every viewer seated the moment it asks and
// leaving when planned: the audience of broadcast b after each change, in
// time order.
func audience(p []arrival, b int) []int {
	type change struct {
		at    time.Duration
		delta int
	}
	var changes []change
	for _, a := range p {
		if a.Broadcast != b {
			continue
		}
		changes = append(changes, change{a.At, +1})
		if a.LeaveAt > 0 {
			changes = append(changes, change{a.LeaveAt, -1})
		}
	}
	// A leave and a join at one instant: the leave first, as a wave turns.
	slices.SortStableFunc(changes, func(x, y change) int { return cmp.Or(cmp.Compare(x.at, y.at), cmp.Compare(x.delta, y.delta)) })
	var out []int
	n := 0
	for _, c := range changes {
		n += c.delta
		out = append(out, n)
	}
	return out
}

// crossings counts how often the audience rises above level.
func crossings(aud []int, level int) int {
	n, prev := 0, 0
	for _, a := range aud {
		if prev <= level && a > level {
			n++
		}
		prev = a
	}
	return n
}

func TestConstantRatePlans(t *testing.T) {
	tests := []struct {
		name string
		s    shape
	}{
		{"steady", shape{Scenario: Steady, Viewers: 600, Rate: 20, Broadcasts: 1}},
		{"storm", shape{Scenario: Storm, Viewers: 2000, Rate: 200, Broadcasts: 1}},
		{"storm over three broadcasts", shape{Scenario: Storm, Viewers: 10, Rate: 5, Broadcasts: 3}},
		{"drain", shape{Scenario: Drain, Viewers: 200, Rate: 100, Broadcasts: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := plan(tt.s)
			if len(p) != tt.s.Viewers {
				t.Fatalf("%d viewers planned, want %d", len(p), tt.s.Viewers)
			}
			step := time.Duration(float64(time.Second) / tt.s.Rate)
			perBroadcast := map[int]int{}
			for i, a := range p {
				if want := time.Duration(i) * step; a.At < want-time.Microsecond || a.At > want+time.Microsecond {
					t.Errorf("viewer %d arrives at %v, want %v (rate %v/s)", i, a.At, want, tt.s.Rate)
				}
				if a.LeaveAt != 0 {
					t.Errorf("viewer %d has a planned departure %v; it should stay Hold after being seated", i, a.LeaveAt)
				}
				if a.Broadcast != i%tt.s.Broadcasts {
					t.Errorf("viewer %d on broadcast %d, want %d (round robin)", i, a.Broadcast, i%tt.s.Broadcasts)
				}
				perBroadcast[a.Broadcast]++
			}
			if got := planLength(p); got != p[len(p)-1].At {
				t.Errorf("planLength %v, want the last arrival %v", got, p[len(p)-1].At)
			}
			for b, n := range perBroadcast {
				if n < tt.s.Viewers/tt.s.Broadcasts {
					t.Errorf("broadcast %d gets %d viewers; want an even share of %d", b, n, tt.s.Viewers)
				}
			}
		})
	}
}

func TestFlapPlan(t *testing.T) {
	tests := []struct {
		name      string
		s         shape
		low, high int
	}{
		{"serve's defaults", shape{Scenario: Flap, Rate: 10, Hold: 5 * time.Second, Broadcasts: 1, Capacity: 50, Threshold: 45, Waves: 4}, 40, 55},
		{"small stages, two broadcasts", shape{Scenario: Flap, Rate: 20, Hold: time.Second, Broadcasts: 2, Capacity: 10, Threshold: 8, Waves: 3}, 6, 12},
		{"a given peak", shape{Scenario: Flap, Viewers: 120, Rate: 10, Hold: time.Second, Broadcasts: 1, Capacity: 50, Threshold: 45, Waves: 2}, 40, 120},
		{"threshold at the capacity", shape{Scenario: Flap, Rate: 10, Hold: time.Second, Broadcasts: 1, Capacity: 5, Threshold: 5, Waves: 2}, 4, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := plan(tt.s)
			if want := tt.s.Broadcasts * (tt.low + tt.s.Waves*(tt.high-tt.low)); len(p) != want {
				t.Fatalf("%d viewers planned, want %d: %d to start, %d per wave", len(p), want, tt.low, tt.high-tt.low)
			}
			if !slices.IsSortedFunc(p, func(a, b arrival) int { return cmp.Compare(a.At, b.At) }) {
				t.Error("arrivals are not in time order")
			}
			for b := range tt.s.Broadcasts {
				aud := audience(p, b)
				if got := slices.Max(aud); got != tt.high {
					t.Errorf("broadcast %d peaks at %d, want %d", b, got, tt.high)
				}
				if got := aud[len(aud)-1]; got != 0 {
					t.Errorf("broadcast %d ends with %d viewers, want everyone gone", b, got)
				}
				// Each wave must cross the threshold (scale-up) and, when the
				// peak is above it, the capacity (the replica takes viewers).
				if got := crossings(aud, tt.s.Threshold); got != tt.s.Waves {
					t.Errorf("broadcast %d rises above the threshold %d %d times, want %d", b, tt.s.Threshold, got, tt.s.Waves)
				}
				if tt.high > tt.s.Capacity {
					if got := crossings(aud, tt.s.Capacity); got != tt.s.Waves {
						t.Errorf("broadcast %d rises above the capacity %d %d times, want %d", b, tt.s.Capacity, got, tt.s.Waves)
					}
				}
				// Between waves the audience falls back to low, no further.
				between := aud[tt.low : len(aud)-tt.low]
				if got := slices.Min(between); got != tt.low {
					t.Errorf("broadcast %d falls to %d between waves, want %d", b, got, tt.low)
				}
			}
			for i, a := range p {
				if a.LeaveAt <= a.At {
					t.Errorf("viewer %d leaves at %v, not after arriving at %v", i, a.LeaveAt, a.At)
				}
			}
		})
	}
}

// TestFlapLastInFirstOut: the viewers who leave as a wave falls are the
// ones who came last, those seated beyond the threshold.
func TestFlapLastInFirstOut(t *testing.T) {
	p := plan(shape{Scenario: Flap, Rate: 10, Hold: time.Second, Broadcasts: 1, Capacity: 10, Threshold: 8, Waves: 2})
	for i, a := range p {
		for j, b := range p[i+1:] {
			// b came after a: it must not stay longer while a leaves first.
			if b.At > a.At && b.LeaveAt > a.LeaveAt && b.At < a.LeaveAt {
				t.Fatalf("viewer %d (in %v, out %v) leaves before viewer %d, who came later (in %v, out %v)", i, a.At, a.LeaveAt, i+1+j, b.At, b.LeaveAt)
			}
		}
	}
}

func TestParseScenario(t *testing.T) {
	// The names the command line and the docs use.
	for name, want := range map[string]Scenario{"steady": Steady, "storm": Storm, "flap": Flap, "drain": Drain} {
		if got, err := ParseScenario(name); err != nil || got != want {
			t.Errorf("ParseScenario(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	for _, name := range []string{"hurricane", "", "Storm "} {
		if _, err := ParseScenario(name); err == nil {
			t.Errorf("ParseScenario(%q) = nil error", name)
		}
	}
}

func TestConfigDefaultsAndLimits(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
		check   func(Config) bool
	}{
		{"storm defaults", Config{Scenario: Storm}, false, func(c Config) bool {
			return c.Viewers == 2000 && c.Rate == 200 && c.Hold == 30*time.Second && c.Broadcasts == 1 && c.DrainWait == 70*time.Second
		}},
		{"drain wait follows the window", Config{Scenario: Drain, Stabilization: 5 * time.Second}, false, func(c Config) bool { return c.DrainWait == 15*time.Second }},
		{"flap leaves viewers to the capacity", Config{Scenario: Flap}, false, func(c Config) bool { return c.Viewers == 0 && c.Rate == 10 }},
		{"no scenario", Config{}, true, nil},
		{"negative rate", Config{Scenario: Steady, Rate: -1}, true, nil},
		{"negative hold", Config{Scenario: Steady, Hold: -time.Second}, true, nil},
		{"too many broadcasts", Config{Scenario: Storm, Broadcasts: 51}, true, nil},
		{"fewer viewers than broadcasts", Config{Scenario: Storm, Viewers: 2, Broadcasts: 3}, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.withDefaults()
			if (err != nil) != tt.wantErr {
				t.Fatalf("withDefaults() error %v, want error %v", err, tt.wantErr)
			}
			if tt.check != nil && !tt.check(got) {
				t.Errorf("withDefaults() = %+v", got)
			}
		})
	}
}
