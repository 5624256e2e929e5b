package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"time"

	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/store"
)

// SeatObserver hears of every seat taken and every seat ended, for the
// viewing history. It is called on the join path: it must not block or do
// I/O (queue and return).
type SeatObserver interface {
	// SeatOpened: a viewer took seat; client is who asked, when known.
	SeatOpened(seat store.Seat, client Client)
	// SeatClosed: the seat ended for reason; lastSeen is the last moment
	// the viewer was known present (its last heartbeat, for an expiry).
	SeatClosed(seat store.Seat, reason string, lastSeen time.Time)
}

// Why seats end: the viewing history's reasons, which it stores.
const (
	EndLeave          = history.EndLeave
	EndExpired        = history.EndExpired
	EndMoved          = history.EndMoved
	EndStageRemoved   = history.EndStageRemoved
	EndBroadcastEnded = history.EndBroadcastEnded
)

// SessionID names the viewing a seat stands for: the same on every
// instance and after a restart, so that whichever instance ends the seat
// closes the session the one that seated it opened, and writes are
// idempotent on it.
func SessionID(seat store.Seat) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%d", seat.BroadcastID, seat.UserID, seat.ParticipantID, seat.TakenAt.UnixMicro()))
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:16])
}

// Client is who asked for a seat, as the API saw them: recorded with the
// viewing session.
type Client struct {
	UserAgent string
	IP        string
	// Country is an ISO 3166 code, when a trusted proxy told it.
	Country string
}

type clientKey struct{}

// WithClient tells the fleet who is asking for a seat with ctx.
func WithClient(ctx context.Context, c Client) context.Context {
	return context.WithValue(ctx, clientKey{}, c)
}

func clientOf(ctx context.Context) Client {
	c, _ := ctx.Value(clientKey{}).(Client)
	return c
}

type noObserver struct{}

func (noObserver) SeatOpened(store.Seat, Client)            {}
func (noObserver) SeatClosed(store.Seat, string, time.Time) {}

// CloseSessions tells the observer that every seat held is closing, as
// the broadcasts end: for a store that goes with the process (the memory
// store), whose seats no later process will expire or close.
func (s *Service) CloseSessions(ctx context.Context) error {
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return fmt.Errorf("listing broadcasts: %w", err)
	}
	for _, b := range bs {
		seats, err := s.store.ListSeats(ctx, b.ID)
		if err != nil {
			return fmt.Errorf("listing the seats of %s: %w", b.ID, err)
		}
		s.seatsEnded(seats, EndBroadcastEnded)
	}
	return nil
}

// seatsEnded tells the observer of seats freed with their stage or
// broadcast: the viewers were there until now.
func (s *Service) seatsEnded(seats []store.Seat, reason string) {
	now := s.now()
	for _, seat := range seats {
		s.observer.SeatClosed(seat, reason, now)
	}
}
