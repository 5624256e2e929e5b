package loadtest

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/emulator"
)

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"none", nil, 0.5, 0},
		{"one value is every percentile", []time.Duration{7}, 0.99, 7},
		{"p50 of 1..100", hundred, 0.50, 50 * time.Millisecond},
		{"p95 of 1..100", hundred, 0.95, 95 * time.Millisecond},
		{"p99 of 1..100", hundred, 0.99, 99 * time.Millisecond},
		{"p100 is the max", hundred, 1, 100 * time.Millisecond},
		// Nearest rank: the smallest value with at least half at or below.
		{"p50 of four", []time.Duration{1, 2, 3, 4}, 0.50, 2},
		{"p99 of four is the max", []time.Duration{1, 2, 3, 4}, 0.99, 4},
		{"tiny p is the min", []time.Duration{1, 2, 3, 4}, 0.01, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestDistribution(t *testing.T) {
	// Unsorted on purpose: distribution sorts.
	d := distribution([]time.Duration{3 * time.Second, time.Millisecond, 1500 * time.Microsecond, 2 * time.Millisecond})
	want := Distribution{Count: 4, P50Ms: 1.5, P95Ms: 3000, P99Ms: 3000, MaxMs: 3000}
	if d != want {
		t.Errorf("distribution = %+v, want %+v", d, want)
	}
	if d := distribution(nil); d != (Distribution{}) {
		t.Errorf("distribution(nil) = %+v, want zero", d)
	}
}

func TestFlapCheck(t *testing.T) {
	s := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	replica := func(b string, created, deleted float64) stageTrack {
		t := stageTrack{broadcast: b, role: roleReplica, created: s(created)}
		if deleted > 0 {
			t.gone, t.deleted = true, s(deleted)
		}
		return t
	}
	origin := stageTrack{broadcast: "a", role: "origin", created: 0}
	tests := []struct {
		name     string
		tracks   []stageTrack
		window   time.Duration
		most     int
		created  int
		deleted  int
		shortest float64 // 0: none
	}{
		{"no replica", []stageTrack{origin}, time.Minute, 0, 0, 0, 0},
		{"a storm: many slots once each", []stageTrack{origin, replica("a", 1, 0), replica("a", 1.2, 0), replica("a", 1.5, 0)}, time.Minute, 1, 3, 0, 0},
		{"a drain: every slot deleted once", []stageTrack{replica("a", 1, 70), replica("a", 2, 70)}, time.Minute, 1, 2, 2, 0},
		{"churn: slot 1 re-created within the window", []stageTrack{replica("a", 1, 3), replica("a", 4, 6), replica("a", 7, 0)}, 10 * time.Second, 3, 3, 2, 3},
		{"re-created after a full window", []stageTrack{replica("a", 1, 50), replica("a", 61, 0)}, time.Minute, 1, 2, 1, 60},
		{"re-created on the same sample as deleted", []stageTrack{replica("a", 1, 5), replica("a", 5, 0)}, 10 * time.Second, 2, 2, 1, 4},
		{"broadcasts have their own slots", []stageTrack{replica("a", 1, 0), replica("b", 1.1, 0)}, time.Minute, 1, 2, 0, 0},
		{"the upper slot flaps, the lower does not", []stageTrack{replica("a", 1, 0), replica("a", 2, 4), replica("a", 5, 0)}, 10 * time.Second, 2, 3, 1, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := flapCheck(tt.tracks, tt.window)
			if f.MostCreationsPerSlot != tt.most || f.ReplicasCreated != tt.created || f.ReplicasDeleted != tt.deleted {
				t.Errorf("flapCheck = %+v, want most %d, created %d, deleted %d", f, tt.most, tt.created, tt.deleted)
			}
			switch {
			case tt.shortest == 0 && f.ShortestRecreateSeconds != nil:
				t.Errorf("shortest re-creation %v, want none", *f.ShortestRecreateSeconds)
			case tt.shortest != 0 && (f.ShortestRecreateSeconds == nil || *f.ShortestRecreateSeconds != tt.shortest):
				t.Errorf("shortest re-creation %v, want %v", f.ShortestRecreateSeconds, tt.shortest)
			}
		})
	}
}

func TestPeakRate(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	at := func(d time.Duration, calls int) sample {
		return sample{at: d, counters: map[string]emulator.OpCounter{"CreateStage": {Calls: calls}}}
	}
	// 4 calls/s for a second, then a burst of 10 in the next second.
	samples := []sample{at(0, 0), at(ms(500), 2), at(ms(1000), 4), at(ms(1500), 9), at(ms(2000), 14)}
	if got := peakRate(samples, "CreateStage"); got != 10 {
		t.Errorf("peakRate = %v, want 10", got)
	}
	if got := peakRate(samples[:2], "CreateStage"); got != 0 {
		t.Errorf("peakRate over half a second = %v, want 0 (no full second)", got)
	}
	calls := ivsCalls(samples, map[string]float64{"CreateStage": 5})
	want := []OperationCalls{{Operation: "CreateStage", Calls: 14, PeakPerSecond: 10, QuotaPerSecond: 5}}
	if !reflect.DeepEqual(calls, want) {
		t.Errorf("ivsCalls = %+v, want %+v", calls, want)
	}
}

// sampleReport is a report with every field set.
func sampleReport() *Report {
	drained, shortest, deleted := 61.25, 12.5, 80.0
	return &Report{
		Scenario:   Drain,
		API:        "http://127.0.0.1:3000",
		Emulator:   "http://127.0.0.1:4566",
		Broadcasts: []string{"loadtest-abc123-1"},
		Settings: Settings{Viewers: 2000, Rate: 200, HoldSeconds: 10, HeartbeatSeconds: 15, Broadcasts: 1, Capacity: 50, Threshold: 45,
			Waves: 4, StabilizationSeconds: 60, DrainWaitSeconds: 70, TimeoutSeconds: 300, SampleIntervalMs: 250,
			MaxStages: 20, StageQuota: 100, RateLimit: "off"},
		StartedAt:           time.Date(2026, 11, 22, 3, 0, 0, 123e6, time.UTC),
		DurationSeconds:     95.5,
		ViewersStartSeconds: 0.75,
		StoppedBy:           "completed",
		Warnings:            []string{"a broadcast's audience peaks at 2000 viewers, and MAX_STAGES=20 stages of 50 seat 1000: start serve with MAX_STAGES=40 or more"},
		Viewers:             ViewerCounts{Planned: 2000, Requested: 2000, Seated: 1999, Left: 1999, StoppedWaiting: 1, JoinsPerSecond: 187.3},
		TokenLatency:        Distribution{Count: 1999, P50Ms: 1.2, P95Ms: 700, P99Ms: 1100, MaxMs: 1900},
		TimeToSeat:          Distribution{Count: 1999, P50Ms: 2.5, P95Ms: 800, P99Ms: 2100, MaxMs: 3000},
		Refused:             map[string]int{"STAGE_FULL": 12},
		Errors:              map[string]int{"emulator join: 402 ServiceQuotaExceededException": 1},
		Stages: StageCounts{Capacity: 50, Peak: 41, PeakReplicas: 40, MaxSeats: 51, OverCapacity: 1, PerStage: []StageSeats{
			{Arn: "arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456", Broadcast: "loadtest-abc123-1", Role: "origin", MaxSubscribers: 50, CreatedSeconds: 0.25},
			{Arn: "arn:aws:ivs:us-east-1:123456789012:stage/GhIjKl789012", Broadcast: "loadtest-abc123-1", Role: "replica", MaxSubscribers: 51, CreatedSeconds: 1.5, DeletedSeconds: &deleted},
		}},
		ReplicationLag: Distribution{Count: 40, P50Ms: 1250, P95Ms: 1500, P99Ms: 1500, MaxMs: 1750},
		Flap:           FlapCheck{WindowSeconds: 60, ReplicasCreated: 40, ReplicasDeleted: 40, MostCreationsPerSlot: 2, ShortestRecreateSeconds: &shortest},
		Drain:          &DrainCheck{WaitSeconds: 70, ReplicasLeft: []string{}, DrainedAfterSeconds: &drained},
		IVSCalls:       []OperationCalls{{Operation: "CreateStage", Calls: 41, Throttled: 3, PeakPerSecond: 5, QuotaPerSecond: 5}},
		Series: []Sample{{Seconds: 0, Stages: 0}, {Seconds: 0.25, PlannedArrivals: 12, Seated: 10, Waiting: 2, Stages: 1, Subscribers: 10},
			{Seconds: 0.5, PlannedArrivals: 60, Seated: 50, Waiting: 10, Refused: 4, Stages: 1, Subscribers: 50}},
		SamplesFailed: 1,
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	rep := sampleReport()
	rep.evaluate()
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, rep) {
		t.Errorf("round trip changed the report:\n got %+v\nwant %+v", back, *rep)
	}
	// The names other tools read.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"scenario", "warnings", "viewers", "tokenLatency", "timeToSeat", "refused", "errors", "stages", "replicationLag", "flap", "drain", "ivsCalls", "series", "targets", "pass"} {
		if _, ok := fields[name]; !ok {
			t.Errorf("JSON report has no %q", name)
		}
	}
}

func TestEvaluate(t *testing.T) {
	// Each case changes one thing in a report that meets every target.
	tests := []struct {
		name   string
		change func(*Report)
		failed []string // the targets that must fail, in order
		miss   string   // a failed target's Miss must contain this
	}{
		{"everything met", func(*Report) {}, nil, ""},
		{"one viewer short", func(r *Report) { r.Viewers.Seated = 1999 }, []string{"every viewer seated"}, "1 not seated"},
		{"over capacity by one", func(r *Report) { r.Stages.MaxSeats, r.Stages.OverCapacity = 51, 1 },
			[]string{"no stage over capacity"}, "the fullest held 51, 1 over"},
		{"p99 time to seat missed", func(r *Report) { r.TimeToSeat.P99Ms = 2100 }, []string{"p99 time to seat"}, "100 ms over"},
		{"p99 time to seat exactly at the target", func(r *Report) { r.TimeToSeat.P99Ms = 2000 }, []string{"p99 time to seat"}, "0.0 ms over"},
		{"flapping", func(r *Report) {
			shortest := 12.5
			r.Flap.MostCreationsPerSlot, r.Flap.ShortestRecreateSeconds = 2, &shortest
		}, []string{"no flapping"}, "2 creations in one window, the closest two 12.500 s apart"},
		{"replicas left after drain", func(r *Report) { r.Drain.ReplicasLeft, r.Drain.DrainedAfterSeconds = []string{"arn:a", "arn:b"}, nil },
			[]string{"drain leaves no replica stage"}, "2 replica stage(s) left"},
		{"stopped before the drain", func(r *Report) { r.Drain = nil }, []string{"drain leaves no replica stage"}, "stopped before everyone left"},
		{"no drain target outside drain", func(r *Report) { r.Scenario, r.Drain = Storm, nil }, nil, ""},
		{"million with every renewal answered", func(r *Report) {
			r.Scenario, r.Renewals = Million, &RenewalCounts{Rounds: 1, Requested: 2000, Renewed: 2000}
		}, nil, ""},
		{"million with a renewal refused", func(r *Report) {
			r.Scenario, r.Renewals = Million, &RenewalCounts{Rounds: 1, Requested: 2000, Renewed: 1997}
		}, []string{"every renewal answered"}, "3 not renewed"},
		{"million with replicas left after the end", func(r *Report) {
			r.Scenario, r.Renewals = Million, &RenewalCounts{Rounds: 1, Requested: 2000, Renewed: 2000}
			r.Drain.ReplicasLeft, r.Drain.DrainedAfterSeconds = []string{"arn:a"}, nil
		}, []string{"ending the broadcast leaves no replica stage"}, "1 replica stage(s) left"},
		{"nobody seated", func(r *Report) { r.Viewers.Seated, r.TimeToSeat = 0, Distribution{} },
			[]string{"every viewer seated", "p99 time to seat"}, "2000 not seated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := sampleReport()
			rep.Viewers.Seated, rep.Stages.MaxSeats, rep.Stages.OverCapacity = 2000, 50, 0
			rep.TimeToSeat.P99Ms, rep.Flap.MostCreationsPerSlot, rep.Flap.ShortestRecreateSeconds = 1100, 1, nil
			tt.change(rep)
			rep.evaluate()
			var failed []string
			missFound := tt.miss == ""
			for _, target := range rep.Targets {
				if !target.Pass {
					failed = append(failed, target.Name)
					if target.Miss == "" {
						t.Errorf("target %q failed without saying by how much", target.Name)
					}
					missFound = missFound || strings.Contains(target.Miss, tt.miss)
				}
			}
			if !reflect.DeepEqual(failed, tt.failed) {
				t.Errorf("failed targets %q, want %q (targets %+v)", failed, tt.failed, rep.Targets)
			}
			if !missFound {
				t.Errorf("no failed target says %q: %+v", tt.miss, rep.Targets)
			}
			if rep.Pass != (len(tt.failed) == 0) {
				t.Errorf("Pass = %v with failed targets %q", rep.Pass, failed)
			}
		})
	}
}

func TestWriteTextAndChart(t *testing.T) {
	rep := sampleReport()
	rep.evaluate()
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"warning: a broadcast's audience peaks at 2000", "1999 seated", "p99 2.10 s", "STAGE_FULL 12", "CreateStage", "FAIL  every viewer seated", "result: FAIL"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}

	// A million run's own lines: the renewals, the processes, Redis.
	million := sampleReport()
	million.Scenario, million.Settings.Concurrency, million.Settings.RenewalRounds = Million, 256, 1
	million.Renewals = &RenewalCounts{Rounds: 1, Requested: 2000, Renewed: 2000, Seconds: 0.5, PerSecond: 4000}
	million.Ends = []BroadcastEnd{{Broadcast: "b-1", Seconds: 1.5, StagesDeleted: 41, SeatsFreed: 2000}, {Broadcast: "b-2", Seconds: 600, Error: "timed out"}}
	million.Resources = &Resources{
		Processes: []ProcessPeak{{Name: "serve-1", PID: 42, PeakRSSBytes: 61_500_000, CPUSeconds: 12.25}, {Name: "gone", PID: 43, Error: "no such process"}},
		Redis: &RedisUsage{APIRequests: 4000, Commands: 48000, CommandsPerRequest: 12, ScriptCalls: 2300, ScriptCallsPerRequest: 0.575,
			CPUSeconds: 0.25, CPUMicrosPerRequest: 62.5, BaselineMemoryBytes: 1_800_000, PeakMemoryBytes: 3_000_000,
			AudienceMemoryBytes: 2_800_000, AudienceSeats: 2000, BytesPerSeat: 500},
	}
	million.evaluate()
	text.Reset()
	if err := million.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"256 workers, 1 renewal round(s)", "2000 of 2000 renewed in 1 round(s)", "4000/s",
		"peak memory serve-1  61.5 MB, 12.2 s of CPU (pid 42)", "peak memory gone     unknown: no such process",
		"4000 API requests: 48000 commands (12.000 each", "2300 script calls (0.575 each)", "62.5 µs each",
		"2.8 MB with 2000 seats held (500 B a seat)", "PASS  every renewal answered",
		"end of b-1 1.50 s: 41 stages deleted, 2000 seats freed", "end of b-2 failed after 600.00 s: timed out"} {
		// The columns' widths are the tabwriter's: compare words.
		if !strings.Contains(strings.Join(strings.Fields(text.String()), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("million's text report lacks %q:\n%s", want, text.String())
		}
	}

	chart := writeChart(t, rep)
	// Every series is named, in the legend or by its axis.
	for _, want := range []string{"viewers seated", "planned arrivals (cumulative)", "viewers waiting", "seat capacity (stages × capacity)",
		"MAX_STAGES × capacity", "refusals (cumulative)", "stages", "viewers and seats", "seconds since the start of the run"} {
		if !strings.Contains(chart, ">"+want+"<") {
			t.Errorf("chart lacks the label %q", want)
		}
	}
	// MAX_STAGES × capacity is only drawn when MAX_STAGES is known.
	rep.Settings.MaxStages = 0
	if chart := writeChart(t, rep); strings.Contains(chart, "MAX_STAGES") {
		t.Error("chart draws MAX_STAGES × capacity with MAX_STAGES unknown")
	}
}

// writeChart returns rep's chart, checked to be well-formed XML whose root
// is an svg element.
func writeChart(t *testing.T, rep *Report) string {
	t.Helper()
	var svg bytes.Buffer
	if err := rep.WriteChart(&svg); err != nil {
		t.Fatal(err)
	}
	chart := svg.String()
	dec := xml.NewDecoder(strings.NewReader(chart))
	root := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Errorf("chart's root element is %q, want svg", root)
	}
	return chart
}
