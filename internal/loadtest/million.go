package loadtest

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The million scenario cannot give each viewer a goroutine with its own
// heartbeat ticker: a million of them is gigabytes of stacks and tens of
// thousands of renewals a second, more than one machine carries beside the
// service. Instead Concurrency workers seat the viewers in order of
// arrival, and renewals run in rounds once everyone is seated: each round
// renews every seat once, as fast as the workers go. That is the compressed
// schedule the report states (Renewals); serve's HEARTBEAT_TIMEOUT must
// outlast the join phase, or early seats lapse before their first renewal
// (the renewals then fail, and the report says so).

// heldSeat is what a seated viewer keeps for its renewals; the stage is an
// index into the run's stage ARNs, so that a million seats do not hold a
// million copies of a hundred ARNs.
type heldSeat struct {
	stage         int32 // -1: not seated
	participantID string
	seatKey       string
}

// RenewalCounts are the million scenario's renewal rounds.
type RenewalCounts struct {
	Rounds    int     `json:"rounds"`
	Requested int64   `json:"requested"`
	Renewed   int64   `json:"renewed"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"perSecond"`
}

// stageIndex interns stage ARNs.
type stageIndex struct {
	mu   sync.Mutex
	arns []string
	of   map[string]int32
}

func (s *stageIndex) index(arn string) int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.of[arn]; ok {
		return i
	}
	if s.of == nil {
		s.of = map[string]int32{}
	}
	i := int32(len(s.arns))
	s.arns = append(s.arns, arn)
	s.of[arn] = i
	return i
}

func (s *stageIndex) arn(i int32) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.arns[i]
}

// newViewer is the i-th viewer of the plan.
func (r *run) newViewer(i int, a arrival) *viewer {
	return &viewer{run: r, userID: "viewer-" + strconv.Itoa(i+1), broadcast: r.broadcasts[a.Broadcast], plan: a}
}

// each runs do(i) for i in [0, n) on Concurrency workers, until ctx ends.
func (r *run) each(ctx context.Context, n int, do func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(r.cfg.Concurrency, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				do(i)
			}
		})
	}
	wg.Wait()
}

// million seats the plan's viewers, runs the renewal rounds, and holds the
// audience for Hold. It returns the seats held, by broadcast.
func (r *run) million(ctx context.Context, start time.Time, p []arrival) (RenewalCounts, map[int]int) {
	// A viewer the run never reached (it was stopped) holds no seat.
	seats := make([]heldSeat, len(p))
	for i := range seats {
		seats[i].stage = -1
	}
	var stages stageIndex
	r.each(ctx, len(p), func(i int) {
		seats[i] = r.seatOne(ctx, start, i, p[i], &stages)
	})
	held, total := map[int]int{}, 0
	for i, s := range seats {
		if s.stage >= 0 {
			held[p[i].Broadcast]++
			total++
		}
	}

	r.smp.setPhase(phaseRenewals)
	rc := RenewalCounts{}
	var requested, renewed atomic.Int64
	var took time.Duration
	for range r.cfg.Renewals {
		if ctx.Err() != nil {
			break
		}
		began := time.Now()
		r.each(ctx, len(seats), func(i int) {
			s := seats[i]
			if s.stage < 0 {
				return
			}
			v := r.newViewer(i, p[i])
			v.stageArn, v.participantID, v.seatKey = stages.arn(s.stage), s.participantID, s.seatKey
			requested.Add(1)
			if v.renew(ctx) {
				renewed.Add(1)
			}
		})
		rc.Rounds++
		took += time.Since(began)
	}
	rc.Requested, rc.Renewed, rc.Seconds = requested.Load(), renewed.Load(), seconds(took)
	if took > 0 {
		rc.PerSecond = round3(float64(rc.Renewed) / took.Seconds())
	}
	if err := r.res.audience(ctx, total); err != nil {
		r.log.Warn("reading Redis's memory with the audience seated failed", "error", err)
	}
	sleep(ctx, r.cfg.Hold)
	return rc, held
}

// seatOne plays one viewer of million up to its seat: token, join.
func (r *run) seatOne(ctx context.Context, start time.Time, i int, a arrival, stages *stageIndex) heldSeat {
	none := heldSeat{stage: -1}
	if !sleep(ctx, time.Until(start.Add(a.At))) {
		return none
	}
	v := r.newViewer(i, a)
	if !v.enter(ctx, ctx) {
		return none
	}
	return heldSeat{stage: stages.index(v.stageArn), participantID: v.participantID, seatKey: v.seatKey}
}

// BroadcastEnd is how one broadcast's end went: DELETE
// /api/broadcasts/{id}, timed from the request to the answer.
type BroadcastEnd struct {
	Broadcast     string  `json:"broadcast"`
	Seconds       float64 `json:"seconds"`
	StagesDeleted int     `json:"stagesDeleted"`
	SeatsFreed    int     `json:"seatsFreed"`
	// Error is why it failed; absent when it answered 200.
	Error string `json:"error,omitempty"`
}

// endWait bounds each broadcast's end: the API's own bound on one.
const endWait = 10 * time.Minute

// endBroadcasts ends every broadcast of the run (DELETE
// /api/broadcasts/{id}), as an operator does when the show is over: IVS
// deletes the stages and with them the viewers. held is the seats held per
// broadcast, counted as left once their broadcast ended. It runs even
// after the run was stopped, bounded by endWait: a broadcast left half
// ended would keep its stages.
func (r *run) endBroadcasts(ctx context.Context, held map[int]int) []BroadcastEnd {
	var out []BroadcastEnd
	for i, b := range r.broadcasts {
		var ended struct {
			StagesDeleted int `json:"stagesDeleted"`
			SeatsFreed    int `json:"seatsFreed"`
		}
		start := time.Now()
		ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), endWait)
		res, err := r.c.callAPILong(ectx, http.MethodDelete, "/api/broadcasts/"+url.PathEscape(b), nil, &ended)
		cancel()
		e := BroadcastEnd{Broadcast: b, Seconds: seconds(time.Since(start)), StagesDeleted: ended.StagesDeleted, SeatsFreed: ended.SeatsFreed}
		switch {
		case err != nil:
			e.Error = err.Error()
			r.rec.fail("end broadcast: "+errorKind(err), err)
		case res.Status != http.StatusOK:
			e.Error = res.String() + ": " + res.Message
			r.rec.fail("end broadcast: "+res.String(), errors.New(res.Message))
		default:
			r.rec.leftWith(held[i])
		}
		out = append(out, e)
	}
	return out
}
