package api

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

//go:embed openapi.json
var openAPIDoc []byte

func (s *server) openAPI(w http.ResponseWriter, _ *http.Request) *apiError {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPIDoc)
	return nil
}

func (s *server) health(w http.ResponseWriter, r *http.Request) *apiError {
	h := s.opts.Health(r.Context())
	code := http.StatusOK
	if h.Status == HealthUnhealthy {
		code = http.StatusServiceUnavailable
	}
	ok(w, code, h, "")
	return nil
}

// root names the service and where its API is described.
func (s *server) root(w http.ResponseWriter, _ *http.Request) *apiError {
	ok(w, http.StatusOK, map[string]any{
		"name":    "stagefleet",
		"version": s.opts.Version,
		"links": map[string]string{
			"openapi": "/openapi.json",
			"health":  "/health",
			"docs":    "docs/api.md in the stagefleet repository; /openapi.json describes every route and field",
		},
	}, "stagefleet fans one live IVS real-time host out to as many viewers as come")
	return nil
}

// tokenData is a token response, with the previous server's field names.
type tokenData struct {
	Token         string   `json:"token"`
	ParticipantID string   `json:"participantId"`
	UserID        string   `json:"userId,omitempty"`
	ServerID      string   `json:"serverId,omitempty"`
	StageArn      string   `json:"stageArn"`
	BroadcastID   string   `json:"broadcastId,omitempty"`
	Capabilities  []string `json:"capabilities"`
	ExpiresAt     string   `json:"expiresAt"`
	ExpiresIn     int      `json:"expiresIn"`
	WhipEndpoint  string   `json:"whipEndpoint,omitempty"`
}

func (s *server) tokenData(t fleet.IssuedToken) tokenData {
	return tokenData{
		Token:         t.Token,
		ParticipantID: t.ParticipantID,
		UserID:        t.UserID,
		StageArn:      t.StageArn,
		BroadcastID:   t.BroadcastID,
		Capabilities:  t.Capabilities,
		ExpiresAt:     t.ExpiresAt.UTC().Format(time.RFC3339),
		ExpiresIn:     int(math.Round(t.ExpiresAt.Sub(s.fleet.Now()).Seconds())),
		WhipEndpoint:  t.WhipURL,
	}
}

type userRequest struct {
	UserID      string `json:"userId"`
	BroadcastID string `json:"broadcastId"`
	StageArn    string `json:"stageArn"`
	// ParticipantID (heartbeat, rejoin) is the viewer token's.
	ParticipantID string `json:"participantId"`
	// SeatKey (heartbeat) is the one returned with the viewer token.
	SeatKey string `json:"seatKey"`
}

// viewerTokenData is a viewer token response: the token, and the seat it
// holds.
type viewerTokenData struct {
	tokenData
	// SeatKey proves the seat to a heartbeat after the store lost it.
	SeatKey        string `json:"seatKey"`
	IsNewViewer    bool   `json:"isNewViewer"`
	CurrentViewers int    `json:"currentViewers"`
}

func (s *server) viewerTokenData(t fleet.IssuedToken) viewerTokenData {
	return viewerTokenData{tokenData: s.tokenData(t), SeatKey: t.SeatKey, IsNewViewer: t.NewSeat, CurrentViewers: t.StageViewers}
}

// maxUserAgent bounds the user agent kept with a viewing session.
const maxUserAgent = 512

// withClient is the request's context telling the fleet who asks: for the
// viewing history's user_agent, ip_address and country_code. The country
// is a CDN's header (CloudFront-Viewer-Country), believed only from a
// trusted proxy.
func (s *server) withClient(r *http.Request) context.Context {
	if s.opts.History == nil {
		// Only the viewing history records who asked.
		return r.Context()
	}
	c := fleet.Client{UserAgent: r.UserAgent(), IP: s.proxies.clientIP(r)}
	if len(c.UserAgent) > maxUserAgent {
		c.UserAgent = c.UserAgent[:maxUserAgent]
	}
	if s.proxies.viaTrusted(r) {
		if cc := r.Header.Get("CloudFront-Viewer-Country"); len(cc) == 2 {
			c.Country = strings.ToUpper(cc)
		}
	}
	return fleet.WithClient(r.Context(), c)
}

// publishInstructions says how a host publishes with its token: the
// previous server's instructions field.
type publishInstructions struct {
	WhipEndpoint    string `json:"whipEndpoint"`
	OBS             string `json:"obs"`
	WebBroadcastSDK string `json:"webBroadcastSdk"`
}

func instructionsFor(t fleet.IssuedToken) publishInstructions {
	return publishInstructions{
		WhipEndpoint: t.WhipURL,
		OBS: "OBS 30 or later: Settings > Stream > Service: WHIP, Server: " + t.WhipURL +
			", Bearer Token: this token. Use H.264 video without B-frames and Opus audio.",
		WebBroadcastSDK: "IVS Web Broadcast SDK: new IVSBroadcastClient.Stage(token, strategy).join(), with a strategy that publishes the local camera and microphone.",
	}
}

func (s *server) publisherToken(w http.ResponseWriter, r *http.Request) *apiError {
	var in userRequest
	if e := decode(r, &in); e != nil {
		return e
	}
	var c check
	c.userID("userId", in.UserID)
	b := c.broadcast(in.BroadcastID)
	if e := c.err(); e != nil {
		return e
	}
	t, err := s.fleet.PublisherToken(r.Context(), b, in.UserID)
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, struct {
		tokenData
		Instructions publishInstructions `json:"instructions"`
	}{s.tokenData(t), instructionsFor(t)}, "Publisher token generated")
	return nil
}

// viewerRequest reads a viewer request: userId, optional broadcastId and
// stageArn.
func viewerRequest(r *http.Request) (userRequest, *apiError) {
	var in userRequest
	if e := decode(r, &in); e != nil {
		return in, e
	}
	var c check
	c.userID("userId", in.UserID)
	in.BroadcastID = c.broadcast(in.BroadcastID)
	c.stageArn("stageArn", in.StageArn, false)
	if in.ParticipantID != "" {
		c.participantID("participantId", in.ParticipantID)
	}
	if len(in.SeatKey) > 128 {
		c.problem("seatKey must be the one returned with the viewer token")
	}
	return in, c.err()
}

func (s *server) viewerToken(w http.ResponseWriter, r *http.Request) *apiError {
	in, e := viewerRequest(r)
	if e != nil {
		return e
	}
	t, err := s.fleet.ViewerToken(s.withClient(r), in.BroadcastID, in.UserID, in.StageArn)
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, s.viewerTokenData(t), "Viewer token generated")
	return nil
}

func (s *server) rejoin(w http.ResponseWriter, r *http.Request) *apiError {
	in, e := viewerRequest(r)
	if e != nil {
		return e
	}
	t, err := s.fleet.Rejoin(s.withClient(r), in.BroadcastID, in.UserID, in.StageArn, in.ParticipantID)
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, s.viewerTokenData(t), "Viewer rejoined")
	return nil
}

func (s *server) mediaServerToken(w http.ResponseWriter, r *http.Request) *apiError {
	if s.opts.InternalSecret == "" {
		return &apiError{status: http.StatusForbidden, code: CodeForbidden, message: "media server tokens are disabled: INTERNAL_SECRET is not set"}
	}
	if !secretEqual(r.Header.Get("x-internal-secret"), s.opts.InternalSecret) {
		return &apiError{status: http.StatusForbidden, code: CodeForbidden, message: "missing or invalid x-internal-secret header"}
	}
	var in struct {
		ServerID string `json:"serverId"`
		StageArn string `json:"stageArn"`
	}
	if e := decode(r, &in); e != nil {
		return e
	}
	var c check
	c.userID("serverId", in.ServerID)
	c.stageArn("stageArn", in.StageArn, true)
	if e := c.err(); e != nil {
		return e
	}
	t, err := s.fleet.MediaServerToken(r.Context(), in.ServerID, in.StageArn)
	if err != nil {
		return s.fail(err)
	}
	d := s.tokenData(t)
	d.UserID, d.ServerID = "", in.ServerID
	ok(w, http.StatusOK, d, "Media server token generated")
	return nil
}

// heartbeat renews the seat of the viewer token's participant: the
// participant id is required, since a seat is renewed only by its owner.
func (s *server) heartbeat(w http.ResponseWriter, r *http.Request) *apiError {
	in, e := viewerRequest(r)
	if e != nil {
		return e
	}
	if in.ParticipantID == "" {
		return &apiError{status: http.StatusBadRequest, code: CodeValidation,
			message: "missing required fields: participantId (the viewer token's; a heartbeat renews only that participant's seat)",
			details: map[string]any{"missingFields": []string{"participantId"}}}
	}
	seat, err := s.fleet.Heartbeat(s.withClient(r), in.BroadcastID, in.UserID, fleet.SeatProof{
		StageArn: in.StageArn, ParticipantID: in.ParticipantID, SeatKey: in.SeatKey,
	})
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, struct {
		seatData
		HeartbeatUpdated bool `json:"heartbeatUpdated"`
	}{s.seatData(seat), true}, "")
	return nil
}

// leave frees the viewer's seat; leaving without one is no error.
func (s *server) leave(w http.ResponseWriter, r *http.Request) *apiError {
	in, e := viewerRequest(r)
	if e != nil {
		return e
	}
	seat, left, err := s.fleet.Leave(r.Context(), in.BroadcastID, in.UserID)
	if err != nil {
		return s.fail(err)
	}
	data := map[string]any{"userId": in.UserID, "broadcastId": in.BroadcastID, "viewerLeft": left}
	if left {
		d := s.seatData(seat)
		data["stageArn"], data["participantId"], data["joinedAt"], data["watchSeconds"] = d.StageArn, d.ParticipantID, d.JoinedAt, d.WatchSeconds
	}
	msg := "Viewer left"
	if !left {
		msg = "Viewer held no seat"
	}
	ok(w, http.StatusOK, data, msg)
	return nil
}

// endBroadcast takes a broadcast off the air: its stages are deleted and
// its seats freed.
func (s *server) endBroadcast(w http.ResponseWriter, r *http.Request) *apiError {
	var c check
	b := c.broadcast(r.PathValue("broadcastId"))
	if e := c.err(); e != nil {
		return e
	}
	// Once begun, an end runs to its finish even if the caller hangs up
	// (or HTTP_WRITE_TIMEOUT cuts the answer): stopped half-way, the
	// broadcast would keep stages and seats until ended again. A million
	// seats take about a minute (docs/scale.md).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), endTimeout)
	defer cancel()
	end, err := s.fleet.EndBroadcast(ctx, b, "ended through the API")
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, map[string]any{
		"broadcastId":   end.BroadcastID,
		"ended":         true,
		"stagesDeleted": end.StagesDeleted,
		"seatsFreed":    end.SeatsFreed,
	}, "Broadcast ended")
	return nil
}

// endTimeout bounds one end of a broadcast through the API.
const endTimeout = 10 * time.Minute

type seatData struct {
	UserID        string `json:"userId"`
	BroadcastID   string `json:"broadcastId"`
	StageArn      string `json:"stageArn"`
	ParticipantID string `json:"participantId"`
	JoinedAt      string `json:"joinedAt"`
	ExpiresAt     string `json:"expiresAt"`
	// LastHeartbeat is when the lease was last renewed (or taken): it
	// ends one lease later.
	LastHeartbeat string `json:"lastHeartbeat"`
	WatchSeconds  int    `json:"watchSeconds"`
}

func (s *server) seatData(seat store.Seat) seatData {
	return seatData{
		UserID:        seat.UserID,
		BroadcastID:   seat.BroadcastID,
		StageArn:      seat.StageArn,
		ParticipantID: seat.ParticipantID,
		JoinedAt:      seat.TakenAt.UTC().Format(time.RFC3339),
		ExpiresAt:     seat.ExpiresAt.UTC().Format(time.RFC3339),
		LastHeartbeat: seat.ExpiresAt.Add(-s.fleet.SeatLease()).UTC().Format(time.RFC3339),
		// Whole seconds from TakenAt's second, as the broadcast's totals
		// count them.
		WatchSeconds: int(s.fleet.Now().Unix() - seat.TakenAt.Unix()),
	}
}

func (s *server) viewerList(w http.ResponseWriter, r *http.Request) *apiError {
	arn, e := pathArn(r.PathValue("stageArn"))
	if e != nil {
		return e
	}
	limit, e := listLimit(r)
	if e != nil {
		return e
	}
	seats, next, rec, err := s.fleet.SeatsPage(r.Context(), arn, r.URL.Query().Get("cursor"), limit)
	if err != nil {
		return s.fail(err)
	}
	viewers := make([]seatData, len(seats))
	for i, seat := range seats {
		viewers[i] = s.seatData(seat)
	}
	// Every seat's lease is live: total and active are one number, the
	// stage's, kept under both of the previous server's names.
	data := map[string]any{"stageArn": arn, "viewers": viewers, "count": len(viewers),
		"totalViewers": rec.Seats, "activeViewers": rec.Seats}
	if next != "" {
		data["nextCursor"] = next
	}
	ok(w, http.StatusOK, data, "")
	return nil
}

// A page of viewers: 1,000 unless ?limit= says otherwise, at most 10,000
// (a stage's default capacity).
const (
	defaultListLimit = 1000
	maxListLimit     = 10_000
)

// listLimit reads a page's ?limit=.
func listLimit(r *http.Request) (int, *apiError) {
	return wholeParam(r, "limit", defaultListLimit, maxListLimit)
}

// wholeParam reads the query parameter name: a whole number from 1 to
// most, def when it is absent.
func wholeParam(r *http.Request, name string, def, most int) (int, *apiError) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > most {
		return 0, badRequest("%s must be a whole number from 1 to %d", name, most)
	}
	return n, nil
}

// formatDuration writes seconds as H:MM:SS.
func formatDuration(seconds int) string {
	return fmt.Sprintf("%d:%02d:%02d", seconds/3600, seconds/60%60, seconds%60)
}

func (s *server) viewerDuration(w http.ResponseWriter, r *http.Request) *apiError {
	var c check
	q := r.URL.Query()
	b := c.broadcast(q.Get("broadcastId"))
	userID, stageArn := q.Get("userId"), q.Get("stageArn")
	if userID != "" {
		c.userID("userId", userID)
	}
	c.stageArn("stageArn", stageArn, false)
	if e := c.err(); e != nil {
		return e
	}
	if userID != "" {
		return s.viewerWatchTime(w, r, b, userID, stageArn)
	}
	limit, e := listLimit(r)
	if e != nil {
		return e
	}
	// The totals are the whole broadcast's, read without its seats; the
	// viewers come a page at a time.
	n, total, err := s.fleet.WatchTotals(r.Context(), b)
	if err != nil {
		return s.fail(err)
	}
	seats, next, err := s.fleet.BroadcastSeatsPage(r.Context(), b, r.URL.Query().Get("cursor"), limit)
	if err != nil {
		return s.fail(err)
	}
	viewers := make([]seatData, len(seats))
	for i, seat := range seats {
		viewers[i] = s.seatData(seat)
	}
	avg := 0.0
	if n > 0 {
		avg = float64(total) / float64(n)
	}
	data := map[string]any{"broadcastId": b, "viewers": viewers, "count": len(viewers), "totalViewers": n,
		"totalSeconds": total, "averageSeconds": avg}
	if next != "" {
		data["nextCursor"] = next
	}
	ok(w, http.StatusOK, data, "")
	return nil
}

// viewerWatchTime is the previous server's form: one viewer's watch time
// on its seat (on stageArn, when given), 0 when it has none.
func (s *server) viewerWatchTime(w http.ResponseWriter, r *http.Request, b, userID, stageArn string) *apiError {
	seat, has, err := s.fleet.Seat(r.Context(), b, userID)
	if err != nil {
		return s.fail(err)
	}
	data := map[string]any{"userId": userID, "broadcastId": b, "stageArn": stageArn, "watchDurationSeconds": 0,
		"watchDurationFormatted": formatDuration(0), "hasSeat": false}
	if has && (stageArn == "" || seat.StageArn == stageArn) {
		d := s.seatData(seat)
		data["stageArn"], data["watchDurationSeconds"], data["watchDurationFormatted"] = seat.StageArn, d.WatchSeconds, formatDuration(d.WatchSeconds)
		data["hasSeat"], data["joinedAt"] = true, d.JoinedAt
	}
	ok(w, http.StatusOK, data, "")
	return nil
}

type replicationData struct {
	ParticipantID       string `json:"participantId"`
	SourceStageArn      string `json:"sourceStageArn"`
	DestinationStageArn string `json:"destinationStageArn"`
	State               string `json:"state"`
	Reason              string `json:"reason,omitempty"`
	UpdatedAt           string `json:"updatedAt"`
}

func replicationOf(r store.Replication) replicationData {
	return replicationData{
		ParticipantID:       r.ParticipantID,
		SourceStageArn:      r.SourceArn,
		DestinationStageArn: r.DestArn,
		State:               r.State,
		Reason:              r.Reason,
		UpdatedAt:           r.UpdatedAt.UTC().Format(time.RFC3339),
	}
}

type stageData struct {
	Arn         string     `json:"arn"`
	StageArn    string     `json:"stageArn"`
	Name        string     `json:"name"`
	StageName   string     `json:"stageName"`
	BroadcastID string     `json:"broadcastId"`
	Role        store.Role `json:"role"`
	Capacity    int        `json:"capacity"`
	Seats       int        `json:"seats"`
	// ViewerCount, AutoScaled and IsMasterStage are the previous server's
	// names: seats, a replica stagefleet made, the origin.
	ViewerCount     int               `json:"viewerCount"`
	AutoScaled      bool              `json:"autoScaled"`
	IsMasterStage   bool              `json:"isMasterStage"`
	Seatable        bool              `json:"seatable"`
	ActiveSessionID string            `json:"activeSessionId,omitempty"`
	Tags            map[string]string `json:"tags"`
	Endpoints       *endpointsData    `json:"endpoints,omitempty"`
	Replications    []replicationData `json:"replications"`
	CreatedAt       string            `json:"createdAt"`
}

// endpointsData are a stage's endpoints as IVS's GetStage names them.
type endpointsData struct {
	Events string `json:"events"`
	Whip   string `json:"whip"`
	Rtmp   string `json:"rtmp"`
	Rtmps  string `json:"rtmps"`
}

func stageOf(v fleet.StageView) stageData {
	d := stageData{
		Arn:             v.Arn,
		StageArn:        v.Arn,
		Name:            v.Name,
		StageName:       v.Name,
		BroadcastID:     v.BroadcastID,
		Role:            v.Role,
		Capacity:        v.Capacity,
		Seats:           v.Seats,
		ViewerCount:     v.Seats,
		AutoScaled:      v.Role == store.RoleReplica,
		IsMasterStage:   v.Role == store.RoleOrigin,
		Seatable:        v.Seatable,
		ActiveSessionID: v.ActiveSessionID,
		Tags:            v.Tags,
		Replications:    []replicationData{},
		CreatedAt:       v.CreatedAt.UTC().Format(time.RFC3339),
	}
	if d.Tags == nil {
		d.Tags = map[string]string{}
	}
	if e := v.Endpoints; e != (fleet.IVSEndpoints{}) {
		d.Endpoints = &endpointsData{Events: e.Events, Whip: e.Whip, Rtmp: e.Rtmp, Rtmps: e.Rtmps}
	}
	for _, r := range v.Replications {
		d.Replications = append(d.Replications, replicationOf(r))
	}
	return d
}

func (s *server) stageList(w http.ResponseWriter, r *http.Request) *apiError {
	var c check
	b := c.broadcast(r.URL.Query().Get("broadcastId"))
	if e := c.err(); e != nil {
		return e
	}
	views, err := s.fleet.Stages(r.Context(), b)
	if err != nil {
		return s.fail(err)
	}
	stages := make([]stageData, len(views))
	for i, v := range views {
		stages[i] = stageOf(v)
	}
	ok(w, http.StatusOK, map[string]any{"broadcastId": b, "stages": stages, "totalStages": len(stages)}, "")
	return nil
}

func (s *server) masterInfo(w http.ResponseWriter, r *http.Request) *apiError {
	var c check
	b := c.broadcast(r.URL.Query().Get("broadcastId"))
	if e := c.err(); e != nil {
		return e
	}
	v, err := s.fleet.Origin(r.Context(), b)
	if err != nil {
		return s.fail(err)
	}
	hosts, err := s.fleet.Hosts(r.Context(), b)
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, map[string]any{"stage": stageOf(v), "hosts": hostsOf(hosts)}, "")
	return nil
}

func (s *server) createStage(w http.ResponseWriter, r *http.Request) *apiError {
	var in struct {
		Name        string            `json:"name"`
		Tags        map[string]string `json:"tags"`
		BroadcastID string            `json:"broadcastId"`
	}
	if e := decode(r, &in); e != nil {
		return e
	}
	var c check
	if c.required("name", in.Name) && !stageNamePattern.MatchString(in.Name) {
		c.problem("name must be 1 to 128 letters, digits, '-' or '_'")
	}
	b := c.broadcast(in.BroadcastID)
	if len(in.Tags) > 40 {
		c.problem("tags: at most 40 (stagefleet adds its own)")
	}
	for k, v := range in.Tags {
		if k == "" || len(k) > 128 || len(v) > 256 {
			c.problem("tags: keys must be 1 to 128 characters and values at most 256")
			break
		}
	}
	if e := c.err(); e != nil {
		return e
	}
	v, err := s.fleet.CreateStage(r.Context(), b, in.Name, in.Tags)
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusCreated, map[string]any{"stage": stageOf(v)}, "Stage created")
	return nil
}

func (s *server) getStage(w http.ResponseWriter, r *http.Request) *apiError {
	arn, e := pathArn(r.PathValue("stageArn"))
	if e != nil {
		return e
	}
	v, err := s.fleet.Stage(r.Context(), arn)
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, map[string]any{"stage": stageOf(v)}, "")
	return nil
}

func (s *server) updateStage(w http.ResponseWriter, r *http.Request) *apiError {
	arn, e := pathArn(r.PathValue("stageArn"))
	if e != nil {
		return e
	}
	var in struct {
		Name string `json:"name"`
	}
	if e := decode(r, &in); e != nil {
		return e
	}
	var c check
	if c.required("name", in.Name) && !stageNamePattern.MatchString(in.Name) {
		c.problem("name must be 1 to 128 letters, digits, '-' or '_'")
	}
	if e := c.err(); e != nil {
		return e
	}
	v, err := s.fleet.UpdateStage(r.Context(), arn, in.Name)
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, map[string]any{"stage": stageOf(v)}, "Stage updated")
	return nil
}

func (s *server) deleteStage(w http.ResponseWriter, r *http.Request) *apiError {
	arn, e := pathArn(r.PathValue("stageArn"))
	if e != nil {
		return e
	}
	if err := s.fleet.DeleteStage(r.Context(), arn); err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, map[string]any{"stageArn": arn, "deleted": true}, "Stage deleted")
	return nil
}

func replicationRequest(r *http.Request) (fleet.Replication, *apiError) {
	var in struct {
		SourceStageArn      string `json:"sourceStageArn"`
		DestinationStageArn string `json:"destinationStageArn"`
		ParticipantID       string `json:"participantId"`
	}
	if e := decode(r, &in); e != nil {
		return fleet.Replication{}, e
	}
	var c check
	c.stageArn("sourceStageArn", in.SourceStageArn, true)
	c.stageArn("destinationStageArn", in.DestinationStageArn, true)
	c.participantID("participantId", in.ParticipantID)
	return fleet.Replication{SourceArn: in.SourceStageArn, DestArn: in.DestinationStageArn, ParticipantID: in.ParticipantID}, c.err()
}

func (s *server) startReplication(w http.ResponseWriter, r *http.Request) *apiError {
	req, e := replicationRequest(r)
	if e != nil {
		return e
	}
	rec, err := s.fleet.StartReplication(r.Context(), req)
	if err != nil {
		return s.fail(err)
	}
	const msg = "Replication started"
	ok(w, http.StatusOK, struct {
		replicationData
		StartedAt string `json:"startedAt"`
		Message   string `json:"message"`
	}{replicationOf(rec), rec.UpdatedAt.UTC().Format(time.RFC3339), msg}, msg)
	return nil
}

func (s *server) stopReplication(w http.ResponseWriter, r *http.Request) *apiError {
	req, e := replicationRequest(r)
	if e != nil {
		return e
	}
	if err := s.fleet.StopReplication(r.Context(), req); err != nil {
		return s.fail(err)
	}
	const msg = "Replication stopped"
	ok(w, http.StatusOK, map[string]any{
		"participantId":       req.ParticipantID,
		"sourceStageArn":      req.SourceArn,
		"destinationStageArn": req.DestArn,
		"stopped":             true,
		"stoppedAt":           s.fleet.Now().UTC().Format(time.RFC3339),
		"message":             msg,
	}, msg)
	return nil
}

func (s *server) replicationStatus(w http.ResponseWriter, r *http.Request) *apiError {
	arn, e := pathArn(r.PathValue("stageArn"))
	if e != nil {
		return e
	}
	reps, err := s.fleet.ReplicationStatus(r.Context(), arn)
	if err != nil {
		return s.fail(err)
	}
	// The previous server's meaning: hasReplication says a replication
	// runs into this stage; the ones out of it are listed beside.
	data := map[string]any{"stageArn": arn, "hasReplication": false}
	list := make([]replicationData, 0, len(reps))
	outgoing := []replicationData{}
	for _, rep := range reps {
		d := replicationOf(rep)
		list = append(list, d)
		running := rep.State == store.ReplActive || rep.State == store.ReplStarting
		switch {
		case rep.SourceArn == arn:
			outgoing = append(outgoing, d)
		case running && data["hasReplication"] == false:
			data["hasReplication"] = true
			data["replicationInfo"] = struct {
				replicationData
				DestStageArn string `json:"destStageArn"`
				StartedAt    string `json:"startedAt"`
			}{d, rep.DestArn, rep.UpdatedAt.UTC().Format(time.RFC3339)}
		}
	}
	data["replications"] = list
	data["outgoingReplications"] = outgoing
	msg := ""
	if data["hasReplication"] == false {
		msg = "No replication runs into stage " + arn
		data["message"] = msg
	}
	ok(w, http.StatusOK, data, msg)
	return nil
}

type hostData struct {
	ParticipantID string `json:"participantId"`
	StageArn      string `json:"stageArn"`
	UserID        string `json:"userId"`
	BroadcastID   string `json:"broadcastId"`
	JoinedAt      string `json:"joinedAt"`
	Publishing    bool   `json:"publishing"`
}

func hostOf(h store.Host) hostData {
	return hostData{
		ParticipantID: h.ParticipantID,
		StageArn:      h.StageArn,
		UserID:        h.UserID,
		BroadcastID:   h.BroadcastID,
		JoinedAt:      h.JoinedAt.UTC().Format(time.RFC3339),
		Publishing:    h.Publishing,
	}
}

func hostsOf(hs []store.Host) []hostData {
	out := make([]hostData, len(hs))
	for i, h := range hs {
		out[i] = hostOf(h)
	}
	return out
}

func (s *server) publisherInfo(w http.ResponseWriter, r *http.Request) *apiError {
	var c check
	b := c.broadcast(r.URL.Query().Get("broadcastId"))
	if e := c.err(); e != nil {
		return e
	}
	h, found, err := s.fleet.Publisher(r.Context(), b)
	if err != nil {
		return s.fail(err)
	}
	data := map[string]any{"hasPublisher": found}
	msg := ""
	if found {
		data["publisherInfo"] = hostOf(h)
	}
	if !found || !h.Publishing {
		msg = "No host publishes in broadcast " + b
		data["message"] = msg
	}
	if bc, err := s.fleet.Broadcast(r.Context(), b); err == nil && !bc.OriginReplacedAt.IsZero() {
		data["originReplaced"] = map[string]any{
			"at":               bc.OriginReplacedAt.UTC().Format(time.RFC3339),
			"previousStageArn": bc.ReplacedOriginArn,
			"stageArn":         bc.OriginArn,
		}
		msg = "The origin stage " + bc.ReplacedOriginArn + " was deleted outside stagefleet and replaced by " + bc.OriginArn + "; hosts need a new publisher token"
		data["message"] = msg
	}
	ok(w, http.StatusOK, data, msg)
	return nil
}

// fleetStats is every broadcast's stages and hosts, for /api/stats*.
type fleetStats struct {
	broadcasts int
	stages     []fleet.StageView
	hosts      []store.Host
	// publishing counts the hosts publishing now.
	publishing int
}

func (s *server) fleetStats(r *http.Request) (fleetStats, error) {
	bs, err := s.fleet.Broadcasts(r.Context())
	if err != nil {
		return fleetStats{}, err
	}
	st := fleetStats{broadcasts: len(bs)}
	for _, b := range bs {
		v, err := s.fleet.Stages(r.Context(), b.ID)
		if err != nil {
			return fleetStats{}, err
		}
		h, err := s.fleet.Hosts(r.Context(), b.ID)
		if err != nil {
			return fleetStats{}, err
		}
		st.stages = append(st.stages, v...)
		st.hosts = append(st.hosts, h...)
	}
	for _, h := range st.hosts {
		if h.Publishing {
			st.publishing++
		}
	}
	return st, nil
}

func (s *server) stats(w http.ResponseWriter, r *http.Request) *apiError {
	st, err := s.fleetStats(r)
	if err != nil {
		return s.fail(err)
	}
	viewers, capacity := 0, 0
	for _, v := range st.stages {
		viewers += v.Seats
		if v.Seatable {
			capacity += v.Capacity
		}
	}
	type statsStage struct {
		StageArn    string `json:"stageArn"`
		StageName   string `json:"stageName"`
		BroadcastID string `json:"broadcastId"`
		ViewerCount int    `json:"viewerCount"`
		AutoScaled  bool   `json:"autoScaled"`
		CreatedAt   string `json:"createdAt"`
	}
	stages := make([]statsStage, len(st.stages))
	for i, v := range st.stages {
		stages[i] = statsStage{v.Arn, v.Name, v.BroadcastID, v.Seats, v.Role == store.RoleReplica, v.CreatedAt.UTC().Format(time.RFC3339)}
	}
	ok(w, http.StatusOK, map[string]any{
		"totalViewers":    viewers,
		"activeStages":    len(st.stages),
		"isPublisherLive": st.publishing > 0,
		"stages":          stages,
		"broadcasts":      st.broadcasts,
		"stageCount":      len(st.stages),
		"viewers":         viewers,
		"seatCapacity":    capacity,
		"hosts":           len(st.hosts),
		"publishingHosts": st.publishing,
	}, "")
	return nil
}

func (s *server) statsViewers(w http.ResponseWriter, r *http.Request) *apiError {
	st, err := s.fleetStats(r)
	if err != nil {
		return s.fail(err)
	}
	byStage := map[string]int{}
	total := 0
	for _, v := range st.stages {
		byStage[v.Arn] = v.Seats
		total += v.Seats
	}
	ok(w, http.StatusOK, map[string]any{"total": total, "byStage": byStage, "totalViewers": total,
		"calculatedFrom": "live seats (viewer leases renewed by heartbeats)"}, "")
	return nil
}

// statsStages lists every stage, or those ?arn= names.
func (s *server) statsStages(w http.ResponseWriter, r *http.Request) *apiError {
	arn := r.URL.Query().Get("arn")
	var c check
	c.stageArn("arn", arn, false)
	if e := c.err(); e != nil {
		return e
	}
	return s.stageStats(w, r, func(v fleet.StageView) bool { return arn == "" || v.Arn == arn })
}

// statsStage is one stage's stats by its id (the ARN's last part).
func (s *server) statsStage(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("stageId")
	if !stageIDPattern.MatchString(id) {
		return badRequest("the path must end with a stage id, the last part of its ARN, such as AbCdEf123456")
	}
	return s.stageStats(w, r, func(v fleet.StageView) bool { return strings.HasSuffix(v.Arn, ":stage/"+id) })
}

func (s *server) stageStats(w http.ResponseWriter, r *http.Request, keep func(fleet.StageView) bool) *apiError {
	st, err := s.fleetStats(r)
	if err != nil {
		return s.fail(err)
	}
	byRole := map[store.Role]int{}
	list := []stageData{}
	for _, v := range st.stages {
		if keep(v) {
			byRole[v.Role]++
			list = append(list, stageOf(v))
		}
	}
	ok(w, http.StatusOK, map[string]any{"total": len(list), "totalStages": len(list), "byRole": byRole, "stages": list}, "")
	return nil
}

func (s *server) statsPublisher(w http.ResponseWriter, r *http.Request) *apiError {
	st, err := s.fleetStats(r)
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, map[string]any{"hosts": hostsOf(st.hosts), "total": len(st.hosts), "publishing": st.publishing,
		"isPublisherLive": st.publishing > 0}, "")
	return nil
}

// ivsEvent takes an EventBridge event from IVS (an API destination, or the
// emulator). Events it does not act on are acknowledged with 200, so that
// EventBridge does not retry them.
func (s *server) ivsEvent(w http.ResponseWriter, r *http.Request) *apiError {
	if s.opts.EventsSecret != "" && !secretEqual(r.Header.Get("x-stagefleet-events-secret"), s.opts.EventsSecret) {
		return &apiError{status: http.StatusUnauthorized, code: CodeUnauthorized, message: "missing or invalid x-stagefleet-events-secret header"}
	}
	// An IVS event is about a kilobyte; the API's larger limit is for
	// requests of other kinds.
	r.Body = http.MaxBytesReader(w, r.Body, maxEventBytes)
	var in struct {
		ID         string   `json:"id"`
		DetailType string   `json:"detail-type"`
		Source     string   `json:"source"`
		Time       string   `json:"time"`
		Resources  []string `json:"resources"`
		Detail     struct {
			EventName      string `json:"event_name"`
			EventTime      string `json:"event_time"`
			UserID         string `json:"user_id"`
			ParticipantID  string `json:"participant_id"`
			Replica        bool   `json:"replica"`
			SourceStageArn string `json:"source_stage_arn"`
		} `json:"detail"`
	}
	if e := decode(r, &in); e != nil {
		return e
	}
	var c check
	c.required("id", in.ID)
	c.required("source", in.Source)
	c.required("detail-type", in.DetailType)
	if len(in.ID) > maxEventIDBytes {
		c.problem("id must be at most %d bytes (EventBridge's are UUIDs)", maxEventIDBytes)
	}
	if in.Source != "" && in.Source != "aws.ivs" {
		c.problem("source must be aws.ivs: only IVS's events are taken here")
	}
	if e := c.err(); e != nil {
		return e
	}
	if in.DetailType != "IVS Stage Update" {
		ok(w, http.StatusOK, map[string]any{"result": fleet.EventIgnored}, "")
		return nil
	}
	c.required("detail.event_name", in.Detail.EventName)
	c.participantID("detail.participant_id", in.Detail.ParticipantID)
	if len(in.Resources) == 0 {
		c.missing = append(c.missing, "resources")
	} else {
		c.stageArn("resources[0]", in.Resources[0], true)
	}
	at, err := eventTime(in.Detail.EventTime, in.Time)
	if err != nil {
		c.problem("detail.event_time or time must be an RFC 3339 time")
	}
	if e := c.err(); e != nil {
		return e
	}
	res, err := s.fleet.HandleEvent(r.Context(), fleet.Event{
		ID:             in.ID,
		StageArn:       in.Resources[0],
		Name:           in.Detail.EventName,
		Time:           at,
		ParticipantID:  in.Detail.ParticipantID,
		UserID:         in.Detail.UserID,
		Replica:        in.Detail.Replica,
		SourceStageArn: in.Detail.SourceStageArn,
	})
	if err != nil {
		return s.fail(err)
	}
	ok(w, http.StatusOK, map[string]any{"result": res}, "")
	return nil
}

// Bounds of an IVS event: its body and its id.
const (
	maxEventBytes   = 16 << 10
	maxEventIDBytes = 256
)

// eventTime is the detail's event_time, else the envelope's time.
func eventTime(detail, envelope string) (time.Time, error) {
	for _, v := range []string{detail, envelope} {
		if v != "" {
			return time.Parse(time.RFC3339Nano, v)
		}
	}
	return time.Time{}, errors.New("no time")
}
