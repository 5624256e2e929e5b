package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/stagefleet/stagefleet/internal/history"
)

// History is what the API reads of the viewing history.
type History interface {
	History(ctx context.Context, userID string, limit int, cursor string) ([]history.Session, string, int, error)
	StageStats(ctx context.Context, stageArn string, since time.Time) (history.Stats, error)
	Series(ctx context.Context, broadcastID string, from, to time.Time, step time.Duration) ([]history.Point, error)
	BroadcastStats(ctx context.Context, broadcastID string) (history.BroadcastStats, error)
}

// history answers with the history, or 404 when it is off.
func (s *server) history() (History, *apiError) {
	if s.opts.History == nil {
		return nil, &apiError{status: http.StatusNotFound, code: CodeNotFound, message: "viewing history is off (HISTORY=off)"}
	}
	return s.opts.History, nil
}

// historyFail maps a history error: bad input is the caller's (400), the
// rest the database's (500, logged).
func (s *server) historyFail(err error) *apiError {
	if errors.Is(err, history.ErrInvalid) {
		return badRequest("%v", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("viewing history read timed out", "timeout", historyReadTimeout, "error", err)
		return &apiError{status: http.StatusInternalServerError, code: CodeInternal,
			message: fmt.Sprintf("the viewing history did not answer within %v: ask for a shorter range", historyReadTimeout)}
	}
	s.log.Error("viewing history", "error", err)
	return &apiError{status: http.StatusInternalServerError, code: CodeInternal, message: "the viewing history could not be read"}
}

// historyReadTimeout bounds one history read: the write timeout does not
// cancel a handler, and a read over months of sessions would otherwise run
// to its end while holding one of the database's few connections.
const historyReadTimeout = 10 * time.Second

// historyCtx is the request's context with historyReadTimeout.
func historyCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), historyReadTimeout)
}

func rfc3339(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(time.RFC3339)
}

// viewerHistory is the previous server's GET /api/viewer/history/{userId}:
// the viewer's sessions, newest first, a page at a time.
func (s *server) viewerHistory(w http.ResponseWriter, r *http.Request) *apiError {
	h, e := s.history()
	if e != nil {
		return e
	}
	userID := r.PathValue("userId")
	var c check
	c.userID("userId", userID)
	limit, le := wholeParam(r, "limit", history.DefaultPageSize, history.MaxPageSize)
	if e := c.err(); e != nil {
		return e
	}
	if le != nil {
		return le
	}
	ctx, cancel := historyCtx(r)
	defer cancel()
	page, next, total, err := h.History(ctx, userID, limit, r.URL.Query().Get("cursor"))
	if err != nil {
		return s.historyFail(err)
	}
	items := make([]map[string]any, len(page))
	for i, ses := range page {
		items[i] = map[string]any{
			"id":                   ses.ID,
			"sessionId":            ses.SessionID,
			"userId":               ses.UserID,
			"broadcastId":          ses.BroadcastID,
			"stageArn":             ses.StageArn,
			"participantId":        ses.ParticipantID,
			"joinedAt":             rfc3339(ses.JoinedAt),
			"leftAt":               rfc3339(ses.LeftAt),
			"watchDurationSeconds": int(ses.WatchDuration.Seconds()),
			"endReason":            ses.EndReason,
		}
	}
	data := map[string]any{"userId": userID, "totalRecords": total, "history": items}
	if next != "" {
		data["nextCursor"] = next
	}
	ok(w, http.StatusOK, data, "")
	return nil
}

// viewerStats is the previous server's GET /api/viewer/stats/{stageArn}:
// the stage's sessions over the last ?days= (7).
func (s *server) viewerStats(w http.ResponseWriter, r *http.Request) *apiError {
	h, e := s.history()
	if e != nil {
		return e
	}
	arn, e := pathArn(r.PathValue("stageArn"))
	if e != nil {
		return e
	}
	days, e := wholeParam(r, "days", 7, 3650)
	if e != nil {
		return e
	}
	ctx, cancel := historyCtx(r)
	defer cancel()
	st, err := h.StageStats(ctx, arn, time.Now().AddDate(0, 0, -days))
	if err != nil {
		return s.historyFail(err)
	}
	if st.TotalViews == 0 {
		msg := "no viewing recorded on this stage in the last " + strconv.Itoa(days) + " days"
		ok(w, http.StatusOK, map[string]any{"stageArn": arn, "days": days, "message": msg}, msg)
		return nil
	}
	ok(w, http.StatusOK, map[string]any{"stageArn": arn, "days": days, "stats": map[string]any{
		"stageArn":         arn,
		"totalViews":       st.TotalViews,
		"uniqueViewers":    st.UniqueViewers,
		"avgWatchDuration": st.AvgWatchDuration.Seconds(),
		"maxWatchDuration": int(st.MaxWatchDuration.Seconds()),
		"totalWatchTime":   int(st.TotalWatchTime.Seconds()),
	}}, "")
	return nil
}

// statsHistory is a time series of a broadcast's viewers and stages from
// the snapshots: ?from=&to= (RFC 3339; default the last hour) and ?step=
// (a duration; default 1m).
func (s *server) statsHistory(w http.ResponseWriter, r *http.Request) *apiError {
	h, e := s.history()
	if e != nil {
		return e
	}
	q := r.URL.Query()
	var c check
	b := c.broadcast(q.Get("broadcastId"))
	to, from, step := time.Now(), time.Time{}, time.Minute
	if v := q.Get("to"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			c.problem("to must be an RFC 3339 time such as 2026-12-03T05:00:00Z")
		}
		to = t
	}
	from = to.Add(-time.Hour)
	if v := q.Get("from"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			c.problem("from must be an RFC 3339 time such as 2026-12-03T04:00:00Z")
		}
		from = t
	}
	if v := q.Get("step"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			c.problem("step must be a positive duration such as 1m or 30s")
		}
		step = d
	}
	if !from.Before(to) {
		c.problem("from must be before to")
	}
	if e := c.err(); e != nil {
		return e
	}
	ctx, cancel := historyCtx(r)
	defer cancel()
	points, err := h.Series(ctx, b, from, to, step)
	if err != nil {
		return s.historyFail(err)
	}
	out := make([]map[string]any, len(points))
	for i, p := range points {
		out[i] = map[string]any{"at": rfc3339(p.At), "viewers": p.Viewers, "stages": p.Stages}
	}
	ok(w, http.StatusOK, map[string]any{"broadcastId": b, "from": rfc3339(from), "to": rfc3339(to), "step": step.String(), "points": out}, "")
	return nil
}

// broadcastStats is one broadcast's totals from the history.
func (s *server) broadcastStats(w http.ResponseWriter, r *http.Request) *apiError {
	h, e := s.history()
	if e != nil {
		return e
	}
	var c check
	b := c.broadcast(r.PathValue("broadcastId"))
	if e := c.err(); e != nil {
		return e
	}
	ctx, cancel := historyCtx(r)
	defer cancel()
	st, err := h.BroadcastStats(ctx, b)
	if err != nil {
		return s.historyFail(err)
	}
	ok(w, http.StatusOK, map[string]any{
		"broadcastId":           b,
		"peakViewers":           st.PeakViewers,
		"peakAt":                rfc3339(st.PeakAt),
		"uniqueViewers":         st.UniqueViewers,
		"sessions":              st.Sessions,
		"totalWatchTimeSeconds": int(st.TotalWatchTime.Seconds()),
		"avgWatchTimeSeconds":   st.AvgWatchTime.Seconds(),
		"stagesUsed":            st.Stages,
	}, "")
	return nil
}
