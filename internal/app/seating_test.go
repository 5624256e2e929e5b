package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/emulator"
)

// TestNoViewerBeforeReplicaActive holds stagefleet to invariant 2 through
// the emulator's own count of subscribers that joined a replica stage
// before every publishing host's replica was ACTIVE there: the count must
// stay 0 while viewers, each seated and joined as a client would, arrive
// in bursts through a storm that needs several replica stages, a second
// host going live, the first host unpublishing, and the first host
// publishing again.
//
// IVS and stagefleet learn of a host change at different moments, and
// nothing can close that gap: a viewer whose token was given before
// stagefleet heard that a second host publishes may be seated on a
// replica that carries only the first, and join it after the second host
// has started. What the invariant promises is that a token given after
// stagefleet has observed the change never seats a viewer where a
// publishing host is missing. So each burst of viewers here is asked for
// only once the API reports the change, and every viewer of a burst has
// joined before the next change is made.
func TestNoViewerBeforeReplicaActive(t *testing.T) {
	t.Parallel()
	const (
		capacity          = 10
		reconcileInterval = 500 * time.Millisecond
	)
	a := startApp(t, map[string]string{
		"STAGE_CAPACITY":     strconv.Itoa(capacity),
		"SCALE_UP_THRESHOLD": "8",
		// 240 viewers in all need 24 stages; the default 20 would refuse
		// the last bursts.
		"MAX_STAGES":         "40",
		"RECONCILE_INTERVAL": reconcileInterval.String(),
		// Long enough that a viewer waits for a replica being made or
		// reopened instead of being sent away.
		"SEAT_WAIT": "10s",
		// Seats outlive the test: no stage empties and is removed under
		// the viewers, who send no heartbeats.
		"HEARTBEAT_TIMEOUT":       "10m",
		"RATE_LIMIT_MAX_REQUESTS": "0",
		// A host that unpublishes loses its replications at once, so that
		// publishing again starts them anew: replicas must close to
		// viewers until they are ACTIVE again.
		"RECONNECT_WINDOW": "0s",
	}, func(c *emulator.Config) {
		// IVS counts a host who has joined but does not publish (yet, or
		// any more) as a subscriber: room for both hosts beside a full
		// origin's viewers. Viewers per stage are checked below.
		c.StageCapacity = capacity + 2
		// Wide enough a gap between a replication's start and its ACTIVE
		// for early joins to land in it.
		c.ReplicaDelay = 300 * time.Millisecond
	})
	a.client.Transport = &http.Transport{MaxIdleConnsPerHost: 200}

	host1 := a.goLive(t, "default", "host-1")
	// A manual stage in the broadcast: stagefleet must never seat a viewer
	// on it, and checkSeatedOn says so if it does.
	a.expect(t, "POST", "/api/stage", map[string]any{"name": "by-hand"}, http.StatusCreated)

	// (a) A storm: far more viewers than the origin holds arrive at once.
	var all []admittedViewer
	storm := a.admitViewers(t, "storm", 150)
	all = append(all, storm...)
	a.checkNoEarlyViewer(t, "storm")
	if byRole := a.checkSeatedOn(t, "storm", storm); len(byRole["replica"]) < 3 {
		t.Fatalf("the storm seated viewers on %d replica stages; want several, or it tested little", len(byRole["replica"]))
	}
	before := map[string]bool{}
	for _, s := range a.replicas(t, "default") {
		before[s.Arn] = true
	}

	// (b) A second host goes live. Once stagefleet reports it publishing,
	// every replica lacks it until its replication there is ACTIVE (300
	// ms on): a burst of viewers arrives right then.
	host2 := a.token(t, "publisher", map[string]any{"userId": "host-2"})
	j2 := a.join(t, host2.Token)
	a.publish(t, j2.StageArn, j2.ParticipantID)
	a.waitHostPublishing(t, j2.ParticipantID, true)
	second := a.admitViewers(t, "second-host", 30)
	all = append(all, second...)
	a.checkNoEarlyViewer(t, "second host live")
	onOld := 0
	for _, v := range second {
		if before[v.joined.StageArn] {
			onOld++
		}
	}
	if onOld == 0 {
		t.Errorf("no viewer of the burst after the second host went live was seated on a replica stage made before; the burst did not meet replications of the second host starting")
	}
	a.checkSeatedOn(t, "second host live", second)

	// (c) The first host unpublishes: its replications stop, and the
	// replicas carry the second host alone.
	if status, raw := a.emuPost(t, "/_emulator/participants/unpublish", map[string]string{"stageArn": host1.StageArn, "participantId": host1.ParticipantID}); status != http.StatusOK {
		t.Fatalf("unpublish: %d %s", status, raw)
	}
	a.waitHostPublishing(t, host1.ParticipantID, false)
	// The host is still connected, and IVS still lists it as published:
	// that field says whether it ever published in the session, not
	// whether it does now. Resyncs with IVS must not undo the Unpublished
	// event, or every replica waits for a replication of the host that
	// cannot start.
	a.keepsHostPublishing(t, host1.ParticipantID, false, 3*reconcileInterval)
	unpublished := a.admitViewers(t, "unpublished", 30)
	all = append(all, unpublished...)
	a.checkNoEarlyViewer(t, "first host unpublished")
	a.checkSeatedOn(t, "first host unpublished", unpublished)

	// (d) The first host publishes again: until its new replications are
	// ACTIVE, no replica shows the whole show.
	a.publish(t, host1.StageArn, host1.ParticipantID)
	a.waitHostPublishing(t, host1.ParticipantID, true)
	republished := a.admitViewers(t, "republished", 30)
	all = append(all, republished...)
	a.checkNoEarlyViewer(t, "first host republished")
	a.checkSeatedOn(t, "first host republished", republished)

	// Nobody has left: a stage's viewers are all those ever seated on it.
	perStage := map[string]int{}
	for _, v := range all {
		perStage[v.joined.StageArn]++
	}
	for arn, n := range perStage {
		if n > capacity {
			t.Errorf("stage %s was given %d viewers; STAGE_CAPACITY is %d", arn, n, capacity)
		}
	}
}

// admittedViewer is one viewer that got a token and joined with it.
type admittedViewer struct {
	user   string
	token  tokenData
	joined joined
	// attempts counts token requests: 503s retried, then the 200.
	attempts int
}

// maxViewerAttempts bounds a viewer's token requests; a 503 is retried
// after its Retry-After, as a client would.
const maxViewerAttempts = 3

// admitViewers has n new viewers arrive at once. Each asks for a viewer
// token, retrying a 503, and joins the stage it names the moment it has
// it, as a client does. Every viewer must be seated.
func (a *testApp) admitViewers(t *testing.T, prefix string, n int) []admittedViewer {
	t.Helper()
	out := make([]admittedViewer, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			out[i], errs[i] = a.admitViewer(t.Context(), fmt.Sprintf("%s-%03d", prefix, i))
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s viewer %d: %v", prefix, i, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// admitViewer gets user a viewer token and joins with it. It does not touch
// t, so that goroutines may call it.
func (a *testApp) admitViewer(ctx context.Context, user string) (admittedViewer, error) {
	v := admittedViewer{user: user}
	for {
		v.attempts++
		r, err := a.send(ctx, "POST", "/api/token/viewer", map[string]any{"userId": user}, nil)
		if err != nil {
			return v, err
		}
		if err := checkEnvelope(r); err != nil {
			return v, err
		}
		if r.Status == http.StatusOK {
			if err := json.Unmarshal(r.Env.Data, &v.token); err != nil {
				return v, fmt.Errorf("viewer token: %w: %s", err, r.Env.Data)
			}
			break
		}
		if r.Status != http.StatusServiceUnavailable || v.attempts == maxViewerAttempts {
			return v, fmt.Errorf("viewer token, attempt %d: %s", v.attempts, r)
		}
		wait, err := strconv.Atoi(r.Header.Get("Retry-After"))
		if err != nil || wait < 1 {
			return v, fmt.Errorf("503 without a usable Retry-After: %s", r)
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(time.Duration(wait) * time.Second):
		}
	}
	j, err := a.emuJoin(ctx, v.token.Token)
	if err != nil {
		return v, fmt.Errorf("joining %s with the viewer token: %w", v.token.StageArn, err)
	}
	v.joined = j
	return v, nil
}

// emuJoin joins the stage a token names through the emulator, as a client
// SDK would. Unlike join, it does not touch t.
func (a *testApp) emuJoin(ctx context.Context, token string) (joined, error) {
	body := strings.NewReader(fmt.Sprintf(`{"token":%q}`, token))
	req, err := http.NewRequestWithContext(ctx, "POST", a.emu+"/_emulator/participants/join", body)
	if err != nil {
		return joined{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return joined{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return joined{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return joined{}, fmt.Errorf("emulator join: %d %s", resp.StatusCode, raw)
	}
	var j joined
	if err := json.Unmarshal(raw, &j); err != nil {
		return joined{}, fmt.Errorf("emulator join: %w: %s", err, raw)
	}
	return j, nil
}

// checkNoEarlyViewer fails the test if the emulator saw any subscriber
// join a replica stage before every publishing host's replica was ACTIVE
// there, naming the phase and the last such joins.
func (a *testApp) checkNoEarlyViewer(t *testing.T, phase string) {
	t.Helper()
	obs := a.emuState(t).Observations
	if n := obs.SubscribersBeforeReplicaActive; n != 0 {
		t.Fatalf("by the end of %q, %d viewers joined a replica stage before every publishing host's replica there was ACTIVE; the last: %+v",
			phase, n, obs.RecentSubscribersBeforeReplicaActive)
	}
}

// checkSeatedOn checks that each viewer joined the stage its token named,
// and that the stage is the broadcast's origin or one of its replicas as
// IVS tags it (never a manual stage). It returns the stages, by role,
// with the viewers joined to each.
func (a *testApp) checkSeatedOn(t *testing.T, phase string, vs []admittedViewer) map[string]map[string]int {
	t.Helper()
	tags := map[string]map[string]string{}
	for _, st := range a.emuState(t).Stages {
		tags[st.Arn] = st.Tags
	}
	byRole := map[string]map[string]int{}
	for _, v := range vs {
		if v.joined.StageArn != v.token.StageArn {
			t.Errorf("%s: viewer %s joined %s with a token for %s", phase, v.user, v.joined.StageArn, v.token.StageArn)
			continue
		}
		st, ok := tags[v.joined.StageArn]
		if !ok {
			t.Errorf("%s: viewer %s's stage %s is gone from IVS while seated", phase, v.user, v.joined.StageArn)
			continue
		}
		role := st["stagefleet:role"]
		if st["stagefleet:broadcast"] != "default" || (role != "origin" && role != "replica") {
			t.Errorf("%s: viewer %s was seated on %s, tagged %v; want the origin or a replica of broadcast default", phase, v.user, v.joined.StageArn, st)
			continue
		}
		if byRole[role] == nil {
			byRole[role] = map[string]int{}
		}
		byRole[role][v.joined.StageArn]++
	}
	return byRole
}

// waitHostPublishing waits until stagefleet reports the host
// (participantID) publishing, or not, in the origin's host list: from then
// on, the stages it seats viewers on take that into account.
func (a *testApp) waitHostPublishing(t *testing.T, participantID string, publishing bool) {
	t.Helper()
	eventually(t, 10*time.Second, func() (bool, string) {
		got, found := a.hostPublishing(t, participantID)
		return found && got == publishing, fmt.Sprintf("stagefleet never reported host %s with publishing %v (found %v, publishing %v)", participantID, publishing, found, got)
	})
}

// keepsHostPublishing checks, for d, that stagefleet goes on reporting the
// host publishing, or not, as it does now.
func (a *testApp) keepsHostPublishing(t *testing.T, participantID string, publishing bool, d time.Duration) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if got, found := a.hostPublishing(t, participantID); !found || got != publishing {
			t.Fatalf("stagefleet reported host %s with publishing %v, and %v later (nothing changed in IVS) found %v, publishing %v",
				participantID, publishing, time.Since(start).Round(time.Millisecond), found, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hostPublishing reads whether stagefleet has the host (participantID) in
// the origin's host list, and publishing.
func (a *testApp) hostPublishing(t *testing.T, participantID string) (publishing, found bool) {
	t.Helper()
	r := a.expect(t, "GET", "/api/stage/master/info", nil, http.StatusOK)
	hosts := dataOf[struct {
		Hosts []struct {
			ParticipantID string `json:"participantId"`
			Publishing    bool   `json:"publishing"`
		} `json:"hosts"`
	}](t, r).Hosts
	for _, h := range hosts {
		if h.ParticipantID == participantID {
			return h.Publishing, true
		}
	}
	return false, false
}
