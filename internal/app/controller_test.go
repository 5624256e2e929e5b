package app_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/emulator"
)

// Scenario tests of the fleet controller, each against the embedded
// emulator through the real SDK.

// emuCapacity makes the emulator refuse a join beyond n subscribers, so that
// an overfilled stage fails the test at the join.
func emuCapacity(n int) func(*emulator.Config) {
	return func(c *emulator.Config) { c.StageCapacity = n }
}

// replicas returns the broadcast's replica stages.
func (a *testApp) replicas(t *testing.T, broadcastID string) []stageData {
	t.Helper()
	var out []stageData
	for _, s := range a.stages(t, broadcastID) {
		if s.Role == "replica" {
			out = append(out, s)
		}
	}
	return out
}

// activeIn counts the ACTIVE replications into stage arn in the emulator.
func activeIn(s emuState, arn, participantID string) int {
	return emuReplications(s, participantID, arn, "ACTIVE")
}

// waitReplicated waits until every replica stage of the broadcast has an
// active replication of the host, in stagefleet and in IVS, and takes
// viewers.
func (a *testApp) waitReplicated(t *testing.T, broadcastID, participantID string, wantStages int) {
	t.Helper()
	eventually(t, 10*time.Second, func() (bool, string) {
		reps := a.replicas(t, broadcastID)
		if len(reps) < wantStages {
			return false, fmt.Sprintf("%d replica stages, want %d", len(reps), wantStages)
		}
		s := a.emuState(t)
		for _, st := range reps {
			if !st.Seatable || activeIn(s, st.Arn, participantID) != 1 {
				return false, fmt.Sprintf("replica %s: seatable %v, %d active replications of %s in IVS: %+v", st.Arn, st.Seatable, activeIn(s, st.Arn, participantID), participantID, st.Replications)
			}
		}
		return true, ""
	})
}

// TestControllerTimeline plays the previous server's timeline: viewers fill
// the origin, a replica is ready before the origin is full, viewer 51 is
// seated on it, and when everyone has left only the origin remains.
func TestControllerTimeline(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{
		"STAGE_CAPACITY":     "50",
		"SCALE_UP_THRESHOLD": "45",
		// The replica waits empty while viewers 46 to 50 fill the origin;
		// 3 s, so that a stall of a loaded machine does not see it removed.
		"SCALE_DOWN_STABILIZATION": "3s",
		"RECONCILE_INTERVAL":       "1s",
		"RATE_LIMIT_MAX_REQUESTS":  "0",
	}, emuCapacity(50))
	host := a.goLive(t, "default", "host-1")
	if n := len(a.replicas(t, "default")); n != 0 {
		t.Fatalf("%d replica stages before any viewer; want none", n)
	}

	seat := func(i int) tokenData {
		v := a.token(t, "viewer", map[string]any{"userId": fmt.Sprintf("viewer-%d", i)})
		a.join(t, v.Token)
		return v
	}
	for i := 1; i <= 45; i++ {
		if v := seat(i); v.StageArn != host.StageArn {
			t.Fatalf("viewer %d seated on %s; the origin %s has room", i, v.StageArn, host.StageArn)
		}
	}
	a.waitReplicated(t, "default", host.ParticipantID, 1)
	replica := a.replicas(t, "default")[0]
	if o := a.stage(t, "default", host.StageArn); o.Seats != 45 {
		t.Fatalf("origin has %d seats when its replica became ready; want 45 (ready before full)", o.Seats)
	}
	for i := 46; i <= 50; i++ {
		if v := seat(i); v.StageArn != host.StageArn {
			t.Fatalf("viewer %d seated on %s; fullest first wants the origin", i, v.StageArn)
		}
	}
	if v := seat(51); v.StageArn != replica.Arn {
		t.Fatalf("viewer 51 seated on %s; want the replica %s", v.StageArn, replica.Arn)
	}

	for i := 1; i <= 51; i++ {
		a.expect(t, "POST", "/api/viewer/leave", map[string]any{"userId": fmt.Sprintf("viewer-%d", i)}, http.StatusOK)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		n := len(a.replicas(t, "default"))
		return n == 0, fmt.Sprintf("%d replica stages remain after the audience left", n)
	})
	for _, st := range a.emuState(t).Stages {
		if st.MaxSubscribers > 50 {
			t.Errorf("stage %s held %d subscribers at once; capacity is 50", st.Arn, st.MaxSubscribers)
		}
	}
	stages := a.stages(t, "default")
	if len(stages) != 1 || stages[0].Arn != host.StageArn {
		t.Fatalf("stages after the window: %+v; want only the origin", stages)
	}
	a.checkNoLeaks(t, "default")
}

// TestReplicationFollowsHosts: replica stages made before the host publishes
// get the host as soon as it does; a host that unpublishes and comes back is
// replicated again; a second host is replicated too.
func TestReplicationFollowsHosts(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{
		"MIN_IDLE_STAGES":  "2",
		"RECONNECT_WINDOW": "0s",
	})
	host := a.token(t, "publisher", map[string]any{"userId": "host-1"})
	eventually(t, 10*time.Second, func() (bool, string) {
		reps := a.replicas(t, "default")
		if len(reps) != 2 {
			return false, fmt.Sprintf("%d warm replica stages, want 2", len(reps))
		}
		for _, st := range reps {
			if len(st.Replications) != 1 || st.Replications[0].State != "pending" {
				return false, fmt.Sprintf("replica %s replications %+v; want one pending", st.Arn, st.Replications)
			}
		}
		return true, ""
	})

	j := a.join(t, host.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitReplicated(t, "default", host.ParticipantID, 2)

	status, raw := a.emuPost(t, "/_emulator/participants/unpublish", map[string]string{"stageArn": j.StageArn, "participantId": j.ParticipantID})
	if status != http.StatusOK {
		t.Fatalf("unpublish: %d %s", status, raw)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, st := range a.replicas(t, "default") {
			if st.Seatable {
				return false, fmt.Sprintf("replica %s still takes viewers after its only host unpublished", st.Arn)
			}
		}
		return true, ""
	})
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitReplicated(t, "default", host.ParticipantID, 2)

	second := a.token(t, "publisher", map[string]any{"userId": "host-2"})
	j2 := a.join(t, second.Token)
	a.publish(t, j2.StageArn, j2.ParticipantID)
	a.waitReplicated(t, "default", second.ParticipantID, 2)
	a.checkNoLeaks(t, "default")
}

// TestConvergesWithoutEvents: with every event dropped, reconciliation with
// IVS alone learns that the host publishes and that replications are active.
func TestConvergesWithoutEvents(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{
		"MIN_IDLE_STAGES":    "1",
		"RECONCILE_INTERVAL": "500ms",
	})
	if status, raw := a.emuPost(t, "/_emulator/events", map[string]any{"dropRate": 1}); status != http.StatusOK {
		t.Fatalf("drop events: %d %s", status, raw)
	}
	host := a.token(t, "publisher", map[string]any{"userId": "host-1"})
	j := a.join(t, host.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitLive(t, "default", host.StageArn)
	a.waitReplicated(t, "default", host.ParticipantID, 1)
	a.checkNoLeaks(t, "default")
}

// TestConvergesUnderFaults: with duplicated, reordered events, 20% of all
// IVS calls failing with errors the SDK retries, default quotas throttling,
// and StartParticipantReplication failing with an error the SDK does not
// retry (every call at first, then 20%), which the fleet must back off from
// and retry, the fleet still converges: every replica stage has exactly one
// active replication of the host, and no stage leaks.
func TestConvergesUnderFaults(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{
		"MIN_IDLE_STAGES":    "3",
		"RECONCILE_INTERVAL": "500ms",
	})
	inject := func(f map[string]any) {
		t.Helper()
		if status, raw := a.emuPost(t, "/_emulator/faults", f); status != http.StatusOK {
			t.Fatalf("inject fault %v: %d %s", f, status, raw)
		}
	}
	if status, raw := a.emuPost(t, "/_emulator/events", map[string]any{"duplicateRate": 0.5, "reorderWindowMs": 300}); status != http.StatusOK {
		t.Fatalf("perturb events: %d %s", status, raw)
	}
	inject(map[string]any{"operation": "*", "errorRate": 0.2, "errorType": "InternalServerException"})
	inject(map[string]any{"operation": "StartParticipantReplication", "errorRate": 1, "errorType": "AccessDeniedException"})
	// The origin is created under the faults too: a client retries a 500.
	var host tokenData
	for attempt := 1; ; attempt++ {
		r := a.call(t, "POST", "/api/token/publisher", map[string]any{"userId": "host-1"})
		if r.Status == http.StatusOK {
			host = dataOf[tokenData](t, r)
			break
		}
		if attempt == 20 {
			t.Fatalf("no host token in 20 attempts: %s", r)
		}
	}
	j := a.join(t, host.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitLive(t, "default", host.StageArn)
	eventually(t, 10*time.Second, func() (bool, string) {
		n := a.emuState(t).Counters["StartParticipantReplication"].Faults
		return n >= 3, fmt.Sprintf("%d failed replication starts; want one per warm replica stage", n)
	})
	inject(map[string]any{"operation": "StartParticipantReplication", "errorRate": 0.2, "errorType": "AccessDeniedException"})

	a.waitReplicated(t, "default", host.ParticipantID, 3)
	// Let the fleet settle with the faults still on, then check again.
	time.Sleep(time.Second)
	a.waitReplicated(t, "default", host.ParticipantID, 3)
	if n := len(a.replicas(t, "default")); n != 3 {
		t.Errorf("%d replica stages; want exactly the warm pool of 3", n)
	}
	a.checkNoLeaks(t, "default")
}

// TestJoinStorm: 1,000 viewers arriving at 100/s on capacity 50, with
// realistic IVS latencies (CreateStage 300 ms, replica activation 1 s) and
// AWS's default quotas: every viewer is seated and no stage ever holds more
// than its capacity. SEAT_WAIT is generous so that the test asserts what
// must hold on any machine; the time to seat (target: p99 under 2 s) is
// measured and logged for docs/benchmarks.md, not asserted, since a shared
// machine under -race stretches it.
func TestJoinStorm(t *testing.T) {
	// Not parallel: a storm measures the service, not the other tests
	// competing for the same two cores.
	a := startApp(t, map[string]string{
		"STAGE_CAPACITY":          "50",
		"SCALE_UP_THRESHOLD":      "45",
		"MAX_STAGES":              "30",
		"SEAT_WAIT":               "10s",
		"RATE_LIMIT_MAX_REQUESTS": "0",
	}, emuCapacity(50), func(c *emulator.Config) {
		c.Latency = map[string]time.Duration{"CreateStage": 300 * time.Millisecond}
		c.ReplicaDelay = time.Second
	})
	host := a.goLive(t, "default", "host-1")

	const viewers, rate = 1000, 100
	type result struct {
		status int
		stage  string
		token  string
		wait   time.Duration
	}
	results := make(chan result, viewers)
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	for i := range viewers {
		<-tick.C
		go func() {
			start := time.Now()
			r, err := a.send(t.Context(), "POST", "/api/token/viewer", map[string]any{"userId": fmt.Sprintf("storm-%d", i)}, nil)
			if err != nil {
				t.Errorf("viewer %d: %v", i, err)
				results <- result{}
				return
			}
			res := result{status: r.Status, wait: time.Since(start)}
			if r.Status == http.StatusOK {
				// Not dataOf: it would stop the test from this goroutine.
				var d tokenData
				if err := json.Unmarshal(r.Env.Data, &d); err != nil {
					t.Errorf("viewer %d: %v: %s", i, err, r.Env.Data)
				}
				res.stage, res.token = d.StageArn, d.Token
			}
			results <- res
		}()
	}
	perStage := map[string]int{}
	var waits []time.Duration
	for range viewers {
		r := <-results
		if r.status != http.StatusOK {
			t.Errorf("a viewer got %d; every viewer should be seated", r.status)
			continue
		}
		perStage[r.stage]++
		waits = append(waits, r.wait)
		a.join(t, r.token)
	}
	// The figures docs/benchmarks.md records (go test -run TestJoinStorm -v).
	slices.Sort(waits)
	if len(waits) > 0 {
		pct := func(p float64) time.Duration { return waits[int(p*float64(len(waits)-1))] }
		t.Logf("time to seat: p50 %v, p95 %v, p99 %v, max %v; %d stages seated viewers, %d stages in IVS",
			pct(0.50), pct(0.95), pct(0.99), waits[len(waits)-1], len(perStage), len(a.emuState(t).Stages))
	}
	for arn, n := range perStage {
		if n > 50 {
			t.Errorf("stage %s was given %d viewers; capacity is 50", arn, n)
		}
	}
	for _, st := range a.emuState(t).Stages {
		if st.MaxSubscribers > 50 {
			t.Errorf("stage %s held %d subscribers at once; capacity is 50", st.Arn, st.MaxSubscribers)
		}
	}
	for _, st := range a.replicas(t, "default") {
		if st.Seats > 0 && activeIn(a.emuState(t), st.Arn, host.ParticipantID) != 1 {
			t.Errorf("replica %s has %d seats without an active host replication", st.Arn, st.Seats)
		}
	}
}
