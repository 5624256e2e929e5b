package loadtest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/app"
	"github.com/stagefleet/stagefleet/internal/config"
	"github.com/stagefleet/stagefleet/internal/emulator"
	"github.com/stagefleet/stagefleet/internal/loadtest"
	"github.com/stagefleet/stagefleet/internal/redistest"
)

// startServe runs a real stagefleet serve (embedded emulator, memory store)
// on loopback until the test ends, configured by env on top of settings a
// load test needs, and returns its API's URL.
func startServe(t *testing.T, env map[string]string, emu func(*emulator.Config)) string {
	t.Helper()
	vars := map[string]string{
		"API_HOST":      "127.0.0.1",
		"API_PORT":      "0",
		"EMULATOR_ADDR": "127.0.0.1:0",
		"IVS_MODE":      "emulator",
		// One client address sends everything: the default limit would
		// refuse most of it.
		"RATE_LIMIT_MAX_REQUESTS": "0",
		"STAGE_CAPACITY":          "50",
		"SCALE_UP_THRESHOLD":      "45",
		"MAX_STAGES":              "30",
		// Generous, so that a slow machine under -race cannot fail a run
		// by STAGE_FULL; time to seat is measured, not asserted.
		"SEAT_WAIT":          "10s",
		"RECONCILE_INTERVAL": "1s",
		"DATA_DIR":           t.TempDir(),
	}
	maps.Copy(vars, env)
	cfg, err := config.Load(nil, func(k string) string { return vars[k] }, io.Discard, nil)
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	emuCfg := emulator.DefaultConfig()
	// The emulator refuses a join beyond the capacity, so an overfilled
	// stage also shows as an emulator join error.
	emuCfg.StageCapacity = cfg.StageCapacity
	if emu != nil {
		emu(&emuCfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, emuCfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatalf("app.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("serve did not stop within 20s")
		}
		a.Close()
	})
	return "http://" + a.Addr()
}

// runJSON runs a load test and returns its report as it comes out of JSON,
// which is what other tools read.
func runJSON(t *testing.T, cfg loadtest.Config) loadtest.Report {
	t.Helper()
	cfg.Timeout = time.Minute // a hung run fails the test instead of hanging it
	rep, err := loadtest.Run(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back loadtest.Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatalf("the JSON report does not parse: %v", err)
	}
	if back.StoppedBy != "completed" {
		t.Fatalf("run stopped by %s", back.StoppedBy)
	}
	return back
}

// checkCommon checks what every run must show: everyone seated, nobody
// over capacity, measurements present, no failed step.
func checkCommon(t *testing.T, rep loadtest.Report, viewers int) {
	t.Helper()
	v := rep.Viewers
	if v.Planned != viewers || v.Requested != viewers || v.Seated != viewers || v.Left != viewers {
		t.Errorf("viewers %+v; want all %d requested, seated and gone", v, viewers)
	}
	if len(rep.Errors) != 0 {
		t.Errorf("errors %v; want none", rep.Errors)
	}
	if rep.Stages.OverCapacity != 0 || rep.Stages.MaxSeats > rep.Stages.Capacity || rep.Stages.Capacity != 50 {
		t.Errorf("stages %+v; want none over the capacity of 50", rep.Stages)
	}
	if rep.TimeToSeat.Count != viewers || rep.TokenLatency.Count < viewers || rep.TimeToSeat.P99Ms <= 0 {
		t.Errorf("time to seat %+v, token latency %+v; want one measurement per viewer", rep.TimeToSeat, rep.TokenLatency)
	}
	if len(rep.Series) < 4 || rep.Stages.Peak < 2 {
		t.Errorf("%d samples, peak %d stages; want a series and replica stages", len(rep.Series), rep.Stages.Peak)
	}
	calls := map[string]int{}
	for _, c := range rep.IVSCalls {
		calls[c.Operation] = c.Calls
	}
	if calls["CreateStage"] < 2 || calls["StartParticipantReplication"] < 1 {
		t.Errorf("IVS calls %+v; want the origin and replica stages created and replicated", rep.IVSCalls)
	}
	if rep.ReplicationLag.Count < 1 {
		t.Errorf("replication lag %+v; want one per replica stage", rep.ReplicationLag)
	}
	for _, target := range rep.Targets {
		if target.Name == "every viewer seated" || target.Name == "no stage over capacity" || target.Name == "no flapping" {
			if !target.Pass {
				t.Errorf("target %q missed: %+v", target.Name, target)
			}
		}
	}
}

func TestStormAgainstServe(t *testing.T) {
	t.Parallel()
	api := startServe(t, nil, func(c *emulator.Config) {
		c.Latency = map[string]time.Duration{"CreateStage": 100 * time.Millisecond}
	})
	rep := runJSON(t, loadtest.Config{
		API: api, Scenario: loadtest.Storm, Viewers: 200, Rate: 100,
		Hold: 500 * time.Millisecond, Heartbeat: 200 * time.Millisecond,
	})
	checkCommon(t, rep, 200)
	if rep.Stages.PeakReplicas < 3 {
		t.Errorf("peak %d replica stages; 200 viewers on capacity 50 need at least 3", rep.Stages.PeakReplicas)
	}
	refused := 0
	for _, n := range rep.Refused {
		refused += n
	}
	if last := rep.Series[len(rep.Series)-1]; last.PlannedArrivals != 200 || last.Refused != refused {
		t.Errorf("last sample %+v; want 200 planned arrivals and the %d refusals counted", last, refused)
	}
	if rep.Drain != nil {
		t.Errorf("a storm reports a drain: %+v", rep.Drain)
	}
}

func TestDrainAgainstServe(t *testing.T) {
	t.Parallel()
	// A 2 s window, not 1 s: on a loaded 2-core machine the arrivals can
	// stall for a second, and an empty replica made for them is then
	// rightly removed and made again, which the flap check counts.
	api := startServe(t, map[string]string{"SCALE_DOWN_STABILIZATION": "2s"}, nil)
	// serve's MAX_STAGES and rate limit allow the drain; a STAGE_QUOTA of
	// 2, below the 4 stages its 200 viewers need at once, is only warned
	// about.
	var warnings []string
	rep := runJSON(t, loadtest.Config{
		API: api, Scenario: loadtest.Drain, Viewers: 200, Rate: 100, Hold: 300 * time.Millisecond,
		Stabilization: 2 * time.Second, DrainWait: 15 * time.Second,
		MaxStages: 30, RateLimit: &loadtest.RateLimit{}, StageQuota: 2,
		Warn: func(w string) { warnings = append(warnings, w) },
	})
	checkCommon(t, rep, 200)
	// The emulator's state counts the run's origin, its one stage so far.
	const quota = "the run needs 3 more stages and the deployment holds 1, over STAGE_QUOTA=2: start serve with STAGE_QUOTA=4 or more"
	if len(warnings) != 1 || warnings[0] != quota || !slices.Equal(rep.Warnings, warnings) {
		t.Errorf("warnings %q, in the report %q; want only %q", warnings, rep.Warnings, quota)
	}
	if rep.Drain == nil || len(rep.Drain.ReplicasLeft) != 0 || rep.Drain.DrainedAfterSeconds == nil {
		t.Fatalf("drain %+v; want no replica stage left", rep.Drain)
	}
	if rep.Flap.ReplicasDeleted != rep.Flap.ReplicasCreated || rep.Flap.ReplicasCreated < 3 {
		t.Errorf("flap %+v; want every replica stage created and deleted", rep.Flap)
	}
	// The server's own records follow IVS: only the origin is left. The
	// removal deletes the stage in IVS first and its record after, so the
	// records may lag IVS a moment.
	var roles []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		roles = stageRoles(t, api, rep.Broadcasts[0])
		if len(roles) == 1 && roles[0] == "origin" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stagefleet lists stages %v 5s after IVS had no replica stage left; want only the origin", roles)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !targetNamed(rep, "drain leaves no replica stage").Pass {
		t.Errorf("drain target missed: %+v", rep.Targets)
	}
}

// TestFlapAgainstServe: an audience swinging across the threshold makes
// one replica stage, which stays through the waves (each empty spell is
// shorter than the stabilization window). Each wave stays up a second: a
// viewer due to leave before the replica stage is ready (CreateStage,
// replication, its event) would never be seated.
func TestFlapAgainstServe(t *testing.T) {
	t.Parallel()
	api := startServe(t, map[string]string{"SCALE_DOWN_STABILIZATION": "5s", "STAGE_CAPACITY": "10", "SCALE_UP_THRESHOLD": "8"}, nil)
	rep := runJSON(t, loadtest.Config{
		API: api, Scenario: loadtest.Flap, Rate: 20, Hold: time.Second, Waves: 2,
		Threshold: 8, Stabilization: 5 * time.Second,
	})
	if rep.Settings.Capacity != 10 {
		t.Errorf("capacity %d; want 10, as the API reports it", rep.Settings.Capacity)
	}
	want := 6 + 2*(12-6) // up to 6, then 2 waves up to 12
	if rep.Viewers.Seated != want || len(rep.Errors) != 0 {
		t.Errorf("viewers %+v, errors %v; want all %d seated", rep.Viewers, rep.Errors, want)
	}
	if rep.Flap.ReplicasCreated < 1 || rep.Flap.MostCreationsPerSlot != 1 || !targetNamed(rep, "no flapping").Pass {
		t.Errorf("flap %+v; want a replica stage created once and kept", rep.Flap)
	}
	if rep.Stages.OverCapacity != 0 {
		t.Errorf("%d stages over capacity", rep.Stages.OverCapacity)
	}
}

// TestTimeoutStopsTheRun: a run far longer than its timeout stops at the
// timeout, still reports, and gives back every seat it took. The timeout
// leaves a machine busy with the other tests time to seat someone (2 s
// did not, once, in a full CI run: the host was not yet live).
func TestTimeoutStopsTheRun(t *testing.T) {
	t.Parallel()
	api := startServe(t, nil, nil)
	start := time.Now()
	rep, err := loadtest.Run(t.Context(), loadtest.Config{
		API: api, Scenario: loadtest.Steady, Viewers: 1000, Rate: 20, Hold: time.Minute, Timeout: 6 * time.Second,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("a run with a 6s timeout took %v", took)
	}
	if rep.StoppedBy != "timeout" || rep.Viewers.Seated == 0 || rep.Viewers.Seated >= 1000 {
		t.Fatalf("stopped by %q with viewers %+v; want a timeout after some viewers were seated", rep.StoppedBy, rep.Viewers)
	}
	if rep.Viewers.Left != rep.Viewers.Seated || len(rep.Errors) != 0 {
		t.Errorf("viewers %+v, errors %v; want every seated viewer gone", rep.Viewers, rep.Errors)
	}
	if n := connectedViewers(t, rep.Emulator); n != 0 {
		t.Errorf("%d viewers still connected in IVS; want every one gone", n)
	}
	if rep.Pass {
		t.Error("a run that seated a fraction of its viewers passes")
	}
}

// connectedViewers counts the load test's viewers connected to a stage.
// (IVS's subscriber count would not do: it includes a host's replica while
// its replication starts.)
func connectedViewers(t *testing.T, emu string) int {
	t.Helper()
	resp, err := http.Get(emu + "/_emulator/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st emulator.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range st.Stages {
		for _, ss := range s.Sessions {
			for _, p := range ss.Participants {
				if p.State == "CONNECTED" && strings.HasPrefix(p.UserID, "viewer-") {
					n++
				}
			}
		}
	}
	return n
}

// stageRoles lists the roles of a broadcast's stages as the API records them.
func stageRoles(t *testing.T, api, broadcast string) []string {
	t.Helper()
	resp, err := http.Get(api + "/api/stage/list?broadcastId=" + broadcast)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Data struct {
			Stages []struct {
				Role string `json:"role"`
			} `json:"stages"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	var roles []string
	for _, s := range list.Data.Stages {
		roles = append(roles, s.Role)
	}
	return roles
}

func targetNamed(rep loadtest.Report, name string) loadtest.Target {
	for _, t := range rep.Targets {
		if t.Name == name {
			return t
		}
	}
	return loadtest.Target{Name: fmt.Sprintf("%s (missing)", name)}
}

// TestMillionScenarioAgainstServe runs the million scenario at a size the
// test suite carries: the viewers seated by a pool of workers, renewed in
// rounds, the broadcast ended, and what Redis and the process used read.
func TestMillionScenarioAgainstServe(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t)
	api := startServe(t, map[string]string{
		"REDIS_URL": rdb.URL(), "STAGE_CAPACITY": "300", "SCALE_UP_THRESHOLD": "270", "MAX_STAGES": "10",
		// Every seat must outlast the join phase: million renews only after it.
		"HEARTBEAT_TIMEOUT": "10m",
	}, nil)
	const viewers = 1500
	rep := runJSON(t, loadtest.Config{
		// The same instance twice: calls alternate between the URLs.
		API: api + "," + api, Scenario: loadtest.Million, Viewers: viewers, Concurrency: 32, Renewals: 2, Hold: 100 * time.Millisecond,
		Processes: []loadtest.Process{{Name: "test", PID: os.Getpid()}}, Redis: rdb.URL(),
	})
	v := rep.Viewers
	if v.Planned != viewers || v.Seated != viewers || v.Left != viewers || len(rep.Errors) != 0 {
		t.Errorf("viewers %+v, errors %v; want all %d seated, and gone with the broadcast", v, rep.Errors, viewers)
	}
	if rep.Stages.OverCapacity != 0 || rep.Stages.MaxSeats > 300 || rep.Stages.Peak < viewers/300 {
		t.Errorf("stages %+v; want at least %d, none over 300", rep.Stages, viewers/300)
	}
	if r := rep.Renewals; r == nil || r.Rounds != 2 || r.Requested != 2*viewers || r.Renewed != r.Requested || r.PerSecond <= 0 {
		t.Errorf("renewals %+v; want 2 rounds renewing all %d seats", r, viewers)
	}
	if rep.Drain == nil || len(rep.Drain.ReplicasLeft) != 0 || rep.Drain.DrainedAfterSeconds == nil {
		t.Errorf("after the end %+v; want no replica stage left", rep.Drain)
	}
	if len(rep.Ends) != 1 || rep.Ends[0].Error != "" || rep.Ends[0].SeatsFreed != viewers || rep.Ends[0].StagesDeleted != rep.Stages.Peak || rep.Ends[0].Seconds <= 0 {
		t.Errorf("ends %+v; want the broadcast ended, its %d stages deleted and %d seats freed", rep.Ends, rep.Stages.Peak, viewers)
	}
	if n := connectedViewers(t, rep.Emulator); n != 0 {
		t.Errorf("%d viewers still connected in IVS after the broadcast ended", n)
	}
	res := rep.Resources
	// The process named, and the load generator itself: here both are this
	// test's process.
	if res == nil || len(res.Processes) != 2 || res.Processes[1].Name != "loadtest" || res.Redis == nil {
		t.Fatalf("resources %+v; want the process named, the load generator, and Redis's usage", res)
	}
	for _, p := range res.Processes {
		if p.PID != os.Getpid() || p.PeakRSSBytes <= 0 || p.CPUSeconds <= 0 || p.Error != "" {
			t.Errorf("process %+v; want this process's peak memory and CPU", p)
		}
	}
	if u := res.Redis; u.APIRequests < 3*viewers || u.Commands <= 0 || u.ScriptCalls <= 0 || u.CPUSeconds <= 0 ||
		u.AudienceSeats != viewers || u.BytesPerSeat <= 0 || u.PeakMemoryBytes < u.AudienceMemoryBytes {
		t.Errorf("redis %+v; want the requests of %d joins and two renewal rounds, and the audience's memory", u, viewers)
	}
	for _, name := range []string{"every viewer seated", "no stage over capacity", "every renewal answered", "ending the broadcast leaves no replica stage"} {
		if !targetNamed(rep, name).Pass {
			t.Errorf("target %q missed: %+v", name, targetNamed(rep, name))
		}
	}
}
