package app_test

// End-to-end tests of stagefleet serve on the embedded default: a real App
// on loopback, the built-in IVS emulator reached through the real AWS SDK,
// the in-memory store. Everything goes over HTTP as an app, a host's client
// SDK (the emulator's control API) and IVS's events would.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/emulator"
)

var arnPattern = regexp.MustCompile(`^arn:aws:ivs:us-east-1:123456789012:stage/[a-zA-Z0-9-]+$`)

// TestReplicationWalkthrough replays the previous server's replication
// walk-through: host token, publisher info, a manual stage, a refused start
// while the host is not publishing, then start, status, stop and delete.
func TestReplicationWalkthrough(t *testing.T) {
	t.Parallel()
	a := startApp(t, nil)

	before := time.Now()
	host := a.token(t, "publisher", map[string]any{"userId": "host-1"})
	if host.Token == "" || strings.Count(host.Token, ".") != 2 {
		t.Errorf("token %q is not a JWT", host.Token)
	}
	if host.ParticipantID == "" || host.UserID != "host-1" || !arnPattern.MatchString(host.StageArn) {
		t.Errorf("host token: %+v", host)
	}
	if !slices.Equal(host.Capabilities, []string{"PUBLISH", "SUBSCRIBE"}) {
		t.Errorf("capabilities %v, want [PUBLISH SUBSCRIBE]", host.Capabilities)
	}
	// PUBLISHER_TOKEN_TTL defaults to 4h, as the previous server's tokens.
	if host.ExpiresIn < 14400-5 || host.ExpiresIn > 14400 {
		t.Errorf("expiresIn %d, want about 14400", host.ExpiresIn)
	}
	exp, err := time.Parse(time.RFC3339, host.ExpiresAt)
	if err != nil || exp.Before(before.Add(4*time.Hour-5*time.Second)) || exp.After(time.Now().Add(4*time.Hour+time.Second)) {
		t.Errorf("expiresAt %q, want RFC 3339 about 4h from now (%v)", host.ExpiresAt, err)
	}
	if !strings.HasPrefix(host.WhipEndpoint, "https://") {
		t.Errorf("whipEndpoint %q, want an https URL", host.WhipEndpoint)
	}

	info := dataOf[struct {
		HasPublisher  bool `json:"hasPublisher"`
		PublisherInfo *struct {
			ParticipantID string `json:"participantId"`
			StageArn      string `json:"stageArn"`
			UserID        string `json:"userId"`
			JoinedAt      string `json:"joinedAt"`
		} `json:"publisherInfo"`
	}](t, a.expect(t, "GET", "/api/stage/replication/publisher-info", nil, http.StatusOK))
	if !info.HasPublisher || info.PublisherInfo == nil {
		t.Fatalf("publisher-info: %+v, want the host", info)
	}
	if p := info.PublisherInfo; p.ParticipantID != host.ParticipantID || p.StageArn != host.StageArn || p.UserID != "host-1" {
		t.Errorf("publisherInfo %+v, want the host of %+v", p, host)
	}
	if _, err := time.Parse(time.RFC3339, info.PublisherInfo.JoinedAt); err != nil {
		t.Errorf("joinedAt: %v", err)
	}

	master := dataOf[struct {
		Stage stageData `json:"stage"`
		Hosts []struct {
			ParticipantID string `json:"participantId"`
			Publishing    bool   `json:"publishing"`
		} `json:"hosts"`
	}](t, a.expect(t, "GET", "/api/stage/master/info", nil, http.StatusOK))
	if master.Stage.Arn != host.StageArn || master.Stage.Role != "origin" || len(master.Hosts) != 1 || master.Hosts[0].ParticipantID != host.ParticipantID {
		t.Errorf("master info %+v, want the origin and its host", master)
	}

	created := dataOf[struct {
		Stage stageData `json:"stage"`
	}](t, a.expect(t, "POST", "/api/stage", map[string]any{"name": "by-hand"}, http.StatusCreated)).Stage
	if !arnPattern.MatchString(created.Arn) || created.Arn == host.StageArn || created.Name != "by-hand" {
		t.Fatalf("created stage %+v", created)
	}
	repl := map[string]any{"sourceStageArn": host.StageArn, "destinationStageArn": created.Arn, "participantId": host.ParticipantID}
	statusPath := "/api/stage/replication/status/" + created.Arn
	status := func() replicationStatus {
		t.Helper()
		return dataOf[replicationStatus](t, a.expect(t, "GET", statusPath, nil, http.StatusOK))
	}

	// The host has a token but is not in the stage: IVS's own refusal.
	r := a.call(t, "POST", "/api/stage/replication/start", repl)
	wantError(t, r, http.StatusConflict, "NOT_PUBLISHING")
	if want := host.ParticipantID + " is not publishing"; !strings.Contains(r.Env.Error.Message, want) {
		t.Errorf("message %q, want it to contain %q", r.Env.Error.Message, want)
	}
	if s := status(); s.HasReplication || s.ReplicationInfo != nil || len(s.Replications) != 0 || s.StageArn != created.Arn {
		t.Errorf("after a refused start: %+v, want nothing recorded", s)
	}

	j := a.join(t, host.Token)
	if j.ParticipantID != host.ParticipantID || j.StageArn != host.StageArn {
		t.Fatalf("host joined as %+v, want its token's participant and stage", j)
	}
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitLive(t, "default", host.StageArn)

	started := dataOf[replicationData](t, a.expect(t, "POST", "/api/stage/replication/start", repl, http.StatusOK))
	if started.ParticipantID != host.ParticipantID || started.SourceStageArn != host.StageArn || started.DestinationStageArn != created.Arn {
		t.Errorf("started %+v", started)
	}
	if s := status(); !s.HasReplication || s.ReplicationInfo == nil {
		t.Fatalf("after start: %+v, want hasReplication", s)
	}
	// Active once the Replication Started event arrives.
	eventually(t, 5*time.Second, func() (bool, string) {
		s := status()
		return s.ReplicationInfo != nil && s.ReplicationInfo.State == "active", fmt.Sprintf("replication never became active: %+v", s)
	})
	again := dataOf[replicationData](t, a.expect(t, "POST", "/api/stage/replication/start", repl, http.StatusOK))
	if again.State != "active" {
		t.Errorf("starting an active replication again: state %q, want active", again.State)
	}
	if n := emuReplications(a.emuState(t), host.ParticipantID, created.Arn, "ACTIVE"); n != 1 {
		t.Errorf("IVS has %d active replications into the stage, want 1", n)
	}

	a.expect(t, "DELETE", "/api/stage/replication/stop", repl, http.StatusOK)
	if s := status(); s.HasReplication {
		t.Errorf("after stop: %+v, want no replication", s)
	}
	if n := emuReplications(a.emuState(t), host.ParticipantID, created.Arn, "ACTIVE"); n != 0 {
		t.Errorf("IVS still has %d active replications after stop", n)
	}

	// The origin is never deleted by hand.
	wantError(t, a.call(t, "DELETE", "/api/stage/"+host.StageArn, nil), http.StatusForbidden, "FORBIDDEN")

	a.expect(t, "DELETE", "/api/stage/"+created.Arn, nil, http.StatusOK)
	wantError(t, a.call(t, "GET", "/api/stage/"+created.Arn, nil), http.StatusNotFound, "NOT_FOUND")
	a.checkNoLeaks(t, "default")
}

func emuReplications(s emuState, participantID, destArn, state string) int {
	n := 0
	for _, r := range s.Replications {
		if r.ParticipantID == participantID && r.DestinationStageArn == destArn && r.State == state {
			n++
		}
	}
	return n
}

// TestViewerToken: no seat while no host is live; then a subscribe token
// for the origin, one seat per viewer however often it asks, and a token the
// stage accepts.
func TestViewerToken(t *testing.T) {
	t.Parallel()
	a := startApp(t, nil)
	viewer := map[string]any{"userId": "viewer-1"}

	r := a.call(t, "POST", "/api/token/viewer", viewer)
	wantError(t, r, http.StatusNotFound, "NOT_FOUND")
	if !strings.Contains(r.Env.Error.Message, "live") {
		t.Errorf("message %q, want it to say the host is not live", r.Env.Error.Message)
	}
	// A host with a token who does not publish is not live either.
	host := a.token(t, "publisher", map[string]any{"userId": "host-1"})
	wantError(t, a.call(t, "POST", "/api/token/viewer", viewer), http.StatusNotFound, "NOT_FOUND")

	j := a.join(t, host.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitLive(t, "default", host.StageArn)

	first := a.token(t, "viewer", viewer)
	if !slices.Equal(first.Capabilities, []string{"SUBSCRIBE"}) || first.StageArn != host.StageArn || first.UserID != "viewer-1" || first.ParticipantID == "" {
		t.Fatalf("viewer token %+v, want a subscribe token for the origin %s", first, host.StageArn)
	}
	second := a.token(t, "viewer", viewer)
	if second.StageArn != first.StageArn || second.ParticipantID != first.ParticipantID {
		t.Errorf("asking again gave %s/%s, want the same seat %s/%s", second.StageArn, second.ParticipantID, first.StageArn, first.ParticipantID)
	}
	// Asking many times at once still keeps one seat.
	same := make([]string, 20)
	var wg sync.WaitGroup
	for i := range same {
		wg.Go(func() {
			r, err := a.send(t.Context(), "POST", "/api/token/viewer", viewer, nil)
			if err == nil && r.Status == http.StatusOK {
				var d struct{ ParticipantID string }
				if json.Unmarshal(r.Env.Data, &d) == nil {
					same[i] = d.ParticipantID
				}
			}
		})
	}
	wg.Wait()
	if slices.ContainsFunc(same, func(p string) bool { return p != first.ParticipantID }) {
		t.Errorf("concurrent requests of one viewer got participants %v, want %s each", same, first.ParticipantID)
	}
	if s := a.stage(t, "default", host.StageArn); s.Seats != 1 {
		t.Errorf("origin has %d seats, want 1 (one viewer asked 22 times)", s.Seats)
	}

	// A named stage: the origin seats; a manual stage never does; an
	// unknown one is not found.
	if v := a.token(t, "viewer", map[string]any{"userId": "viewer-2", "stageArn": host.StageArn}); v.StageArn != host.StageArn {
		t.Errorf("viewer asking for the origin seated on %s", v.StageArn)
	}
	manual := dataOf[struct {
		Stage stageData `json:"stage"`
	}](t, a.expect(t, "POST", "/api/stage", map[string]any{"name": "by-hand"}, http.StatusCreated)).Stage
	wantError(t, a.call(t, "POST", "/api/token/viewer", map[string]any{"userId": "viewer-3", "stageArn": manual.Arn}), http.StatusNotFound, "NOT_FOUND")
	wantError(t, a.call(t, "POST", "/api/token/viewer", map[string]any{"userId": "viewer-3", "stageArn": "arn:aws:ivs:us-east-1:123456789012:stage/nope"}), http.StatusNotFound, "NOT_FOUND")
	a.expect(t, "POST", "/api/viewer/leave", map[string]any{"userId": "viewer-2"}, http.StatusOK)

	vj := a.join(t, first.Token)
	if vj.StageArn != host.StageArn || vj.ParticipantID != first.ParticipantID {
		t.Errorf("viewer joined as %+v", vj)
	}
	for _, s := range a.emuState(t).Stages {
		if s.Arn == host.StageArn && (s.Subscribers != 1 || s.Publishers != 1) {
			t.Errorf("origin in IVS: %d subscribers, %d publishers; want 1 and 1", s.Subscribers, s.Publishers)
		}
	}
}

// TestViewerStorm: 500 viewers at once. No stage ever holds more than its
// capacity (invariant 1), in stagefleet's count or in IVS's; those without a
// seat wait SEAT_WAIT and get a 503 with Retry-After.
func TestViewerStorm(t *testing.T) {
	t.Parallel()
	const capacity, viewers = 50, 500
	// The emulator refuses a subscriber beyond capacity, as IVS would with
	// a stage limited to 50: an overfilled stage fails the joins.
	ivsCapacity := func(c *emulator.Config) { c.StageCapacity = capacity }
	env := func(seatWait time.Duration, maxStages int) map[string]string {
		return map[string]string{
			"STAGE_CAPACITY":          fmt.Sprint(capacity),
			"SEAT_WAIT":               seatWait.String(),
			"MAX_STAGES":              fmt.Sprint(maxStages),
			"RATE_LIMIT_MAX_REQUESTS": "0",
		}
	}

	// With the origin as the only stage allowed, exactly its capacity is
	// seated; the rest are told the broadcast is at its stage limit.
	t.Run("one stage", func(t *testing.T) {
		t.Parallel()
		const seatWait = 300 * time.Millisecond
		a := startApp(t, env(seatWait, 1), ivsCapacity)
		host := a.goLive(t, "default", "host-1")
		seated, refused := storm(t, a, viewers, seatWait)
		if len(seated) != capacity || refused["STAGE_LIMIT_REACHED"] != viewers-capacity {
			t.Fatalf("%d seated and %v refused, want %d seated and %d STAGE_LIMIT_REACHED", len(seated), refused, capacity, viewers-capacity)
		}
		stages := a.stages(t, "default")
		if len(stages) != 1 || stages[0].Arn != host.StageArn || stages[0].Seats != capacity {
			t.Fatalf("stages %+v, want the origin with %d seats", stages, capacity)
		}
		joinAll(t, a, seated, stages)
		for _, s := range a.emuState(t).Stages {
			// The host counts as a subscriber only between joining and
			// publishing, hence the one extra at most.
			if s.Arn == host.StageArn && (s.Subscribers != capacity || s.MaxSubscribers > capacity+1) {
				t.Errorf("origin in IVS: %d subscribers (most ever %d), want %d (at most %d)", s.Subscribers, s.MaxSubscribers, capacity, capacity+1)
			}
		}
	})

	// With room to scale, replica stages are made while viewers wait; each
	// viewer is seated on the origin or on a replica whose host replication
	// is active (invariant 2).
	t.Run("scaling", func(t *testing.T) {
		t.Parallel()
		const seatWait, maxStages = 2 * time.Second, 20
		a := startApp(t, env(seatWait, maxStages), ivsCapacity)
		host := a.goLive(t, "default", "host-1")
		seated, refused := storm(t, a, viewers, seatWait)
		if len(seated) <= capacity {
			t.Errorf("%d seated: no replica stage took viewers within SEAT_WAIT %v", len(seated), seatWait)
		}
		stages := a.stages(t, "default")
		for code := range refused {
			// STAGE_LIMIT_REACHED only once the controller made every stage
			// it may.
			if code != "STAGE_FULL" && (code != "STAGE_LIMIT_REACHED" || len(stages) < maxStages) {
				t.Errorf("refused with %s with %d stages of at most %d", code, len(stages), maxStages)
			}
		}
		total := 0
		for _, s := range stages {
			total += s.Seats
			if s.Seats > s.Capacity || s.Capacity != capacity {
				t.Errorf("stage %s holds %d seats, capacity %d", s.Arn, s.Seats, s.Capacity)
			}
		}
		if total != len(seated) {
			t.Errorf("stages hold %d seats, %d viewers were seated", total, len(seated))
		}
		joinAll(t, a, seated, stages)
		for _, s := range stages {
			if s.Role == "replica" && s.Seats > 0 {
				r := a.call(t, "DELETE", "/api/stage/"+s.Arn, nil)
				wantError(t, r, http.StatusBadRequest, "VALIDATION_ERROR")
				var details struct {
					ViewerCount int `json:"viewerCount"`
				}
				if err := json.Unmarshal(r.Env.Error.Details, &details); err != nil || details.ViewerCount != s.Seats {
					t.Errorf("DELETE of a stage with %d seats: details %s, want viewerCount", s.Seats, r.Env.Error.Details)
				}
				break
			}
		}
		// The controller may still be adding stages; seats stay put.
		stats := dataOf[struct {
			Viewers      int `json:"totalViewers"`
			Stages       int `json:"stageCount"`
			ActiveStages int `json:"activeStages"`
		}](t, a.expect(t, "GET", "/api/stats", nil, http.StatusOK))
		if stats.Viewers != len(seated) || stats.Stages < len(stages) || stats.ActiveStages != stats.Stages {
			t.Errorf("stats %+v, want %d viewers on at least %d stages", stats, len(seated), len(stages))
		}
		st := a.emuState(t)
		for _, s := range st.Stages {
			if s.Subscribers > capacity || s.MaxSubscribers > capacity+1 {
				t.Errorf("stage %s in IVS: %d subscribers (most ever %d), capacity %d", s.Arn, s.Subscribers, s.MaxSubscribers, capacity)
			}
			if s.Arn != host.StageArn && s.Subscribers > 0 && emuReplications(st, host.ParticipantID, s.Arn, "ACTIVE") != 1 {
				t.Errorf("replica stage %s has %d viewers but no active replication of the host", s.Arn, s.Subscribers)
			}
		}
	})
}

// storm sends n viewer token requests at once, distinct users, and returns
// the tokens given and the codes of the refusals, each checked: a 503 with
// Retry-After, no sooner than seatWait.
func storm(t *testing.T, a *testApp, n int, seatWait time.Duration) ([]tokenData, map[string]int) {
	t.Helper()
	a.client.Transport = &http.Transport{MaxIdleConnsPerHost: n}
	results := make([]response, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = a.send(t.Context(), "POST", "/api/token/viewer", map[string]any{"userId": fmt.Sprintf("storm-%03d", i)}, nil)
		})
	}
	close(start)
	wg.Wait()

	var seated []tokenData
	refused := map[string]int{}
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("viewer %d: %v", i, errs[i])
		}
		if err := checkEnvelope(r); err != nil {
			t.Fatalf("viewer %d: %v", i, err)
		}
		switch r.Status {
		case http.StatusOK:
			seated = append(seated, dataOf[tokenData](t, r))
		case http.StatusServiceUnavailable:
			refused[r.Env.Error.Code]++
			retryAfter(t, r)
			if r.Elapsed < seatWait {
				t.Errorf("viewer %d: 503 after %v, before SEAT_WAIT %v", i, r.Elapsed, seatWait)
			}
		default:
			t.Errorf("viewer %d: %s", i, r)
		}
	}
	return seated, refused
}

// joinAll joins every seated viewer's token to IVS, each on the stage it
// was given, which must be one of stages.
func joinAll(t *testing.T, a *testApp, seated []tokenData, stages []stageData) {
	t.Helper()
	known := map[string]bool{}
	for _, s := range stages {
		known[s.Arn] = true
	}
	ids := map[string]bool{}
	for _, v := range seated {
		if !known[v.StageArn] {
			t.Errorf("viewer %s seated on %s, not a stage of the broadcast", v.UserID, v.StageArn)
		}
		ids[v.ParticipantID] = true
		if j := a.join(t, v.Token); j.StageArn != v.StageArn {
			t.Errorf("viewer %s joined %s, its token said %s", v.UserID, j.StageArn, v.StageArn)
		}
	}
	if len(ids) != len(seated) {
		t.Errorf("%d distinct participant ids among %d seated viewers", len(ids), len(seated))
	}
}

// TestSeatLease: a seat lives as long as its heartbeats, and leave and
// rejoin free and take it.
func TestSeatLease(t *testing.T) {
	t.Parallel()
	// A 3 s lease heartbeaten every 300 ms: a loaded machine may stall the
	// heartbeats over a second without the seat lapsing.
	a := startApp(t, map[string]string{"HEARTBEAT_TIMEOUT": "3s"})
	host := a.goLive(t, "default", "host-1")
	origin := host.StageArn
	seats := func() int { t.Helper(); return a.stage(t, "default", origin).Seats }
	listed := func() []string {
		t.Helper()
		l := dataOf[viewerList](t, a.expect(t, "GET", "/api/viewer/list/"+origin, nil, http.StatusOK))
		if l.Count != len(l.Viewers) || l.StageArn != origin {
			t.Errorf("viewer list %+v", l)
		}
		var users []string
		for _, v := range l.Viewers {
			users = append(users, v.UserID)
		}
		slices.Sort(users)
		return users
	}

	start := time.Now()
	a.token(t, "viewer", map[string]any{"userId": "silent"})
	beating := a.token(t, "viewer", map[string]any{"userId": "beating"})
	if got := listed(); !slices.Equal(got, []string{"beating", "silent"}) {
		t.Fatalf("listed %v, want both viewers", got)
	}

	// "beating" heartbeats every 300 ms from its own goroutine; failures are
	// reported once it stops.
	stop := make(chan struct{})
	beats := make(chan response, 64)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(beats)
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				r, err := a.send(context.Background(), "POST", "/api/viewer/heartbeat", map[string]any{"userId": "beating", "participantId": beating.ParticipantID}, nil)
				if err != nil {
					r = response{Status: -1, Body: []byte(err.Error())}
				}
				beats <- r
			}
		}
	})
	stopBeating := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	t.Cleanup(stopBeating)

	eventually(t, 5500*time.Millisecond-time.Since(start), func() (bool, string) {
		got := listed()
		return slices.Equal(got, []string{"beating"}), fmt.Sprintf("listed %v, want the silent viewer's seat gone", got)
	})
	if n := seats(); n != 1 {
		t.Errorf("origin has %d seats, want 1", n)
	}
	wantError(t, a.call(t, "POST", "/api/viewer/heartbeat", map[string]any{"userId": "silent", "participantId": "SILENT1"}), http.StatusNotFound, "NOT_FOUND")

	// Past two leases, the heartbeating viewer still has its seat: only
	// time passing shows that, so wait for it.
	time.Sleep(time.Until(start.Add(6*time.Second + 200*time.Millisecond)))
	stopBeating()
	n := 0
	for r := range beats {
		n++
		if r.Status != http.StatusOK {
			t.Errorf("heartbeat: %s", r)
		}
	}
	if n < 5 {
		t.Errorf("%d heartbeats in over 6s, want about 20", n)
	}
	if got := listed(); !slices.Equal(got, []string{"beating"}) {
		t.Fatalf("listed %v after heartbeats, want [beating]", got)
	}

	type watchTime struct {
		UserID    string `json:"userId"`
		StageArn  string `json:"stageArn"`
		Seconds   int    `json:"watchDurationSeconds"`
		Formatted string `json:"watchDurationFormatted"`
	}
	watched := dataOf[watchTime](t, a.expect(t, "GET", "/api/viewer/duration?userId=beating&stageArn="+origin, nil, http.StatusOK))
	if watched.UserID != "beating" || watched.StageArn != origin || watched.Seconds < 2 || watched.Formatted != fmt.Sprintf("0:00:%02d", watched.Seconds) {
		t.Errorf("duration %+v, want beating watching 2s or more on %s", watched, origin)
	}
	aggregate := dataOf[struct {
		Viewers      []seatData `json:"viewers"`
		TotalSeconds int        `json:"totalSeconds"`
	}](t, a.expect(t, "GET", "/api/viewer/duration", nil, http.StatusOK))
	if len(aggregate.Viewers) != 1 || aggregate.TotalSeconds < 2 {
		t.Errorf("aggregate duration %+v, want one viewer watching 2s or more", aggregate)
	}
	// The previous server's answer for a viewer without a seat: 0 s.
	if none := dataOf[watchTime](t, a.expect(t, "GET", "/api/viewer/duration?userId=silent", nil, http.StatusOK)); none.Seconds != 0 || none.Formatted != "0:00:00" {
		t.Errorf("duration of a viewer without a seat: %+v, want 0", none)
	}

	type leaveData struct {
		UserID     string `json:"userId"`
		StageArn   string `json:"stageArn"`
		ViewerLeft bool   `json:"viewerLeft"`
	}
	left := dataOf[leaveData](t, a.expect(t, "POST", "/api/viewer/leave", map[string]any{"userId": "beating"}, http.StatusOK))
	if left.UserID != "beating" || left.StageArn != origin || !left.ViewerLeft {
		t.Errorf("leave answered %+v", left)
	}
	if n := seats(); n != 0 {
		t.Errorf("origin has %d seats after leave, want 0", n)
	}
	// Leave is idempotent: the viewer is gone either way.
	if again := dataOf[leaveData](t, a.expect(t, "POST", "/api/viewer/leave", map[string]any{"userId": "beating"}, http.StatusOK)); again.ViewerLeft {
		t.Errorf("second leave answered %+v, want viewerLeft false", again)
	}

	again := a.issue(t, "/api/viewer/rejoin", map[string]any{"userId": "silent"})
	if again.StageArn != origin || again.Token == "" {
		t.Errorf("rejoin gave %+v", again)
	}
	a.issue(t, "/api/viewer/rejoin", map[string]any{"userId": "silent"}) // rejoin with a seat keeps one seat
	if got, n := listed(), seats(); !slices.Equal(got, []string{"silent"}) || n != 1 {
		t.Errorf("after rejoin: listed %v, %d seats; want [silent] and 1", got, n)
	}
}

// TestAuth: x-api-key, the media server secret, and the events secret.
func TestAuth(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{
		"API_SECRET_KEY":  "k",
		"INTERNAL_SECRET": "s",
		"EVENTS_SECRET":   "e",
	})

	for _, tc := range []struct {
		name   string
		hdr    http.Header
		status int
	}{
		{"no key", nil, http.StatusUnauthorized},
		{"wrong key", http.Header{"X-Api-Key": {"nope"}}, http.StatusUnauthorized},
		{"empty key", http.Header{"X-Api-Key": {""}}, http.StatusUnauthorized},
		{"right key", http.Header{"X-Api-Key": {"k"}}, http.StatusOK},
	} {
		r := a.callWith(t, "GET", "/api/stage/list", nil, tc.hdr)
		if r.Status != tc.status {
			t.Errorf("%s: got %s, want %d", tc.name, r, tc.status)
		}
		if tc.status == http.StatusUnauthorized {
			wantError(t, r, tc.status, "UNAUTHORIZED")
		}
	}
	a.expect(t, "GET", "/api/health", nil, http.StatusOK)

	a.headers.Set("x-api-key", "k")
	host := a.goLive(t, "default", "host-1") // events flow: the emulator has the events secret
	media := map[string]any{"serverId": "media-1", "stageArn": host.StageArn}
	wantError(t, a.call(t, "POST", "/api/token/mediaserver", media), http.StatusForbidden, "FORBIDDEN")
	wantError(t, a.callWith(t, "POST", "/api/token/mediaserver", media, http.Header{"X-Internal-Secret": {"wrong"}}), http.StatusForbidden, "FORBIDDEN")
	r := a.callWith(t, "POST", "/api/token/mediaserver", media, http.Header{"X-Internal-Secret": {"s"}})
	if r.Status != http.StatusOK {
		t.Fatalf("media server token: %s", r)
	}
	tok := dataOf[tokenData](t, r)
	if !slices.Equal(tok.Capabilities, []string{"PUBLISH", "SUBSCRIBE"}) || tok.StageArn != host.StageArn || tok.ServerID != "media-1" {
		t.Errorf("media server token %+v", tok)
	}
	// The API key alone does not open the media server route.
	a.headers.Del("x-api-key")
	wantError(t, a.callWith(t, "POST", "/api/token/mediaserver", media, http.Header{"X-Internal-Secret": {"s"}}), http.StatusUnauthorized, "UNAUTHORIZED")

	event := map[string]any{
		"id": "ev-1", "source": "aws.ivs", "detail-type": "IVS Stage Update", "time": time.Now().UTC().Format(time.RFC3339),
		"resources": []string{host.StageArn},
		"detail":    map[string]any{"event_name": "Participant Unpublished", "participant_id": host.ParticipantID},
	}
	wantError(t, a.call(t, "POST", "/api/events/ivs", event), http.StatusUnauthorized, "UNAUTHORIZED")
	wantError(t, a.callWith(t, "POST", "/api/events/ivs", event, http.Header{"X-Stagefleet-Events-Secret": {"x"}}), http.StatusUnauthorized, "UNAUTHORIZED")
	// Refused events change nothing: the host is still live.
	a.headers.Set("x-api-key", "k")
	if s := a.stage(t, "default", host.StageArn); !s.Seatable {
		t.Errorf("an unauthenticated Unpublished event took the origin off: %+v", s)
	}
}

// TestRateLimit: RATE_LIMIT_MAX_REQUESTS per client per window.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{"RATE_LIMIT_MAX_REQUESTS": "5", "RATE_LIMIT_WINDOW_MS": "60000"})
	host := a.token(t, "publisher", map[string]any{"userId": "host-1"})
	for i := range 4 {
		if r := a.call(t, "GET", "/api/stage/list", nil); r.Status != http.StatusOK {
			t.Fatalf("request %d: %s", i+2, r)
		}
	}
	for _, path := range []string{"/api/stage/list", "/api/health", "/api/token/viewer"} {
		r := a.call(t, "GET", path, nil)
		wantError(t, r, http.StatusTooManyRequests, "RATE_LIMITED")
		// One request comes back every 12 s (5 per minute).
		if s := retryAfter(t, r); s > 60 {
			t.Errorf("Retry-After %d s, more than the window", s)
		}
	}

	// IVS events are not counted: the embedded emulator posts them from
	// loopback, the address this client has used up.
	ignored := map[string]any{"id": "ev-1", "source": "aws.ivs", "detail-type": "Something Else"}
	a.expect(t, "POST", "/api/events/ivs", ignored, http.StatusOK)
	j := a.join(t, host.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	eventually(t, 5*time.Second, func() (bool, string) {
		ev := a.emuState(t).Events
		// Joined and Published; a refused event is retried for about 1.5 s
		// before it counts as failed.
		return ev.Delivered+ev.Failed >= 2, fmt.Sprintf("events %+v", ev)
	})
	if ev := a.emuState(t).Events; ev.Failed != 0 {
		t.Errorf("events %+v: the emulator's events were refused while this client was rate limited", ev)
	}
}

// TestBadInput sends every route that reads a body or a path parameter what
// it cannot use: each answer is a 4xx error envelope that says what to fix.
func TestBadInput(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{"MAX_BODY_BYTES": "2048", "INTERNAL_SECRET": "s"})
	a.headers.Set("x-internal-secret", "s")
	const arn = "arn:aws:ivs:us-east-1:123456789012:stage/abc"
	replMissing := []string{"sourceStageArn", "destinationStageArn", "participantId"}
	replBad := []string{
		`{"sourceStageArn":5,"destinationStageArn":"` + arn + `","participantId":"p"}`,
		`{"sourceStageArn":"` + arn + `","destinationStageArn":"` + arn + `x:","participantId":"p"}`,
		`{"sourceStageArn":"` + arn + `","destinationStageArn":"` + arn + `2","participantId":"has space"}`,
		`{"sourceStageArn":"` + arn + `","destinationStageArn":"` + arn + `2","participantId":["p"]}`,
	}
	viewerBad := []string{`{"userId":5}`, `{"userId":"u","broadcastId":true}`, `{"userId":"u","stageArn":7}`,
		`{"userId":"u","stageArn":"not-an-arn"}`, `{"userId":"u","broadcastId":"bad id!"}`, `{"userId":{"a":1}}`,
		`{"userId":"` + strings.Repeat("u", 129) + `"}`}
	routes := []struct {
		method, path string
		missing      []string
		// bad are bodies with a field of the wrong type or value.
		bad []string
	}{
		{"POST", "/api/token/publisher", []string{"userId"}, []string{`{"userId":5}`, `{"userId":null,"broadcastId":1}`, `{"userId":"u","broadcastId":"bad id!"}`, `{"userId":["u"]}`}},
		{"POST", "/api/token/viewer", []string{"userId"}, viewerBad},
		{"POST", "/api/token/mediaserver", []string{"serverId", "stageArn"}, []string{`{"serverId":1,"stageArn":"` + arn + `"}`, `{"serverId":"m","stageArn":"nope"}`, `{"serverId":"m","stageArn":true}`}},
		{"POST", "/api/stage", []string{"name"}, []string{`{"name":5}`, `{"name":"has space"}`, `{"name":"x","tags":[1]}`, `{"name":"x","tags":{"a":1}}`, `{"name":"x","tags":{"stagefleet:role":"origin"}}`, `{"name":"x","broadcastId":"bad id!"}`}},
		{"PUT", "/api/stage/" + arn, []string{"name"}, []string{`{"name":5}`, `{"name":"has space"}`, `{"name":[]}`}},
		{"POST", "/api/stage/replication/start", replMissing, replBad},
		{"DELETE", "/api/stage/replication/stop", replMissing, replBad},
		{"POST", "/api/viewer/heartbeat", []string{"userId"}, viewerBad},
		{"POST", "/api/viewer/leave", []string{"userId"}, viewerBad},
		{"POST", "/api/viewer/rejoin", []string{"userId"}, viewerBad},
		{"POST", "/api/events/ivs", []string{"id", "source", "detail-type"}, []string{
			`{"id":1,"detail-type":"IVS Stage Update"}`,
			`{"id":"e","detail-type":"IVS Stage Update","source":"aws.ivs","resources":"` + arn + `"}`,
			`{"id":"e","detail-type":"IVS Stage Update","source":"aws.ivs","resources":["` + arn + `"],"detail":"x"}`,
			`{"id":"e","detail-type":"IVS Stage Update","source":"aws.ivs","resources":["nope"],"detail":{"event_name":"Participant Published","participant_id":"p","event_time":"2024-01-01T00:00:00Z"}}`,
			`{"id":"e","detail-type":"IVS Stage Update","source":"aws.ivs","resources":["` + arn + `"],"detail":{"event_name":"Participant Published","participant_id":"p","event_time":"yesterday"}}`,
			`{"id":"e","detail-type":"IVS Stage Update","source":"aws.ivs","resources":[],"detail":{"event_name":"Participant Published","participant_id":"p"}}`,
		}},
	}
	oversize := `{"userId":"` + strings.Repeat("x", 10<<10) + `"}`
	for _, rt := range routes {
		t.Run(rt.method+" "+rt.path, func(t *testing.T) {
			for _, body := range []any{nil, "", "{}", "null", "  \n"} {
				r := a.call(t, rt.method, rt.path, body)
				wantError(t, r, http.StatusBadRequest, "VALIDATION_ERROR")
				var details struct {
					MissingFields []string `json:"missingFields"`
				}
				if err := json.Unmarshal(r.Env.Error.Details, &details); err != nil || !slices.Equal(details.MissingFields, rt.missing) {
					t.Errorf("body %q: details %s, want missingFields %q", body, r.Env.Error.Details, rt.missing)
				}
				for _, f := range rt.missing {
					if !strings.Contains(r.Env.Error.Message, f) {
						t.Errorf("body %q: message %q does not name %s", body, r.Env.Error.Message, f)
					}
				}
			}
			notJSON := []string{"not json", "[]", `[{"userId":"u"}]`, `"u"`, "42", "true", "{", `{"userId":"u"} {}`, `{"userId":"u",}`, "\xff\xfe"}
			for _, body := range append(notJSON, rt.bad...) {
				wantError(t, a.call(t, rt.method, rt.path, body), http.StatusBadRequest, "VALIDATION_ERROR")
			}
			wantError(t, a.call(t, rt.method, rt.path, oversize), http.StatusRequestEntityTooLarge, "VALIDATION_ERROR")
		})
	}

	// Path parameters that are no stage ARN.
	badArns := []string{
		"",
		"not-an-arn",
		"arn:aws:ivs:us-east-1:123456789012:channel/abc",
		"arn:aws:ivs:us-east-1:123456789012:stage/",
		"arn%3Aaws%3Aivs%3Aus-east-1%3A123456789012%3Astage%2F",
		"arn:aws:ivs:us-east-1:123456789012:stage/abc/def",
		"arn:aws:ivs:us-east-1:123456789012:stage/ab%20c",
		"arn:aws:ivs:us-east-1:123456789012:stage/ab%25zz",
		"arn:aws:ivs:us-east-1:123456789012:stage/abc%00",
	}
	for _, rt := range []struct{ method, prefix string }{
		{"GET", "/api/stage/"},
		{"PUT", "/api/stage/"},
		{"DELETE", "/api/stage/"},
		{"GET", "/api/stage/replication/status/"},
		{"GET", "/api/viewer/list/"},
	} {
		for _, bad := range badArns {
			r := a.call(t, rt.method, rt.prefix+bad, map[string]any{"name": "ok"})
			if r.Status < 400 || r.Status >= 500 {
				t.Errorf("%s %s%s: got %s, want a 4xx", rt.method, rt.prefix, bad, r)
			}
		}
	}

	// A route asked with the wrong method, and no route at all.
	for _, rt := range []struct{ method, path string }{
		{"GET", "/api/token/viewer"},
		{"PATCH", "/api/stage/" + arn},
		{"GET", "/api/nope"},
		{"POST", "/api/health"},
	} {
		if r := a.call(t, rt.method, rt.path, "{}"); r.Status < 400 || r.Status >= 500 {
			t.Errorf("%s %s: got %s, want a 4xx", rt.method, rt.path, r)
		}
	}
}

// TestEncodedStageArn: stage ARNs in paths are accepted raw and
// percent-encoded, with the same answer.
func TestEncodedStageArn(t *testing.T) {
	t.Parallel()
	a := startApp(t, nil)
	host := a.goLive(t, "default", "host-1")
	a.token(t, "viewer", map[string]any{"userId": "viewer-1"})

	encodings := []struct {
		name string
		enc  func(string) string
	}{
		{"raw", func(s string) string { return s }},
		{"encoded", func(s string) string {
			return strings.NewReplacer(":", "%3A", "/", "%2F").Replace(s)
		}},
		{"lower-case encoded", func(s string) string {
			return strings.NewReplacer(":", "%3a", "/", "%2f").Replace(s)
		}},
		{"slash only", func(s string) string { return strings.ReplaceAll(s, "/", "%2F") }},
		{"twice encoded", func(s string) string {
			return strings.NewReplacer(":", "%253A", "/", "%252F").Replace(s)
		}},
	}
	for _, arn := range []string{host.StageArn, "arn:aws:ivs:us-east-1:123456789012:stage/abc"} {
		for _, prefix := range []string{"/api/stage/", "/api/viewer/list/", "/api/stage/replication/status/"} {
			var want response
			for i, e := range encodings {
				r := a.call(t, "GET", prefix+e.enc(arn), nil)
				if r.Status >= 500 || r.Status == http.StatusBadRequest {
					t.Errorf("GET %s (%s): %s", prefix+arn, e.name, r)
					continue
				}
				if i == 0 {
					want = r
					continue
				}
				if r.Status != want.Status || !reflect.DeepEqual(stable(t, r), stable(t, want)) {
					t.Errorf("GET %s: %s answered %s, raw answered %s", prefix+arn, e.name, r, want)
				}
			}
			if arn == host.StageArn && want.Status != http.StatusOK {
				t.Errorf("GET %s%s: %s", prefix, arn, want)
			}
		}
	}
}

// stable is an answer without what changes from one request to the
// next (the timestamp, and watch seconds that tick on).
func stable(t *testing.T, r response) any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatal(err)
	}
	delete(v, "timestamp")
	var drop func(any)
	drop = func(x any) {
		switch x := x.(type) {
		case map[string]any:
			delete(x, "watchSeconds")
			for _, y := range x {
				drop(y)
			}
		case []any:
			for _, y := range x {
				drop(y)
			}
		}
	}
	drop(v)
	return v
}

// TestBroadcasts: each broadcast has its own origin and audience.
func TestBroadcasts(t *testing.T) {
	t.Parallel()
	a := startApp(t, nil)
	def := a.goLive(t, "default", "host-1")

	show2 := a.token(t, "publisher", map[string]any{"userId": "host-2", "broadcastId": "show2"})
	if show2.StageArn == def.StageArn || !arnPattern.MatchString(show2.StageArn) || show2.BroadcastID != "show2" {
		t.Fatalf("show2's host token %+v, want its own origin (default's is %s)", show2, def.StageArn)
	}
	if s := a.stages(t, "show2"); len(s) != 1 || s[0].Arn != show2.StageArn || s[0].Role != "origin" {
		t.Errorf("show2's stages %+v", s)
	}
	// default is live, show2 is not.
	wantError(t, a.call(t, "POST", "/api/token/viewer", map[string]any{"userId": "v", "broadcastId": "show2"}), http.StatusNotFound, "NOT_FOUND")

	j := a.join(t, show2.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitLive(t, "show2", show2.StageArn)
	// The same user watches both shows, one seat in each.
	if v := a.token(t, "viewer", map[string]any{"userId": "v", "broadcastId": "show2"}); v.StageArn != show2.StageArn {
		t.Errorf("show2 viewer seated on %s, want %s", v.StageArn, show2.StageArn)
	}
	if v := a.token(t, "viewer", map[string]any{"userId": "v"}); v.StageArn != def.StageArn {
		t.Errorf("default viewer seated on %s, want %s", v.StageArn, def.StageArn)
	}

	// Hosts asking at once for a new broadcast share one origin stage.
	const hosts = 10
	arns := make([]string, hosts)
	var wg sync.WaitGroup
	for i := range hosts {
		wg.Go(func() {
			r, err := a.send(t.Context(), "POST", "/api/token/publisher", map[string]any{"userId": fmt.Sprint("h", i), "broadcastId": "show3"}, nil)
			if err == nil && r.Status == http.StatusOK {
				var d struct{ StageArn string }
				if json.Unmarshal(r.Env.Data, &d) == nil {
					arns[i] = d.StageArn
				}
			}
		})
	}
	wg.Wait()
	if arns[0] == "" || slices.ContainsFunc(arns, func(s string) bool { return s != arns[0] }) {
		t.Errorf("concurrent host tokens for a new broadcast got origins %v, want one", arns)
	}
	if s := a.stages(t, "show3"); len(s) != 1 || s[0].Arn != arns[0] {
		t.Errorf("show3's stages %+v, want its one origin", s)
	}

	a.checkNoLeaks(t, "default", "show2", "show3")

	for _, r := range []response{
		a.call(t, "POST", "/api/token/publisher", map[string]any{"userId": "h", "broadcastId": "bad id!"}),
		a.call(t, "POST", "/api/token/viewer", map[string]any{"userId": "v", "broadcastId": "bad id!"}),
		a.call(t, "GET", "/api/stage/list?broadcastId=bad%20id!", nil),
		a.call(t, "GET", "/api/stage/master/info?broadcastId=bad%20id!", nil),
	} {
		wantError(t, r, http.StatusBadRequest, "VALIDATION_ERROR")
		if !strings.Contains(r.Env.Error.Message, "broadcastId") {
			t.Errorf("message %q does not name broadcastId", r.Env.Error.Message)
		}
	}
}

// TestGracefulShutdown: a request in flight when Run's context ends is
// answered before Run returns.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	const seatWait = 3 * time.Second
	// One seat and no room to scale: a second viewer waits out SEAT_WAIT.
	a := startApp(t, map[string]string{"STAGE_CAPACITY": "1", "SCALE_UP_THRESHOLD": "1", "MAX_STAGES": "1", "SEAT_WAIT": seatWait.String()})
	a.goLive(t, "default", "host-1")
	a.token(t, "viewer", map[string]any{"userId": "seated"})

	wrote := make(chan time.Time, 1)
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) {
			select {
			case wrote <- time.Now():
			default: // only the first write counts
			}
		},
	})
	type result struct {
		r   response
		err error
	}
	res := make(chan result, 1)
	go func() {
		r, err := a.send(ctx, "POST", "/api/token/viewer", map[string]any{"userId": "waiting"}, nil)
		res <- result{r, err}
	}()
	wroteAt := <-wrote
	// Once /metrics counts the viewer waiting, the server has read the
	// request and is in its handler: a shutdown then must wait for it
	// (before, it could close the connection as idle).
	eventually(t, seatWait/2, func() (bool, string) {
		n := a.scrape(t).value("stagefleet_waiting_viewers", map[string]string{"broadcast": "default"})
		return n == 1, fmt.Sprintf("%v viewers waiting, want 1", n)
	})
	if err := a.stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if ran := time.Since(wroteAt); ran < seatWait {
		t.Errorf("Run returned %v after the request was sent, before its SEAT_WAIT %v ended", ran, seatWait)
	}
	got := <-res
	if got.err != nil {
		t.Fatalf("request in flight: %v, want its answer", got.err)
	}
	if err := checkEnvelope(got.r); err != nil {
		t.Error(err)
	}
	wantError(t, got.r, http.StatusServiceUnavailable, "STAGE_LIMIT_REACHED")
	if _, err := a.send(t.Context(), "GET", "/api/health", nil, nil); err == nil {
		t.Error("the API still answers after Run returned")
	}
}
