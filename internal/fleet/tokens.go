package fleet

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/token"
)

// Capabilities as the previous server named them in responses.
const (
	CapPublish   = "PUBLISH"
	CapSubscribe = "SUBSCRIBE"
)

// IssuedToken is a participant token and what the caller needs with it.
type IssuedToken struct {
	Token         string
	ParticipantID string
	UserID        string
	StageArn      string
	BroadcastID   string
	Capabilities  []string
	ExpiresAt     time.Time
	// WhipURL is where a host publishes with WHIP.
	WhipURL string
	// SeatKey (viewers) proves the seat to a heartbeat after the store
	// lost it.
	SeatKey string
	// NewSeat (viewers) says the seat was taken by this request, not kept.
	NewSeat bool
	// StageViewers (viewers) counts the seats on the token's stage, this
	// viewer's included.
	StageViewers int
}

// PublisherToken gives a host a publish token for the broadcast's origin
// stage (created on first use) and records the host.
func (s *Service) PublisherToken(ctx context.Context, broadcastID, userID string) (IssuedToken, error) {
	originArn, err := s.origin(ctx, broadcastID)
	if err != nil {
		return IssuedToken{}, err
	}
	tok, err := s.tokens.Issue(ctx, token.Request{
		StageArn:      originArn,
		ParticipantID: newParticipantID(),
		UserID:        userID,
		Attributes:    map[string]string{"role": "host", "broadcastId": broadcastID},
		Publish:       true,
		Subscribe:     true,
		TTL:           s.cfg.PublisherTTL,
	})
	if err != nil {
		return IssuedToken{}, failWrap(ErrToken, err, "could not generate the host token")
	}
	host := store.Host{
		BroadcastID:   broadcastID,
		ParticipantID: tok.ParticipantID,
		UserID:        userID,
		StageArn:      originArn,
		JoinedAt:      s.now(),
	}
	if err := s.store.PutHost(ctx, host); err != nil {
		return IssuedToken{}, failWrap(ErrUnavailable, err, "recording the host")
	}
	s.log.Info("host token issued", "broadcast", broadcastID, "stage", originArn, "participant", tok.ParticipantID, "user", userID)
	return IssuedToken{
		Token:         tok.Token,
		ParticipantID: tok.ParticipantID,
		UserID:        userID,
		StageArn:      originArn,
		BroadcastID:   broadcastID,
		Capabilities:  []string{CapPublish, CapSubscribe},
		ExpiresAt:     tok.ExpiresAt,
		WhipURL:       token.WhipURL,
	}, nil
}

// ViewerToken seats a viewer (one store round trip, no AWS call) and gives
// it a subscribe token for the seat's stage. A viewer that has a seat keeps
// it. With no seat free it waits up to SeatWait for one.
func (s *Service) ViewerToken(ctx context.Context, broadcastID, userID, stageArn string) (IssuedToken, error) {
	return s.seat(ctx, store.SeatRequest{
		BroadcastID:   broadcastID,
		UserID:        userID,
		StageArn:      stageArn,
		ParticipantID: newParticipantID(),
		TTL:           s.cfg.HeartbeatTimeout,
	})
}

// seat takes the seat req asks for (or keeps the viewer's) and issues its
// token.
func (s *Service) seat(ctx context.Context, req store.SeatRequest) (IssuedToken, error) {
	start := time.Now()
	tok, err := s.takeSeat(ctx, req)
	s.metrics.ViewerToken(req.BroadcastID, joinOutcome(err), time.Since(start))
	return tok, err
}

func (s *Service) takeSeat(ctx context.Context, req store.SeatRequest) (IssuedToken, error) {
	broadcastID, userID := req.BroadcastID, req.UserID
	arrived := s.now()
	// The join rate measures arrivals, counted as they come: scale-up
	// makes room for those still to come while stages are provisioned
	// (those already waiting are counted as waiting). Counted when seated,
	// a storm would be seen only as fast as stages come, not viewers.
	s.local(broadcastID).joins.addAt(arrived, arrived)
	s.enqueue(broadcastID)
	seat, err := s.reserve(ctx, req)
	if err != nil {
		return IssuedToken{}, err
	}
	if seat.Replaced != nil {
		// The viewer's stage stopped taking viewers: the store moved it,
		// and the old seat's session ends here.
		s.observer.SeatClosed(*seat.Replaced, EndMoved, s.now())
	}
	isNew := seat.ParticipantID == req.ParticipantID && !seat.TakenAt.Before(arrived)
	tok, err := s.tokens.Issue(ctx, token.Request{
		StageArn:      seat.StageArn,
		ParticipantID: seat.ParticipantID,
		UserID:        userID,
		Attributes:    map[string]string{"role": "viewer", "broadcastId": broadcastID},
		Subscribe:     true,
		TTL:           s.cfg.ViewerTTL,
	})
	if err != nil {
		// Nothing half-written: a seat just taken goes back.
		if isNew {
			if _, rerr := s.seats.ReleaseSeat(context.WithoutCancel(ctx), broadcastID, userID); rerr != nil {
				s.log.Error("releasing seat after token failure", "broadcast", broadcastID, "user", userID, "error", rerr)
			}
			s.seatsChanged()
		}
		return IssuedToken{}, failWrap(ErrToken, err, "could not generate the viewer token")
	}
	if isNew {
		s.observer.SeatOpened(seat, clientOf(ctx))
	}
	return IssuedToken{
		Token:         tok.Token,
		ParticipantID: tok.ParticipantID,
		UserID:        userID,
		StageArn:      seat.StageArn,
		BroadcastID:   broadcastID,
		Capabilities:  []string{CapSubscribe},
		ExpiresAt:     tok.ExpiresAt,
		SeatKey:       s.SeatKey(broadcastID, userID, seat.StageArn, seat.ParticipantID),
		NewSeat:       isNew,
		StageViewers:  seat.StageSeats,
	}, nil
}

// reserve takes a seat, waiting while every seat is taken: up to SeatWait,
// and past it while a stage is on its way for the viewer, until that stage
// can be expected to take viewers (at most MaxSeatWait in all). A viewer
// for whom a stage is coming is better seated a second later than sent
// away to come back.
func (s *Service) reserve(ctx context.Context, req store.SeatRequest) (store.Seat, error) {
	start := s.now()
	seat, full, err := s.tryReserve(ctx, req)
	if full {
		seat, err = s.waitForSeat(ctx, req, start)
	}
	if err == nil {
		s.metrics.Seated(s.now().Sub(start))
	}
	return seat, err
}

// waitForSeat is reserve once every seat was taken: it waits and tries
// again until it gets a seat or the wait is over.
func (s *Service) waitForSeat(ctx context.Context, req store.SeatRequest, start time.Time) (store.Seat, error) {
	deadline := start.Add(s.cfg.SeatWait)
	l := s.local(req.BroadcastID)
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	for {
		s.enqueue(req.BroadcastID)
		left := deadline.Sub(s.now())
		if left <= 0 {
			eta, coming, limit := s.stageComing(ctx, req.BroadcastID)
			if !coming || s.now().Add(eta).After(start.Add(s.cfg.MaxSeatWait)) {
				return store.Seat{}, s.noSeat(req.BroadcastID, eta, limit)
			}
			deadline, left = s.now().Add(eta), eta
		}
		woken := l.queue.add()
		timeout := time.NewTimer(left)
		select {
		case <-ctx.Done():
			timeout.Stop()
			l.queue.remove(woken)
			return store.Seat{}, failWrap(ErrUnavailable, ctx.Err(), "waiting for a seat")
		case <-woken:
		case <-timeout.C:
			l.queue.remove(woken)
		}
		timeout.Stop()
		if seat, full, err := s.tryReserve(ctx, req); !full {
			return seat, err
		}
	}
}

// endingLimit is stageComing's limit for a broadcast being ended: no
// stage comes, and nobody is seated.
const endingLimit = "is ending"

// endingRetry is when a host or viewer refused by an end may ask again:
// an end takes seconds, or a minute for a million seats.
const endingRetry = 5 * time.Second

// endingErr refuses a host or a viewer of a broadcast being ended.
func endingErr(broadcastID string) error {
	return &Error{
		Kind: ErrConflict,
		Msg: "broadcast " + broadcastID + " is being ended and takes no host or viewer until that is done; " +
			"try again shortly (once ended, a host token starts it anew). An end that was cut short is finished " +
			"by the next reconcile; if this lasts, the controller's log says why, and DELETE /api/broadcasts/" +
			broadcastID + " tries the end again",
		RetryAfter: endingRetry,
	}
}

// ending says whether the broadcast is being ended (false if there is no
// such broadcast).
func (s *Service) ending(ctx context.Context, broadcastID string) (bool, error) {
	b, err := s.store.GetBroadcast(ctx, broadcastID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	case err != nil:
		return false, failWrap(ErrUnavailable, err, "reading broadcast %s", broadcastID)
	}
	return !b.EndingSince.IsZero(), nil
}

// comingMargin is what a waiting viewer allows a stage on its way beyond
// the measured time a stage takes to take viewers.
const comingMargin = 500 * time.Millisecond

// stageComing says whether a stage is on its way for the broadcast's
// waiting viewers, and how long it can be expected to take: one being
// provisioned (a replica stage not yet taking viewers), or one the
// controller may still make (below MAX_STAGES and STAGE_QUOTA, not backing
// off), and otherwise the limit that keeps one from coming ("MAX_STAGES",
// "STAGE_QUOTA", endingLimit or ""). Computed at most every seatWatch per broadcast:
// every waiting viewer asks at its deadline, and in a storm at the limit
// every one of them is turned away.
func (s *Service) stageComing(ctx context.Context, broadcastID string) (time.Duration, bool, string) {
	l := s.local(broadcastID)
	l.comingMu.Lock()
	defer l.comingMu.Unlock()
	if now := s.now(); now.Sub(l.comingAt) >= seatWatch {
		l.comingAt = now
		l.comingETA, l.coming, l.comingLimit = s.lookForStage(ctx, broadcastID)
	}
	return l.comingETA, l.coming, l.comingLimit
}

func (s *Service) lookForStage(ctx context.Context, broadcastID string) (eta time.Duration, coming bool, limit string) {
	eta = s.provisioning.get() + comingMargin
	b, berr := s.store.GetBroadcast(ctx, broadcastID)
	if berr == nil && !b.EndingSince.IsZero() {
		return 0, false, endingLimit
	}
	stages, err := s.store.ListStages(ctx, broadcastID)
	if err != nil {
		return 0, false, ""
	}
	for _, st := range stages {
		if st.Role == store.RoleReplica && !st.Seatable && !st.Draining {
			return eta, true, ""
		}
	}
	if managed(stages) >= s.cfg.MaxStages {
		return 0, false, "has reached its limit of stages (MAX_STAGES)"
	}
	inUse, err := s.stagesInUse(ctx)
	if err != nil {
		return 0, false, ""
	}
	if inUse >= s.cfg.StageQuota {
		return 0, false, "this deployment has reached its limit of stages (STAGE_QUOTA)"
	}
	if berr != nil {
		return 0, false, ""
	}
	if wait := b.RetryAt.Sub(s.now()); wait > 0 {
		// IVS is failing for this broadcast: nothing comes before the
		// back-off ends, and then not surely.
		return wait + eta, false, ""
	}
	// The controller makes one on the next pass: allow for the pass.
	return eta + comingMargin, true, ""
}

// tryReserve makes one attempt at a seat; full says every seat is taken.
func (s *Service) tryReserve(ctx context.Context, req store.SeatRequest) (seat store.Seat, full bool, err error) {
	req.Now = s.now()
	seat, err = s.seats.ReserveSeat(ctx, req)
	switch {
	case err == nil:
		return seat, false, nil
	case errors.Is(err, store.ErrFull):
		return store.Seat{}, true, nil
	case errors.Is(err, store.ErrNotLive):
		// An end closes every stage first: say so rather than "no host".
		if ending, _ := s.ending(ctx, req.BroadcastID); ending {
			return store.Seat{}, false, endingErr(req.BroadcastID)
		}
		return store.Seat{}, false, fail(ErrNotLive, "broadcast %s has no live host; try again when the host is publishing", req.BroadcastID)
	case errors.Is(err, store.ErrNotFound):
		return store.Seat{}, false, fail(ErrNotFound, "stage %s is not a stage of broadcast %s", req.StageArn, req.BroadcastID)
	case errors.Is(err, store.ErrNotEligible):
		if ending, _ := s.ending(ctx, req.BroadcastID); ending {
			return store.Seat{}, false, endingErr(req.BroadcastID)
		}
		return store.Seat{}, false, fail(ErrNotFound, "stage %s does not take viewers now (it is not the origin or a replica with an active host replication)", req.StageArn)
	}
	return store.Seat{}, false, failWrap(ErrUnavailable, err, "taking a seat")
}

// noSeat is the answer to a viewer that waited in vain: the broadcast is
// at MAX_STAGES or the deployment at STAGE_QUOTA (limit, as stageComing
// found it, says which), or no stage is coming in time (IVS failing).
// Retry-After is the expected wait when one is known.
func (s *Service) noSeat(broadcastID string, eta time.Duration, limit string) error {
	retry := max(s.cfg.SeatWait, time.Second, eta)
	if limit == endingLimit {
		return endingErr(broadcastID)
	}
	if limit != "" {
		return &Error{
			Kind:       ErrStageLimit,
			Msg:        "broadcast " + broadcastID + " is full and " + limit + "; try again later",
			RetryAfter: retry,
		}
	}
	return &Error{
		Kind:       ErrStageFull,
		Msg:        "every stage of broadcast " + broadcastID + " is full; try again shortly",
		RetryAfter: retry,
	}
}

// MediaServerToken gives a media server a publish and subscribe token for
// one of stagefleet's stages (so in its own account and region), never for
// a stranger's.
func (s *Service) MediaServerToken(ctx context.Context, serverID, stageArn string) (IssuedToken, error) {
	if _, err := s.record(ctx, stageArn); err != nil {
		return IssuedToken{}, err
	}
	tok, err := s.tokens.Issue(ctx, token.Request{
		StageArn:      stageArn,
		ParticipantID: newParticipantID(),
		UserID:        serverID,
		Attributes:    map[string]string{"role": "mediaserver"},
		Publish:       true,
		Subscribe:     true,
		TTL:           s.cfg.MediaServerTTL,
	})
	if err != nil {
		return IssuedToken{}, failWrap(ErrToken, err, "could not generate the media server token")
	}
	return IssuedToken{
		Token:         tok.Token,
		ParticipantID: tok.ParticipantID,
		UserID:        serverID,
		StageArn:      stageArn,
		Capabilities:  []string{CapPublish, CapSubscribe},
		ExpiresAt:     tok.ExpiresAt,
		WhipURL:       token.WhipURL,
	}, nil
}

// SeatProof is what a heartbeat or a rejoin shows of the seat it is for:
// the participant id and stage of the viewer's token, and the seat key
// returned with it.
type SeatProof struct {
	StageArn      string
	ParticipantID string
	SeatKey       string
}

// SeatKey is the proof that this service seated participantID on stageArn
// for userID: an HMAC under SeatKeySecret, so that any instance sharing the
// secret can check it without a record.
func (s *Service) SeatKey(broadcastID, userID, stageArn, participantID string) string {
	m := hmac.New(sha256.New, s.cfg.SeatKeySecret)
	for _, f := range []string{broadcastID, userID, stageArn, participantID} {
		// Length-prefixed, so that no two field lists hash alike.
		fmt.Fprintf(m, "%d:%s;", len(f), f)
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *Service) validSeatKey(broadcastID, userID string, p SeatProof) bool {
	if p.SeatKey == "" || p.StageArn == "" || p.ParticipantID == "" {
		return false
	}
	want := s.SeatKey(broadcastID, userID, p.StageArn, p.ParticipantID)
	return hmac.Equal([]byte(p.SeatKey), []byte(want))
}

// Heartbeat renews a viewer's seat, only if the seat is the one the viewer
// names (its participant id, and its stage when given): nobody renews a
// seat that is not theirs. A seat that is gone (the store came back empty,
// or the lease ran out) is taken again on the same stage only with its
// seat key, the proof that this service seated that participant there: a
// heartbeat never makes a seat from a participant id alone.
func (s *Service) Heartbeat(ctx context.Context, broadcastID, userID string, p SeatProof) (store.Seat, error) {
	owner := store.SeatOwner{ParticipantID: p.ParticipantID, StageArn: p.StageArn}
	seat, err := s.store.RenewSeat(ctx, broadcastID, userID, owner, s.now(), s.cfg.HeartbeatTimeout)
	switch {
	case err == nil:
		return seat, nil
	case errors.Is(err, store.ErrNotOwner):
		return store.Seat{}, fail(ErrConflict, "viewer %s's seat in broadcast %s belongs to another participant or stage than %s; request a viewer token", userID, broadcastID, p.ParticipantID)
	case !errors.Is(err, store.ErrNotFound):
		return store.Seat{}, failWrap(ErrUnavailable, err, "renewing the seat")
	case !s.validSeatKey(broadcastID, userID, p):
		return store.Seat{}, fail(ErrNotFound, "viewer %s has no seat in broadcast %s (expired or left); request a viewer token, or send the seatKey returned with it", userID, broadcastID)
	}
	seat, err = s.store.ReserveSeat(ctx, store.SeatRequest{
		BroadcastID: broadcastID, UserID: userID, StageArn: p.StageArn, ParticipantID: p.ParticipantID,
		Now: s.now(), TTL: s.cfg.HeartbeatTimeout,
	})
	switch {
	case err == nil:
		s.log.Info("seat re-established by heartbeat", "broadcast", broadcastID, "stage", p.StageArn, "user", userID)
		s.observer.SeatOpened(seat, clientOf(ctx))
		return seat, nil
	case errors.Is(err, store.ErrFull), errors.Is(err, store.ErrNotEligible), errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrNotLive):
		return store.Seat{}, fail(ErrNotFound, "viewer %s has no seat in broadcast %s, and stage %s cannot take it back (%v); request a viewer token", userID, broadcastID, p.StageArn, err)
	}
	return store.Seat{}, failWrap(ErrUnavailable, err, "taking the seat back")
}

// Leave frees a viewer's seat. Leaving without a seat is no error: the
// viewer is gone either way. left says whether a seat was freed.
func (s *Service) Leave(ctx context.Context, broadcastID, userID string) (seat store.Seat, left bool, err error) {
	seat, err = s.store.ReleaseSeat(ctx, broadcastID, userID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Seat{}, false, nil
	}
	if err != nil {
		return store.Seat{}, false, failWrap(ErrUnavailable, err, "freeing the seat")
	}
	s.seatsChanged()
	s.observer.SeatClosed(seat, EndLeave, s.now())
	return seat, true, nil
}

// Rejoin is a viewer, whose token may still be valid, saying it is (back)
// on stageArn as participantID: it keeps its seat if the seat is that one,
// else it is seated there as that participant (recorded, not minted anew),
// giving up any other seat it held. Without a participant id it is a
// viewer token request.
func (s *Service) Rejoin(ctx context.Context, broadcastID, userID, stageArn, participantID string) (IssuedToken, error) {
	if participantID == "" {
		return s.ViewerToken(ctx, broadcastID, userID, stageArn)
	}
	owner := store.SeatOwner{ParticipantID: participantID, StageArn: stageArn}
	_, err := s.store.RenewSeat(ctx, broadcastID, userID, owner, s.now(), s.cfg.HeartbeatTimeout)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotOwner):
		old, err := s.store.ReleaseSeat(ctx, broadcastID, userID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return IssuedToken{}, failWrap(ErrUnavailable, err, "freeing the old seat")
		}
		if err == nil {
			s.observer.SeatClosed(old, EndMoved, s.now())
		}
		s.seatsChanged()
	case !errors.Is(err, store.ErrNotFound):
		return IssuedToken{}, failWrap(ErrUnavailable, err, "renewing the seat")
	}
	return s.seat(ctx, store.SeatRequest{
		BroadcastID:   broadcastID,
		UserID:        userID,
		StageArn:      stageArn,
		ParticipantID: participantID,
		TTL:           s.cfg.HeartbeatTimeout,
	})
}
