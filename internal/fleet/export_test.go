package fleet

import "context"

// ExpireSeatsNow runs one seat-expiry sweep, as Run does on its tick.
func (s *Service) ExpireSeatsNow(ctx context.Context) { s.expireSeats(ctx) }
