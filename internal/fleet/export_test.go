package fleet

import (
	"context"
	"time"
)

// ExpireSeatsNow runs one seat-expiry sweep, as Run does on its tick.
func (s *Service) ExpireSeatsNow(ctx context.Context) { s.expireSeats(ctx) }

// EndIdle ends the broadcast if it is still idle, as a pass that found it
// idle does after releasing the lock.
func (s *Service) EndIdle(ctx context.Context, broadcastID string) (Ended, error) {
	return s.endFound(ctx, broadcastID, endDue{idle: true})
}

// FinishEnd finishes the end begun at ending, as a pass that found its
// mark does after releasing the lock.
func (s *Service) FinishEnd(ctx context.Context, broadcastID string, ending time.Time) (Ended, error) {
	return s.endFound(ctx, broadcastID, endDue{ending: ending})
}
