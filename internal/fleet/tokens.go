package fleet

import (
	"context"
	"errors"
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
	req := store.SeatRequest{
		BroadcastID:   broadcastID,
		UserID:        userID,
		StageArn:      stageArn,
		ParticipantID: newParticipantID(),
		TTL:           s.cfg.HeartbeatTimeout,
	}
	arrived := s.now()
	seat, err := s.reserve(ctx, req)
	if err != nil {
		return IssuedToken{}, err
	}
	if seat.ParticipantID == req.ParticipantID {
		// The join rate measures arrivals, so a join counts as of when
		// the viewer asked: one that waited for a stage counts for
		// little, having been counted as waiting meanwhile. Counted when
		// seated, the bursts that new stages seat would measure how fast
		// stages come, not viewers, and feed scale-up on its own output.
		s.local(broadcastID).joins.addAt(arrived, s.now())
		s.kicks.kick(broadcastID)
	}
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
		if seat.ParticipantID == req.ParticipantID {
			if _, rerr := s.store.ReleaseSeat(context.WithoutCancel(ctx), broadcastID, userID); rerr != nil {
				s.log.Error("releasing seat after token failure", "broadcast", broadcastID, "user", userID, "error", rerr)
			}
			s.seatsChanged()
		}
		return IssuedToken{}, failWrap(ErrToken, err, "could not generate the viewer token")
	}
	return IssuedToken{
		Token:         tok.Token,
		ParticipantID: tok.ParticipantID,
		UserID:        userID,
		StageArn:      seat.StageArn,
		BroadcastID:   broadcastID,
		Capabilities:  []string{CapSubscribe},
		ExpiresAt:     tok.ExpiresAt,
	}, nil
}

// reserve takes a seat, waiting up to SeatWait while every seat is taken.
func (s *Service) reserve(ctx context.Context, req store.SeatRequest) (store.Seat, error) {
	deadline := s.now().Add(s.cfg.SeatWait)
	seat, full, err := s.tryReserve(ctx, req)
	if !full {
		return seat, err
	}
	l := s.local(req.BroadcastID)
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	for full {
		s.kicks.kick(req.BroadcastID)
		left := deadline.Sub(s.now())
		if left <= 0 {
			return store.Seat{}, s.noSeat(ctx, req.BroadcastID)
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
		seat, full, err = s.tryReserve(ctx, req)
	}
	return seat, err
}

// tryReserve makes one attempt at a seat; full says every seat is taken.
func (s *Service) tryReserve(ctx context.Context, req store.SeatRequest) (seat store.Seat, full bool, err error) {
	req.Now = s.now()
	seat, err = s.store.ReserveSeat(ctx, req)
	switch {
	case err == nil:
		return seat, false, nil
	case errors.Is(err, store.ErrFull):
		return store.Seat{}, true, nil
	case errors.Is(err, store.ErrNotLive):
		return store.Seat{}, false, fail(ErrNotLive, "broadcast %s has no live host; try again when the host is publishing", req.BroadcastID)
	case errors.Is(err, store.ErrNotFound):
		return store.Seat{}, false, fail(ErrNotFound, "stage %s is not a stage of broadcast %s", req.StageArn, req.BroadcastID)
	case errors.Is(err, store.ErrNotEligible):
		return store.Seat{}, false, fail(ErrNotFound, "stage %s does not take viewers now (it is not the origin or a replica with an active host replication)", req.StageArn)
	}
	return store.Seat{}, false, failWrap(ErrUnavailable, err, "taking a seat")
}

// noSeat is the answer to a viewer that waited SeatWait in vain: the
// broadcast is at MAX_STAGES, or every stage is full for now.
func (s *Service) noSeat(ctx context.Context, broadcastID string) error {
	retry := max(s.cfg.SeatWait, time.Second)
	if stages, err := s.store.ListStages(ctx, broadcastID); err == nil && managed(stages) >= s.cfg.MaxStages {
		return &Error{
			Kind:       ErrStageLimit,
			Msg:        "broadcast " + broadcastID + " is full and has reached its limit of stages (MAX_STAGES); try again later",
			RetryAfter: retry,
		}
	}
	return &Error{
		Kind:       ErrStageFull,
		Msg:        "every stage of broadcast " + broadcastID + " is full; try again shortly",
		RetryAfter: retry,
	}
}

// MediaServerToken gives a media server a publish and subscribe token for a
// stage.
func (s *Service) MediaServerToken(ctx context.Context, serverID, stageArn string) (IssuedToken, error) {
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

// Heartbeat renews a viewer's seat. A viewer that names its stage and
// participant id (those of its token) and whose seat is gone (Redis came
// back empty, or the lease ran out) takes a seat on that stage again, if
// it still takes viewers and has room: it goes on watching where it is.
func (s *Service) Heartbeat(ctx context.Context, broadcastID, userID, stageArn, participantID string) (store.Seat, error) {
	seat, err := s.store.RenewSeat(ctx, broadcastID, userID, s.now(), s.cfg.HeartbeatTimeout)
	if errors.Is(err, store.ErrNotFound) && stageArn != "" && participantID != "" {
		seat, err = s.store.ReserveSeat(ctx, store.SeatRequest{
			BroadcastID: broadcastID, UserID: userID, StageArn: stageArn, ParticipantID: participantID,
			Now: s.now(), TTL: s.cfg.HeartbeatTimeout,
		})
		switch {
		case err == nil:
			s.log.Info("seat re-established by heartbeat", "broadcast", broadcastID, "stage", stageArn, "user", userID)
			return seat, nil
		case errors.Is(err, store.ErrFull), errors.Is(err, store.ErrNotEligible), errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrNotLive):
			return store.Seat{}, fail(ErrNotFound, "viewer %s has no seat in broadcast %s, and stage %s cannot take it back (%v); request a viewer token", userID, broadcastID, stageArn, err)
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		return store.Seat{}, fail(ErrNotFound, "viewer %s has no seat in broadcast %s (expired or left); request a viewer token", userID, broadcastID)
	}
	if err != nil {
		return store.Seat{}, failWrap(ErrUnavailable, err, "renewing the seat")
	}
	return seat, nil
}

// Leave frees a viewer's seat.
func (s *Service) Leave(ctx context.Context, broadcastID, userID string) (store.Seat, error) {
	seat, err := s.store.ReleaseSeat(ctx, broadcastID, userID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Seat{}, fail(ErrNotFound, "viewer %s has no seat in broadcast %s", userID, broadcastID)
	}
	if err != nil {
		return store.Seat{}, failWrap(ErrUnavailable, err, "freeing the seat")
	}
	s.seatsChanged()
	return seat, nil
}

// Rejoin frees the viewer's seat, if any, and takes one again.
func (s *Service) Rejoin(ctx context.Context, broadcastID, userID, stageArn string) (IssuedToken, error) {
	if _, err := s.store.ReleaseSeat(ctx, broadcastID, userID); err == nil {
		s.seatsChanged()
	} else if !errors.Is(err, store.ErrNotFound) {
		return IssuedToken{}, failWrap(ErrUnavailable, err, "freeing the old seat")
	}
	return s.ViewerToken(ctx, broadcastID, userID, stageArn)
}
