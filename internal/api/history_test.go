package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/history"
)

// deadlineHistory answers every read with what its context allows: it
// checks the read has a deadline, and fails as a read past it would.
type deadlineHistory struct{ t *testing.T }

func (d deadlineHistory) wait(ctx context.Context) error {
	dl, ok := ctx.Deadline()
	if !ok || time.Until(dl) > historyReadTimeout {
		d.t.Errorf("history read with deadline %v (set %v); want one within %v", dl, ok, historyReadTimeout)
	}
	return context.DeadlineExceeded
}

func (d deadlineHistory) History(ctx context.Context, _ string, _ int, _ string) ([]history.Session, string, int, error) {
	return nil, "", 0, d.wait(ctx)
}
func (d deadlineHistory) StageStats(ctx context.Context, _ string, _ time.Time) (history.Stats, error) {
	return history.Stats{}, d.wait(ctx)
}
func (d deadlineHistory) Series(ctx context.Context, _ string, _, _ time.Time, _ time.Duration) ([]history.Point, error) {
	return nil, d.wait(ctx)
}
func (d deadlineHistory) BroadcastStats(ctx context.Context, _ string) (history.BroadcastStats, error) {
	return history.BroadcastStats{}, d.wait(ctx)
}

// TestHistoryReadsBounded: every history route reads under
// historyReadTimeout, and a read that runs past it says so.
func TestHistoryReadsBounded(t *testing.T) {
	h := New(Options{SkipAuth: true, History: deadlineHistory{t}}, &oaFleet{})
	for _, path := range []string{
		"/api/viewer/history/viewer-1",
		"/api/viewer/stats/arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456",
		"/api/stats/history",
		"/api/stats/broadcasts/default",
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		var body struct {
			Error struct{ Message string } `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if rec.Code != http.StatusInternalServerError || !strings.Contains(body.Error.Message, "did not answer within") {
			t.Errorf("GET %s = %d %q; want 500 saying the history did not answer in time", path, rec.Code, body.Error.Message)
		}
	}
}
