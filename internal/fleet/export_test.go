package fleet

import "context"

// ExpireSeatsNow runs one seat-expiry sweep, as Run does on its tick.
func (s *Service) ExpireSeatsNow(ctx context.Context) { s.expireSeats(ctx) }

// EndIdle ends the broadcast if it is still idle, as a pass that found it
// idle does after releasing the lock.
func (s *Service) EndIdle(ctx context.Context, broadcastID string) (Ended, error) {
	return s.endIdle(ctx, broadcastID)
}
