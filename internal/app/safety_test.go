package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/stagefleet/stagefleet/internal/emulator"
	"github.com/stagefleet/stagefleet/internal/ivs"
	"github.com/stagefleet/stagefleet/internal/token"
)

// The tests here replay a hostile client's probe against the whole
// service: each finding is shown harmless with the real API, fleet, store
// and the embedded emulator reached through the AWS SDK.

// strangerArn is a well-formed stage ARN that no stagefleet created.
const strangerArn = "arn:aws:ivs:us-east-1:123456789012:stage/NotOurs00001"

// ivsEvent is an EventBridge IVS Stage Update as the webhook takes it.
func ivsEvent(id, stageArn, name, participantID string, at time.Time) map[string]any {
	return map[string]any{
		"id": id, "source": "aws.ivs", "detail-type": "IVS Stage Update",
		"time":      time.Now().UTC().Format(time.RFC3339),
		"resources": []string{stageArn},
		"detail": map[string]any{
			"event_name": name, "participant_id": participantID,
			"event_time": at.UTC().Format(time.RFC3339Nano),
		},
	}
}

// postEvent posts an event with the app's headers and requires a 200,
// returning the fleet's result.
func (a *testApp) postEvent(t *testing.T, ev map[string]any) string {
	t.Helper()
	r := a.expect(t, "POST", "/api/events/ivs", ev, http.StatusOK)
	return dataOf[struct {
		Result string `json:"result"`
	}](t, r).Result
}

// sdk is an IVS client on the emulator at url, as an operator's script or
// another tool in the same account would use.
func sdk(url string) *ivs.Client {
	return ivs.New(ivs.Options{
		Config:   aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("operator", "emulator", "")},
		Endpoint: url,
	})
}

// healthData is what GET /api/health says.
type healthData struct {
	Status     string `json:"status"`
	Controller struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	} `json:"controller"`
	Checks map[string]struct {
		Status  string `json:"status"`
		Message string `json:"message"`
	} `json:"checks"`
}

// health reads GET /api/health. Not through call: a 503 health answer is
// still a success envelope.
func (a *testApp) health(t *testing.T) (int, healthData) {
	t.Helper()
	r, err := a.send(t.Context(), "GET", "/api/health", nil, nil)
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	var h healthData
	if err := json.Unmarshal(r.Env.Data, &h); err != nil {
		t.Fatalf("health: %v: %s", err, r)
	}
	return r.Status, h
}

// TestForgedEvents: the events webhook takes only the events secret's
// holder. By default (no EVENTS_SECRET) the secret is made at start and
// known only to the embedded emulator, so a forged "host left" changes
// nothing; and an event about a stage that is not stagefleet's is never
// remembered.
func TestForgedEvents(t *testing.T) {
	t.Parallel()
	t.Run("without the secret", func(t *testing.T) {
		t.Parallel()
		a := startApp(t, map[string]string{"EVENTS_SECRET": ""})
		host := a.goLive(t, "default", "host-1")
		// No header, the tests' usual secret (not this app's), an empty one.
		for _, hdr := range []http.Header{{}, {"X-Stagefleet-Events-Secret": {testEventsSecret}}, {"X-Stagefleet-Events-Secret": {""}}} {
			a.headers = hdr
			ev := ivsEvent("forged", host.StageArn, "Participant Left", host.ParticipantID, time.Now())
			wantError(t, a.call(t, "POST", "/api/events/ivs", ev), http.StatusUnauthorized, "UNAUTHORIZED")
		}
		a.headers = http.Header{}
		for i := range 20 {
			ev := ivsEvent(fmt.Sprint("forged-left-", i), host.StageArn, "Participant Left", host.ParticipantID, time.Now())
			wantError(t, a.call(t, "POST", "/api/events/ivs", ev), http.StatusUnauthorized, "UNAUTHORIZED")
		}
		for i := range 20 {
			a.token(t, "viewer", map[string]any{"userId": fmt.Sprint("viewer-", i)})
		}
	})
	t.Run("unknown stage", func(t *testing.T) {
		t.Parallel()
		a := startApp(t, nil)
		a.goLive(t, "default", "host-1")
		ev := ivsEvent("ev-stranger", strangerArn, "Participant Published", "MADEUP1", time.Now())
		for i := range 2 {
			if got := a.postEvent(t, ev); got != "ignored" {
				t.Fatalf("event about a stage not stagefleet's, sent %d times: %q; want ignored every time (never remembered as a duplicate)", i+1, got)
			}
		}
	})
}

// TestFutureEvents: an event dated in 2099 cannot take the broadcast off
// the air for good, nor make every later event stale.
func TestFutureEvents(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{"RECONCILE_INTERVAL": "200ms"})
	host := a.goLive(t, "default", "host-1")
	future := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	// Applied, as if received now: the secret's holder may send it, but
	// its date counts for nothing.
	if got := a.postEvent(t, ivsEvent("ev-2099", host.StageArn, "Participant Unpublished", host.ParticipantID, future)); got != "applied" {
		t.Fatalf("Unpublished dated 2099: %q; want applied (with its time clamped)", got)
	}
	// Taken as an Unpublished received now (IVS cannot show whether a host
	// that stays connected still publishes: its "published" means "ever
	// published"). What matters is that it is not for good: the host's
	// next real event applies, it is not stale behind 2099.
	j := joined{StageArn: host.StageArn, ParticipantID: host.ParticipantID}
	if code, body := a.emuPost(t, "/_emulator/participants/unpublish", map[string]string{"stageArn": j.StageArn, "participantId": j.ParticipantID}); code != http.StatusOK {
		t.Fatalf("unpublish: %d %s", code, body)
	}
	a.publish(t, j.StageArn, j.ParticipantID)
	eventually(t, 3*time.Second, func() (bool, string) {
		r := a.call(t, "POST", "/api/token/viewer", map[string]any{"userId": "viewer-1"})
		return r.Status == http.StatusOK, "the broadcast stayed off the air after an event dated 2099 and a real republish: " + r.String()
	})
	// A 2099 Published is clamped too: the events after it are not stale.
	if got := a.postEvent(t, ivsEvent("ev-2099-published", host.StageArn, "Participant Published", host.ParticipantID, future)); got != "applied" {
		t.Fatalf("Published dated 2099: %q; want applied (with its time clamped)", got)
	}
	if got := a.postEvent(t, ivsEvent("ev-now", host.StageArn, "Participant Published", host.ParticipantID, time.Now())); got != "applied" {
		t.Fatalf("an event dated now, after one dated 2099: %q; want applied, not stale", got)
	}
}

// TestOversizedEvents: an event's body and id are bounded, and events
// about stages that are not stagefleet's cost no memory.
func TestOversizedEvents(t *testing.T) {
	t.Parallel()
	a := startApp(t, nil)
	host := a.goLive(t, "default", "host-1")
	for _, tc := range []struct {
		name   string
		idLen  int
		status []int
	}{
		{"60 KB id, body over 16 KiB", 60 << 10, []int{http.StatusRequestEntityTooLarge, http.StatusBadRequest}},
		{"300-byte id", 300, []int{http.StatusBadRequest}},
	} {
		ev := ivsEvent(strings.Repeat("x", tc.idLen), host.StageArn, "Participant Left", host.ParticipantID, time.Now())
		r := a.call(t, "POST", "/api/events/ivs", ev)
		if !slices.Contains(tc.status, r.Status) || r.Env.Error == nil || r.Env.Error.Code != "VALIDATION_ERROR" {
			t.Errorf("%s: got %.200s; want VALIDATION_ERROR with status in %v", tc.name, r, tc.status)
		}
	}
	if s := a.stage(t, "default", host.StageArn); !s.Seatable {
		t.Errorf("a refused Left event took the host off: %+v", s)
	}

	// A flood of distinct ids: none is remembered, so sending each again
	// answers ignored, not duplicate.
	const n = 1000
	results := make([]string, 2*n)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				ev := ivsEvent(fmt.Sprint("flood-", i%n), strangerArn, "Participant Published", "MADEUP1", time.Now())
				r, err := a.send(t.Context(), "POST", "/api/events/ivs", ev, nil)
				if err != nil {
					results[i] = err.Error()
					continue
				}
				var d struct {
					Result string `json:"result"`
				}
				_ = json.Unmarshal(r.Env.Data, &d)
				results[i] = fmt.Sprintf("%d %s", r.Status, d.Result)
			}
		})
	}
	// Every id once, then every id again.
	for i := range 2 * n {
		work <- i
	}
	close(work)
	wg.Wait()
	for i, got := range results {
		if got != "200 ignored" {
			t.Fatalf("event %d (id flood-%d, sent %d times): %s; want 200 ignored", i, i%n, i/n+1, got)
		}
	}
}

// TestOriginDeletedBehindBack: an origin deleted outside stagefleet (an
// operator's script, the console) is replaced; publisher-info and health
// say so until a host publishes on the new one.
func TestOriginDeletedBehindBack(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{"RECONCILE_INTERVAL": "200ms"})
	host := a.goLive(t, "default", "host-1")
	if err := sdk(a.emu).DeleteStage(t.Context(), host.StageArn); err != nil {
		t.Fatalf("DeleteStage: %v", err)
	}

	type publisherInfo struct {
		Message        string `json:"message"`
		OriginReplaced *struct {
			PreviousStageArn string `json:"previousStageArn"`
			StageArn         string `json:"stageArn"`
		} `json:"originReplaced"`
	}
	var info publisherInfo
	eventually(t, 3*time.Second, func() (bool, string) {
		r := a.expect(t, "GET", "/api/stage/replication/publisher-info", nil, http.StatusOK)
		info = dataOf[publisherInfo](t, r)
		return info.OriginReplaced != nil, "publisher-info does not tell the origin was replaced: " + r.String()
	})
	newOrigin := info.OriginReplaced.StageArn
	if info.OriginReplaced.PreviousStageArn != host.StageArn || newOrigin == host.StageArn || newOrigin == "" || info.Message == "" {
		t.Errorf("publisher-info: %+v, %+v; want previousStageArn %s, a new stageArn and a message", info, *info.OriginReplaced, host.StageArn)
	}
	status, h := a.health(t)
	if h.Status == "healthy" || !strings.Contains(h.Controller.Error, "broadcast default") {
		t.Errorf("health while hosts hold tokens for a deleted origin: %+v; want the controller's error naming broadcast default", h)
	}
	// One broadcast's trouble is degraded, not unhealthy: a 503 from every
	// instance would make a load balancer take them all out, the one the
	// host needs for a new token included.
	if status != http.StatusOK || h.Status != "degraded" {
		t.Errorf("health while hosts hold tokens for a deleted origin answers %d (%s); want 200 degraded", status, h.Status)
	}

	host2 := a.token(t, "publisher", map[string]any{"userId": "host-1"})
	if host2.StageArn != newOrigin {
		t.Fatalf("a new publisher token names %s; want the new origin %s", host2.StageArn, newOrigin)
	}
	j := a.join(t, host2.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitLive(t, "default", newOrigin)
	eventually(t, 3*time.Second, func() (bool, string) {
		status, h := a.health(t)
		return status == http.StatusOK && h.Status == "healthy" && h.Controller.Error == "", fmt.Sprintf("health after the host published on the new origin: %d %+v", status, h)
	})
	if v := a.token(t, "viewer", map[string]any{"userId": "viewer-1"}); v.StageArn != newOrigin {
		t.Errorf("viewer seated on %s; want the new origin %s", v.StageArn, newOrigin)
	}
}

// TestEmulatorReset: IVS losing everything at once, the signing key with
// the stages: the key is imported again (it is checked every 5 s) and the
// origin replaced, so that a new host token joins again.
func TestEmulatorReset(t *testing.T) {
	t.Parallel()
	// Health is polled every 20 ms for up to 15 s: more than the default
	// rate limit allows one client.
	a := startApp(t, map[string]string{"RECONCILE_INTERVAL": "200ms", "RATE_LIMIT_MAX_REQUESTS": "0"})
	a.goLive(t, "default", "host-1")
	keyCheck := func() string {
		_, h := a.health(t)
		return h.Checks["signingKey"].Message
	}
	var before string
	eventually(t, 10*time.Second, func() (bool, string) {
		before = keyCheck()
		return strings.Contains(before, "public-key/"), "no signing key check in health: " + before
	})
	if status, raw := a.emuPost(t, "/_emulator/reset", map[string]any{}); status != http.StatusOK {
		t.Fatalf("reset: %d %s", status, raw)
	}

	eventually(t, 15*time.Second, func() (bool, string) {
		now := keyCheck()
		return now != before && strings.Contains(now, "public-key/"), "the signing key was not imported again: " + now
	})
	var host tokenData
	eventually(t, 5*time.Second, func() (bool, string) {
		host = a.token(t, "publisher", map[string]any{"userId": "host-1"})
		status, raw := a.emuPost(t, "/_emulator/participants/join", map[string]string{"token": host.Token})
		return status == http.StatusOK, fmt.Sprintf("a new host token cannot join after the reset: %d %s", status, raw)
	})
	a.publish(t, host.StageArn, host.ParticipantID)
	eventually(t, 5*time.Second, func() (bool, string) {
		status, h := a.health(t)
		return status == http.StatusOK && h.Status == "healthy", fmt.Sprintf("health after the reset: %d %+v", status, h)
	})
}

// TestQuota: the account's stage quota is shared by every broadcast, so
// that one client cannot exhaust it: MAX_BROADCASTS, STAGE_QUOTA, and
// broadcasts that end (by DELETE, or idle).
func TestQuota(t *testing.T) {
	t.Parallel()
	t.Run("max broadcasts", func(t *testing.T) {
		t.Parallel()
		a := startApp(t, map[string]string{"MAX_BROADCASTS": "2"})
		first := a.token(t, "publisher", map[string]any{"userId": "h", "broadcastId": "first"})
		a.token(t, "publisher", map[string]any{"userId": "h", "broadcastId": "second"})
		third := map[string]any{"userId": "h", "broadcastId": "third"}
		r := a.call(t, "POST", "/api/token/publisher", third)
		wantError(t, r, http.StatusServiceUnavailable, "STAGE_LIMIT_REACHED")
		if !strings.Contains(r.Env.Error.Message, "MAX_BROADCASTS") {
			t.Errorf("refusal %q does not name MAX_BROADCASTS", r.Env.Error.Message)
		}

		end := dataOf[struct {
			Ended         bool `json:"ended"`
			StagesDeleted int  `json:"stagesDeleted"`
		}](t, a.expect(t, "DELETE", "/api/broadcasts/first", nil, http.StatusOK))
		if !end.Ended || end.StagesDeleted < 1 {
			t.Errorf("ending broadcast first: %+v; want ended with its origin deleted", end)
		}
		for _, s := range a.emuState(t).Stages {
			if s.Tags["stagefleet:broadcast"] == "first" || s.Arn == first.StageArn {
				t.Errorf("stage %s of the ended broadcast is still in IVS", s.Arn)
			}
		}
		a.token(t, "publisher", third)
	})

	t.Run("stage quota", func(t *testing.T) {
		t.Parallel()
		const quota = 3
		a := startApp(t, map[string]string{
			"STAGE_QUOTA": fmt.Sprint(quota), "MAX_STAGES": "50", "STAGE_CAPACITY": "1", "SCALE_UP_THRESHOLD": "1",
			"SEAT_WAIT": "3s", "RECONCILE_INTERVAL": "200ms",
		})
		a.goLive(t, "default", "host-1")

		// Count the emulator's stages all along the storm and a few
		// reconciles after it.
		ctx, stop := context.WithCancel(t.Context())
		var most int
		var sampleErr error
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for ctx.Err() == nil {
				n, err := a.emuStageCount(ctx)
				if err != nil {
					if ctx.Err() == nil {
						sampleErr = err
					}
					return
				}
				most = max(most, n)
				time.Sleep(10 * time.Millisecond)
			}
		}()

		const viewers = 10
		answers := make([]response, viewers)
		var wg sync.WaitGroup
		for i := range viewers {
			wg.Go(func() {
				r, err := a.send(t.Context(), "POST", "/api/token/viewer", map[string]any{"userId": fmt.Sprint("viewer-", i)}, nil)
				if err != nil {
					r = response{Body: []byte(err.Error())}
				}
				answers[i] = r
			})
		}
		wg.Wait()
		time.Sleep(time.Second)
		stop()
		<-sampled
		if sampleErr != nil {
			t.Fatal(sampleErr)
		}

		seated := 0
		for i, r := range answers {
			switch {
			case r.Status == http.StatusOK:
				seated++
			case r.Env.Error == nil || r.Env.Error.Code != "STAGE_LIMIT_REACHED" || !strings.Contains(r.Env.Error.Message, "STAGE_QUOTA"):
				t.Errorf("viewer-%d: %s; want 200, or 503 STAGE_LIMIT_REACHED naming STAGE_QUOTA", i, r)
			}
		}
		if most > quota || seated > quota || seated == 0 {
			t.Errorf("at most %d stages in IVS, %d of %d viewers seated on capacity-1 stages; want at most STAGE_QUOTA=%d of each, and someone seated", most, seated, viewers, quota)
		}
	})

	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		a := startApp(t, map[string]string{"BROADCAST_IDLE_TIMEOUT": "1s", "RECONCILE_INTERVAL": "200ms"})
		idle := a.token(t, "publisher", map[string]any{"userId": "h", "broadcastId": "idle"})
		live := a.goLive(t, "live", "h")
		started := time.Now()
		eventually(t, 6*time.Second, func() (bool, string) {
			return !a.emuHas(t, idle.StageArn), fmt.Sprintf("the origin of a broadcast nobody used is still in IVS %v after its host token", time.Since(started))
		})
		if s := a.stages(t, "idle"); len(s) != 0 {
			t.Errorf("the idle broadcast ended but its stages are listed: %+v", s)
		}
		// Its hosts publish: one more timeout later, it is on the air.
		time.Sleep(time.Second)
		if !a.emuHas(t, live.StageArn) {
			t.Fatal("the live broadcast's origin was deleted as idle")
		}
		a.token(t, "viewer", map[string]any{"userId": "v", "broadcastId": "live"})
	})
}

// emuStageCount counts the emulator's stages; it does not touch t, so a
// sampling goroutine may call it.
func (a *testApp) emuStageCount(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", a.emu+"/_emulator/state", nil)
	if err != nil {
		return 0, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var s emuState
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return 0, err
	}
	return len(s.Stages), nil
}

// emuHas says whether the emulator has the stage.
func (a *testApp) emuHas(t *testing.T, arn string) bool {
	t.Helper()
	return slices.ContainsFunc(a.emuState(t).Stages, func(s emulator.StageState) bool { return s.Arn == arn })
}

// listedSeat is a seat as GET /api/viewer/list shows it.
type listedSeat struct {
	UserID        string `json:"userId"`
	StageArn      string `json:"stageArn"`
	ParticipantID string `json:"participantId"`
	ExpiresAt     string `json:"expiresAt"`
}

func (a *testApp) seatsOn(t *testing.T, arn string) []listedSeat {
	t.Helper()
	r := a.expect(t, "GET", "/api/viewer/list/"+arn, nil, http.StatusOK)
	return dataOf[struct {
		Viewers []listedSeat `json:"viewers"`
	}](t, r).Viewers
}

// TestSeatMinting: a heartbeat renews only its own seat, and makes one
// only with the seat key stagefleet gave with the viewer token: knowing a
// participant id, or guessing one, gets no seat.
func TestSeatMinting(t *testing.T) {
	t.Parallel()
	a := startApp(t, nil)
	host := a.goLive(t, "default", "host-1")
	v := a.token(t, "viewer", map[string]any{"userId": "viewer-1"})
	own := map[string]any{"userId": "viewer-1", "stageArn": v.StageArn, "participantId": v.ParticipantID}
	with := func(changes map[string]any) map[string]any {
		b := maps.Clone(own)
		for k, val := range changes {
			if val == nil {
				delete(b, k)
			} else {
				b[k] = val
			}
		}
		return b
	}
	onlyViewer1 := func(when string) listedSeat {
		t.Helper()
		seats := a.seatsOn(t, v.StageArn)
		if len(seats) != 1 || seats[0].UserID != "viewer-1" || seats[0].ParticipantID != v.ParticipantID {
			t.Fatalf("%s: seats %+v; want only viewer-1's as %s", when, seats, v.ParticipantID)
		}
		return seats[0]
	}

	wantError(t, a.call(t, "POST", "/api/viewer/heartbeat", map[string]any{"userId": "nobody", "participantId": "MADEUP1"}), http.StatusNotFound, "NOT_FOUND")
	wantError(t, a.call(t, "POST", "/api/viewer/heartbeat", map[string]any{"userId": "nobody", "participantId": "MADEUP1", "stageArn": v.StageArn}), http.StatusNotFound, "NOT_FOUND")
	seat := onlyViewer1("after heartbeats of an unknown user")

	// expiresAt has whole seconds: a renewal now would show.
	time.Sleep(1100 * time.Millisecond)
	for _, tc := range []struct {
		name   string
		body   map[string]any
		status int
		code   string
	}{
		{"another participant", with(map[string]any{"participantId": "MADEUP1"}), http.StatusConflict, "CONFLICT"},
		{"another stage", with(map[string]any{"stageArn": strangerArn}), http.StatusConflict, "CONFLICT"},
		{"no participant", with(map[string]any{"participantId": nil}), http.StatusBadRequest, "VALIDATION_ERROR"},
	} {
		r := a.call(t, "POST", "/api/viewer/heartbeat", tc.body)
		if r.Status != tc.status || r.Env.Error == nil || r.Env.Error.Code != tc.code {
			t.Errorf("heartbeat for %s: %s; want %d %s", tc.name, r, tc.status, tc.code)
		}
	}
	if got := onlyViewer1("after refused heartbeats"); got.ExpiresAt != seat.ExpiresAt {
		t.Errorf("a refused heartbeat renewed the seat: expiresAt %s, was %s", got.ExpiresAt, seat.ExpiresAt)
	}
	a.expect(t, "POST", "/api/viewer/heartbeat", own, http.StatusOK)
	if got := onlyViewer1("after its own heartbeat"); got.ExpiresAt == seat.ExpiresAt {
		t.Errorf("the seat's own heartbeat did not renew it: expiresAt still %s", got.ExpiresAt)
	}

	// The seat is gone: only its seat key takes it back.
	a.expect(t, "POST", "/api/viewer/leave", map[string]any{"userId": "viewer-1"}, http.StatusOK)
	forged := []byte(v.SeatKey)
	forged[0] ^= 1
	for _, tc := range []struct {
		name string
		body map[string]any
	}{
		{"no seat key", own},
		{"a forged seat key", with(map[string]any{"seatKey": string(forged)})},
		{"another participant's seat key", with(map[string]any{"participantId": "MADEUP1", "seatKey": v.SeatKey})},
		{"another user's seat key", with(map[string]any{"userId": "viewer-2", "seatKey": v.SeatKey})},
	} {
		wantError(t, a.call(t, "POST", "/api/viewer/heartbeat", tc.body), http.StatusNotFound, "NOT_FOUND")
		if seats := a.seatsOn(t, v.StageArn); len(seats) != 0 {
			t.Fatalf("a heartbeat with %s made seats %+v", tc.name, seats)
		}
	}
	r := a.expect(t, "POST", "/api/viewer/heartbeat", with(map[string]any{"seatKey": v.SeatKey}), http.StatusOK)
	if s := dataOf[listedSeat](t, r); s.StageArn != v.StageArn || s.ParticipantID != v.ParticipantID {
		t.Errorf("heartbeat with the seat key: %+v; want the seat back on %s as %s", s, v.StageArn, v.ParticipantID)
	}
	onlyViewer1("after the heartbeat with the seat key")

	// A rejoin records the participant the viewer says it is.
	re := a.issue(t, "/api/viewer/rejoin", map[string]any{"userId": "viewer-2", "stageArn": host.StageArn, "participantId": "REJOIN-1"})
	if re.ParticipantID != "REJOIN-1" || re.StageArn != host.StageArn {
		t.Errorf("rejoin as REJOIN-1 on %s gave %+v", host.StageArn, re)
	}
}

// TestForeignStages: stagefleet replicates between, and gives media
// server tokens for, its own stages only; and it refuses a replication
// that would close a loop.
func TestForeignStages(t *testing.T) {
	t.Parallel()
	a := startApp(t, map[string]string{"INTERNAL_SECRET": "s"})
	a.headers.Set("X-Internal-Secret", "s")
	host := a.goLive(t, "default", "host-1")

	// A stage of the same account, not stagefleet's, with someone
	// publishing: IVS itself would replicate from it.
	op := sdk(a.emu)
	foreign, err := op.CreateStage(t.Context(), "foreign", nil)
	if err != nil {
		t.Fatalf("CreateStage: %v", err)
	}
	outsider, err := op.Issue(t.Context(), token.Request{StageArn: foreign.Arn, UserID: "outsider", Publish: true, Subscribe: true, TTL: time.Hour})
	if err != nil {
		t.Fatalf("CreateParticipantToken: %v", err)
	}
	j := a.join(t, outsider.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	into := map[string]any{"sourceStageArn": foreign.Arn, "destinationStageArn": host.StageArn, "participantId": j.ParticipantID}
	wantError(t, a.call(t, "POST", "/api/stage/replication/start", into), http.StatusNotFound, "NOT_FOUND")

	for _, tc := range []struct {
		name, arn string
		status    int
	}{
		{"a foreign stage", foreign.Arn, http.StatusNotFound},
		{"another account and region", "arn:aws:ivs:eu-west-1:999999999999:stage/Elsewhere001", http.StatusNotFound},
		{"the origin", host.StageArn, http.StatusOK},
	} {
		if r := a.call(t, "POST", "/api/token/mediaserver", map[string]any{"serverId": "mixer", "stageArn": tc.arn}); r.Status != tc.status {
			t.Errorf("media server token for %s: %s; want %d", tc.name, r, tc.status)
		}
	}

	manual := func(name string) string {
		r := a.expect(t, "POST", "/api/stage", map[string]any{"name": name}, http.StatusCreated)
		return dataOf[struct {
			Stage stageData `json:"stage"`
		}](t, r).Stage.Arn
	}
	stageA, stageB := manual("loop-a"), manual("loop-b")
	m := a.issue(t, "/api/token/mediaserver", map[string]any{"serverId": "mixer", "stageArn": stageA})
	jm := a.join(t, m.Token)
	a.publish(t, jm.StageArn, jm.ParticipantID)
	a.expect(t, "POST", "/api/stage/replication/start", map[string]any{"sourceStageArn": stageA, "destinationStageArn": stageB, "participantId": jm.ParticipantID}, http.StatusOK)
	r := a.call(t, "POST", "/api/stage/replication/start", map[string]any{"sourceStageArn": stageB, "destinationStageArn": stageA, "participantId": jm.ParticipantID})
	wantError(t, r, http.StatusForbidden, "FORBIDDEN")
	if !strings.Contains(r.Env.Error.Message, "loop") {
		t.Errorf("refusal %q does not name the loop", r.Env.Error.Message)
	}
	for _, rep := range a.emuState(t).Replications {
		if rep.SourceStageArn == foreign.Arn || rep.SourceStageArn == stageB {
			t.Errorf("IVS has a replication stagefleet refused: %+v", rep)
		}
	}
}

// TestInvalidUTF8: ids must be text: a byte that is not UTF-8 would be
// turned into U+FFFD, and two ids into one; a control character has no
// place in an id.
func TestInvalidUTF8(t *testing.T) {
	t.Parallel()
	a := startApp(t, nil)
	for _, route := range []string{"/api/token/viewer", "/api/token/publisher"} {
		for _, tc := range []struct {
			name string
			body []byte
			want string
		}{
			{"byte 0xff", []byte("{\"userId\":\"viewer\xff1\"}"), "UTF-8"},
			{"control character", []byte(`{"userId":"viewer\u00071"}`), "control characters"},
		} {
			r := a.call(t, "POST", route, tc.body)
			wantError(t, r, http.StatusBadRequest, "VALIDATION_ERROR")
			if !strings.Contains(r.Env.Error.Message, tc.want) {
				t.Errorf("%s with a userId with a %s: %q does not say %s", route, tc.name, r.Env.Error.Message, tc.want)
			}
		}
	}
}

// TestTwoDeployments: staging and production share one account (here one
// emulator). Each adopts, counts and deletes only its own stages.
func TestTwoDeployments(t *testing.T) {
	// aws mode takes credentials from the process environment, as the
	// AWS SDK does: not parallel.
	t.Setenv("AWS_ACCESS_KEY_ID", "stagefleet")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "emulator")
	common := map[string]string{"STAGE_CAPACITY": "2", "SCALE_UP_THRESHOLD": "1", "SEAT_WAIT": "5s", "RECONCILE_INTERVAL": "200ms"}
	env := func(extra map[string]string) map[string]string {
		e := maps.Clone(common)
		maps.Copy(e, extra)
		return e
	}
	staging := startApp(t, env(map[string]string{"DEPLOYMENT_ID": "staging"}))
	keyFile, keyArn := tokenKey(t, staging.emu)
	production := startApp(t, env(map[string]string{
		"IVS_MODE": "aws", "IVS_ENDPOINT": staging.emu, "DEPLOYMENT_ID": "production", "API_SECRET_KEY": "k",
		"IVS_TOKEN_KEY_ARN": keyArn, "IVS_TOKEN_PRIVATE_KEY_FILE": keyFile,
	}))
	production.emu = staging.emu
	production.headers.Set("X-Api-Key", "k")
	deployments := map[string]*testApp{"staging": staging, "production": production}
	for id, a := range deployments {
		host := a.goLive(t, "default", "host-"+id)
		for i := range 3 {
			a.token(t, "viewer", map[string]any{"userId": fmt.Sprint("viewer-", i)})
		}
		a.waitReplicated(t, "default", host.ParticipantID, 1)
	}

	initial := staging.emuState(t).Stages
	for _, s := range initial {
		if deployments[s.Tags["stagefleet:deployment"]] == nil {
			t.Errorf("stage %s is tagged %v: not as one of the deployments'", s.Arn, s.Tags)
		}
	}
	// Many reconciles of both: every stage stays.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		now := staging.emuState(t).Stages
		for _, s := range initial {
			if !slices.ContainsFunc(now, func(n emulator.StageState) bool { return n.Arn == s.Arn }) {
				t.Fatalf("stage %s of %s was deleted", s.Arn, s.Tags["stagefleet:deployment"])
			}
		}
	}
	for id, a := range deployments {
		eventually(t, 2*time.Second, func() (bool, string) {
			var tagged []string
			for _, s := range staging.emuState(t).Stages {
				if s.Tags["stagefleet:deployment"] == id {
					tagged = append(tagged, s.Arn)
				}
			}
			var listed []string
			for _, s := range a.stages(t, "default") {
				listed = append(listed, s.Arn)
			}
			slices.Sort(tagged)
			slices.Sort(listed)
			return slices.Equal(tagged, listed), fmt.Sprintf("%s lists stages %v; IVS has %v tagged as its own", id, listed, tagged)
		})
	}
}
