package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
)

// endFleet records the context EndBroadcast ran with.
type endFleet struct {
	oaFleet
	ctxErr   error
	deadline time.Time
}

func (f *endFleet) EndBroadcast(ctx context.Context, b, reason string) (fleet.Ended, error) {
	f.ctxErr = ctx.Err()
	f.deadline, _ = ctx.Deadline()
	return f.oaFleet.EndBroadcast(ctx, b, reason)
}

// TestEndOutlivesItsRequest: a caller who hangs up does not stop a
// broadcast's end half-way; the end is bounded by endTimeout instead.
func TestEndOutlivesItsRequest(t *testing.T) {
	f := &endFleet{}
	h := New(Options{SkipAuth: true}, f)
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // the caller is gone before the end starts
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("DELETE", "/api/broadcasts/default", nil).WithContext(ctx))
	if f.ctxErr != nil {
		t.Errorf("the end ran with its context done (%v); want it to outlive the request", f.ctxErr)
	}
	if left := time.Until(f.deadline); left <= endTimeout-time.Minute || left > endTimeout {
		t.Errorf("the end's deadline is %v away, want endTimeout (%v)", left, endTimeout)
	}
	if rec.Code != http.StatusOK {
		t.Errorf("DELETE answered %d, want 200", rec.Code)
	}
}
