package loadtest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// viewer is one simulated viewer: it asks for a seat until it gets one,
// joins the stage, heartbeats, and leaves.
type viewer struct {
	*run
	userID    string
	broadcast string
	plan      arrival

	stageArn      string
	participantID string
	// seatKey proves the seat to heartbeats.
	seatKey string
}

// play plays the viewer's plan from start. settle is called once the viewer
// is seated or has given up; leaveAll is closed when drain's audience
// leaves.
func (v *viewer) play(ctx context.Context, start time.Time, settle func(), leaveAll <-chan struct{}) {
	defer settle()
	if !sleep(ctx, time.Until(start.Add(v.plan.At))) {
		return
	}
	// A planned departure that comes before a seat ends the wait for one.
	seatCtx := ctx
	if v.plan.LeaveAt > 0 {
		var cancel context.CancelFunc
		seatCtx, cancel = context.WithDeadline(ctx, start.Add(v.plan.LeaveAt))
		defer cancel()
	}
	if !v.enter(ctx, seatCtx) {
		return
	}
	settle()

	var leave <-chan time.Time
	switch {
	case v.plan.LeaveAt > 0:
		leave = time.After(time.Until(start.Add(v.plan.LeaveAt)))
	case v.cfg.Scenario != Drain:
		leave = time.After(v.cfg.Hold)
	}
	v.watch(ctx, leave, leaveAll)
	lctx, cancel := afterStop(ctx)
	defer cancel()
	v.emuLeave(lctx)
	v.apiLeave(lctx)
	v.rec.left()
}

// enter asks for a seat (waiting for one at most as long as seatCtx
// lives) and joins its stage, and says whether the viewer is seated. A
// viewer that gives up is counted so, and gives back a seat it took.
func (v *viewer) enter(ctx, seatCtx context.Context) bool {
	asked := v.rec.requested()
	token, ok := v.takeSeat(seatCtx)
	switch {
	case ok:
	case ctx.Err() != nil:
		v.rec.gaveUp(true)
		return false
	case seatCtx.Err() != nil:
		v.rec.fail("left before being seated (planned departure)", seatCtx.Err())
		v.rec.gaveUp(false)
		return false
	default:
		v.rec.gaveUp(false)
		return false
	}
	// A join cut short by the run's stop may still complete in the
	// emulator, leaving a participant nobody removes: let it finish (for
	// at most the clean-up time), so that the viewer can leave.
	jctx, jcancel := afterStop(ctx)
	joined := v.join(jctx, token)
	jcancel()
	if !joined {
		v.rec.gaveUp(false)
		lctx, cancel := afterStop(ctx)
		defer cancel()
		v.apiLeave(lctx)
		return false
	}
	v.rec.seated(time.Since(asked))
	return true
}

// afterStop is a context for giving back what a viewer took, which must
// happen even when the run was stopped: a seat left behind would hold a
// stage up until its lease runs out.
func afterStop(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// takeSeat asks for a viewer token until it gets one, waiting as the
// server says after 503s, 429s and 404s (no live host yet).
func (v *viewer) takeSeat(ctx context.Context) (string, bool) {
	body := map[string]string{"userId": v.userID, "broadcastId": v.broadcast}
	for {
		var tok struct {
			Token   string `json:"token"`
			SeatKey string `json:"seatKey"`
		}
		res, err := v.c.callAPI(ctx, http.MethodPost, "/api/token/viewer", body, &tok)
		if err != nil {
			if ctx.Err() == nil {
				v.rec.fail("viewer token: "+errorKind(err), err)
			}
			return "", false
		}
		switch res.Status {
		case http.StatusOK:
			v.rec.tokenAnswered(res.Elapsed)
			v.seatKey = tok.SeatKey
			return tok.Token, true
		case http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusNotFound:
			v.rec.refuse(res.Code, res.Status)
			wait := res.RetryAfter
			if wait == 0 {
				wait = time.Second
			}
			if !sleep(ctx, wait) {
				return "", false
			}
		default:
			v.rec.fail("viewer token: "+res.String(), errors.New(res.Message))
			return "", false
		}
	}
}

// join joins the stage the token names, as the IVS client SDK would.
func (v *viewer) join(ctx context.Context, token string) bool {
	var j struct {
		ParticipantID string `json:"participantId"`
		StageArn      string `json:"stageArn"`
	}
	res, err := v.c.callEmulator(ctx, http.MethodPost, "/_emulator/participants/join", map[string]string{"token": token}, &j)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			v.rec.fail("emulator join: "+errorKind(err), err)
		}
		return false
	case res.Status != http.StatusOK:
		v.rec.fail("emulator join: "+res.String(), errors.New(res.Message))
		return false
	}
	v.stageArn, v.participantID = j.StageArn, j.ParticipantID
	return true
}

// watch heartbeats until leave fires, leaveAll closes or ctx ends.
func (v *viewer) watch(ctx context.Context, leave <-chan time.Time, leaveAll <-chan struct{}) {
	tick := time.NewTicker(v.cfg.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-leave:
			return
		case <-leaveAll:
			return
		case <-tick.C:
			v.renew(ctx)
		}
	}
}

// renew heartbeats once and says whether the server renewed the seat.
func (v *viewer) renew(ctx context.Context) bool {
	// The seat is the token's participant's: a heartbeat names it, and
	// carries the seat key that takes the seat back if the store lost it.
	body := map[string]string{"userId": v.userID, "broadcastId": v.broadcast,
		"stageArn": v.stageArn, "participantId": v.participantID, "seatKey": v.seatKey}
	res, err := v.c.callAPI(ctx, http.MethodPost, "/api/viewer/heartbeat", body, nil)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			v.rec.fail("heartbeat: "+errorKind(err), err)
		}
		return false
	case res.Status != http.StatusOK:
		// 404: the seat's lease ran out; the viewer is still on the stage,
		// so the server may seat someone else in its place.
		v.rec.fail("heartbeat: "+res.String(), errors.New(res.Message))
		return false
	}
	return true
}

// emuLeave disconnects from the stage before the seat is given back, so
// that the stage never holds more participants than the server seated.
func (v *viewer) emuLeave(ctx context.Context) {
	res, err := v.c.callEmulator(ctx, http.MethodPost, "/_emulator/participants/leave", map[string]string{"stageArn": v.stageArn, "participantId": v.participantID}, nil)
	switch {
	case err != nil:
		v.rec.fail("emulator leave: "+errorKind(err), err)
	case res.Status != http.StatusOK:
		v.rec.fail("emulator leave: "+res.String(), errors.New(res.Message))
	}
}

func (v *viewer) apiLeave(ctx context.Context) {
	res, err := v.c.callAPI(ctx, http.MethodPost, "/api/viewer/leave", map[string]string{"userId": v.userID, "broadcastId": v.broadcast}, nil)
	switch {
	case err != nil:
		v.rec.fail("viewer leave: "+errorKind(err), err)
	case res.Status != http.StatusOK:
		v.rec.fail("viewer leave: "+res.String(), errors.New(res.Message))
	}
}

// errorKind names a transport error in a few words, so that errors of one
// kind count together in the report (the first of each kind is logged in
// full).
func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, errNotLoopback):
		return "address not on this machine"
	case errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	default:
		return "no answer"
	}
}

// recorder gathers what the viewers measure, for the samples and the
// report.
type recorder struct {
	log *slog.Logger

	mu           sync.Mutex
	planned      int
	asked        int
	waiting      int
	leftTotal    int
	firstAsk     time.Time
	lastSeat     time.Time
	tokenLatency []time.Duration
	// timeToSeat has one entry per viewer seated.
	timeToSeat []time.Duration
	refused    map[string]int
	errors     map[string]int
	stopped    int // still waiting for a seat when the run was stopped
}

func newRecorder(log *slog.Logger) *recorder {
	return &recorder{log: log, refused: map[string]int{}, errors: map[string]int{}}
}

func (r *recorder) setPlanned(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.planned = n
}

// requested counts a viewer asking for its first token and returns when.
func (r *recorder) requested() time.Time {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked++
	r.waiting++
	if r.firstAsk.IsZero() {
		r.firstAsk = now
	}
	return now
}

func (r *recorder) tokenAnswered(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tokenLatency = append(r.tokenLatency, d)
}

// refuse counts a viewer-token answer that the viewer retries, by code.
func (r *recorder) refuse(code string, status int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if code == "" {
		code = http.StatusText(status)
	}
	r.refused[code]++
	if code == "RATE_LIMITED" && r.refused[code] == 1 {
		r.log.Warn("the API rate-limits the load generator: start stagefleet serve with RATE_LIMIT_MAX_REQUESTS=0")
	}
}

func (r *recorder) seated(d time.Duration) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waiting--
	r.lastSeat = now
	r.timeToSeat = append(r.timeToSeat, d)
}

// gaveUp counts a viewer that stopped waiting for a seat: because the run
// was stopped, or because of an error already counted.
func (r *recorder) gaveUp(stopped bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waiting--
	if stopped {
		r.stopped++
	}
}

func (r *recorder) left() {
	r.leftWith(1)
}

// leftWith counts n viewers gone together (their broadcast ended).
func (r *recorder) leftWith(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leftTotal += n
}

// fail counts a failure by kind and logs the first of each kind.
func (r *recorder) fail(kind string, err error) {
	r.mu.Lock()
	r.errors[kind]++
	first := r.errors[kind] == 1
	r.mu.Unlock()
	if first {
		r.log.Warn("viewer step failed (further failures of this kind are only counted)", "kind", kind, "error", err)
	}
}

// counts is a snapshot for samples and progress.
type counts struct {
	planned, asked, waiting, seatedNow, left, refused int
}

func (r *recorder) counts() counts {
	r.mu.Lock()
	defer r.mu.Unlock()
	refused := 0
	for _, n := range r.refused {
		refused += n
	}
	return counts{r.planned, r.asked, r.waiting, len(r.timeToSeat) - r.leftTotal, r.leftTotal, refused}
}
