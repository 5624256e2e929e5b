package emulator

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"mime"
	"net/http"
	"slices"
)

// registerControl adds the /_emulator/ API, which simulates what happens on
// stages (participants joining and publishing) and steers the emulator. It is
// not part of AWS: no quotas or faults apply to it.
func (e *Emulator) registerControl(mux *http.ServeMux) {
	post := func(path string, h http.HandlerFunc) { mux.HandleFunc("POST "+path, requireJSON(h)) }
	post("/_emulator/participants/join", e.controlJoin)
	post("/_emulator/participants/publish", e.controlParticipant(func(e *Emulator, s *stage, p *participant) *apiError {
		return e.publish(s, p)
	}))
	post("/_emulator/participants/unpublish", e.controlParticipant(func(e *Emulator, s *stage, p *participant) *apiError {
		e.unpublish(s, p)
		return nil
	}))
	post("/_emulator/participants/leave", e.controlParticipant(func(e *Emulator, s *stage, p *participant) *apiError {
		if p.replicationType == replReplica {
			return newError(errConflict, "participant %s is a replica; stop its replication instead", p.id)
		}
		e.leave(s, p)
		return nil
	}))
	mux.HandleFunc("GET /_emulator/state", e.controlState)
	mux.HandleFunc("GET /_emulator/faults", e.controlListFaults)
	post("/_emulator/faults", e.controlSetFault)
	mux.HandleFunc("DELETE /_emulator/faults", e.controlClearFaults)
	mux.HandleFunc("GET /_emulator/events", e.controlEvents)
	post("/_emulator/events", e.controlSetDelivery)
	post("/_emulator/reset", e.controlReset)
}

// errUnsupportedMediaType is not in the model: the control API answers it to
// a POST whose body is not declared as JSON.
const errUnsupportedMediaType = "UnsupportedMediaTypeException"

// requireJSON refuses a POST unless its Content-Type is application/json. A
// web page can make a browser send a cross-site POST with text/plain or a
// form encoding without asking first, but not one with application/json
// (that needs a CORS preflight, which the emulator never grants), so this
// keeps any site the user visits from joining participants or resetting the
// emulator. The control API's requests are JSON anyway.
func requireJSON(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			writeErrorStatus(w, http.StatusUnsupportedMediaType, newError(errUnsupportedMediaType,
				"send Content-Type: application/json; the control API accepts no other type, so that web pages cannot post to it"))
			return
		}
		h(w, r)
	}
}

// readControl decodes a control request strictly: an unknown field is most
// likely a typo that would otherwise be silently ignored.
func readControl(w http.ResponseWriter, r *http.Request, v any) *apiError {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return validationError("request body: %v", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

type joinResult struct {
	ParticipantID string `json:"participantId"`
	StageArn      string `json:"stageArn"`
	SessionID     string `json:"sessionId"`
}

func (e *Emulator) controlJoin(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token string `json:"token"`
	}
	if aerr := readControl(w, r, &in); aerr != nil {
		writeError(w, aerr)
		return
	}
	if in.Token == "" {
		writeError(w, validationError("token is required"))
		return
	}
	claims, aerr := e.verifyToken(in.Token)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	g, aerr := e.grantFor(claims)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	s, p, aerr := e.join(g)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	writeJSON(w, joinResult{ParticipantID: p.id, StageArn: s.arn, SessionID: s.active.id})
}

func (e *Emulator) controlParticipant(act func(*Emulator, *stage, *participant) *apiError) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			StageArn      string `json:"stageArn"`
			ParticipantID string `json:"participantId"`
		}
		if aerr := readControl(w, r, &in); aerr != nil {
			writeError(w, aerr)
			return
		}
		if in.StageArn == "" || in.ParticipantID == "" {
			writeError(w, validationError("stageArn and participantId are required"))
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		s, p, aerr := e.connectedParticipant(in.StageArn, in.ParticipantID)
		if aerr == nil {
			aerr = act(e, s, p)
		}
		if aerr != nil {
			writeError(w, aerr)
			return
		}
		sessionID := ""
		if s.active != nil {
			sessionID = s.active.id
		}
		writeJSON(w, joinResult{ParticipantID: p.id, StageArn: s.arn, SessionID: sessionID})
	}
}

// State is the whole emulated account, as GET /_emulator/state shows it.
type State struct {
	Region       string               `json:"region"`
	AccountID    string               `json:"accountId"`
	Limits       Limits               `json:"limits"`
	Quotas       map[string]float64   `json:"quotas"`
	Stages       []StageState         `json:"stages"`
	Replications []ReplicationState   `json:"replications"`
	PublicKeys   []publicKeyJSON      `json:"publicKeys"`
	Counters     map[string]OpCounter `json:"counters"`
	Events       EventStats           `json:"events"`
	// Observations are about how the account was used, not what it holds
	// (Counters are per operation).
	Observations Observations `json:"observations"`
}

// Limits are the per-stage and per-account limits in force.
type Limits struct {
	StageCapacity int `json:"stageCapacity"`
	MaxPublishers int `json:"maxPublishers"`
	MaxStages     int `json:"maxStages"`
}

// StageState is one stage with its sessions and counts.
type StageState struct {
	Arn             string            `json:"arn"`
	Name            string            `json:"name"`
	Tags            map[string]string `json:"tags"`
	ActiveSessionID string            `json:"activeSessionId,omitempty"`
	Subscribers     int               `json:"subscribers"`
	Publishers      int               `json:"publishers"`
	// MaxSubscribers is the most subscribers the stage ever held at once.
	MaxSubscribers int            `json:"maxSubscribers"`
	Sessions       []SessionState `json:"sessions"`
}

// SessionState is one stage session and everyone who was in it.
type SessionState struct {
	SessionID    string             `json:"sessionId"`
	StartTime    string             `json:"startTime"`
	EndTime      string             `json:"endTime,omitempty"`
	Participants []ParticipantState `json:"participants"`
}

// ParticipantState is a participant as the emulator sees it, including
// whether it publishes now (the API only says whether it ever did).
type ParticipantState struct {
	ParticipantID    string `json:"participantId"`
	UserID           string `json:"userId,omitempty"`
	State            string `json:"state"`
	Publishing       bool   `json:"publishing"`
	Published        bool   `json:"published"`
	CanPublish       bool   `json:"canPublish"`
	CanSubscribe     bool   `json:"canSubscribe"`
	ReplicationType  string `json:"replicationType"`
	ReplicationState string `json:"replicationState,omitempty"`
	SourceStageArn   string `json:"sourceStageArn,omitempty"`
}

// ReplicationState is one replication, including one still starting.
type ReplicationState struct {
	ParticipantID          string `json:"participantId"`
	SourceStageArn         string `json:"sourceStageArn"`
	DestinationStageArn    string `json:"destinationStageArn"`
	SourceSessionID        string `json:"sourceSessionId"`
	DestinationSessionID   string `json:"destinationSessionId,omitempty"`
	State                  string `json:"state"`
	ReconnectWindowSeconds int    `json:"reconnectWindowSeconds"`
}

// Snapshot returns the emulator's whole state.
func (e *Emulator) Snapshot() State {
	return e.snapshot(true)
}

// snapshot returns the state, with each session's participants or (for a
// poller of an account holding a million of them) without.
func (e *Emulator) snapshot(withParticipants bool) State {
	_, stats, _ := e.events.snapshot()
	e.mu.Lock()
	defer e.mu.Unlock()
	out := State{
		Region:    e.cfg.Region,
		AccountID: e.cfg.AccountID,
		Limits: Limits{
			StageCapacity: e.cfg.StageCapacity,
			MaxPublishers: e.cfg.MaxPublishers,
			MaxStages:     e.cfg.MaxStages,
		},
		Quotas:       maps.Clone(e.cfg.Quotas),
		Stages:       []StageState{},
		Replications: []ReplicationState{},
		PublicKeys:   []publicKeyJSON{},
		Counters:     map[string]OpCounter{},
		Events:       stats,
	}
	for _, s := range e.stageOrder() {
		st := StageState{Arn: s.arn, Name: s.name, Tags: maps.Clone(s.tags), MaxSubscribers: s.maxSubscribers, Sessions: []SessionState{}}
		if s.active != nil {
			st.ActiveSessionID = s.active.id
			st.Subscribers, st.Publishers = s.active.counts()
		}
		for _, ss := range s.sessions {
			sj := SessionState{SessionID: ss.id, StartTime: isoTime(ss.start), EndTime: isoTime(ss.end), Participants: []ParticipantState{}}
			participants := ss.participants
			if !withParticipants {
				participants = nil
			}
			for _, p := range participants {
				sj.Participants = append(sj.Participants, ParticipantState{
					ParticipantID:    p.id,
					UserID:           p.userID,
					State:            p.state,
					Publishing:       p.publishing,
					Published:        p.everPublished,
					CanPublish:       p.canPublish,
					CanSubscribe:     p.canSubscribe,
					ReplicationType:  p.replicationType,
					ReplicationState: p.replicationState,
					SourceStageArn:   p.sourceStageArn,
				})
			}
			st.Sessions = append(st.Sessions, sj)
		}
		out.Stages = append(out.Stages, st)
	}
	for _, r := range e.st.replications {
		out.Replications = append(out.Replications, ReplicationState{
			ParticipantID:          r.participantID,
			SourceStageArn:         r.sourceArn,
			DestinationStageArn:    r.destArn,
			SourceSessionID:        r.sourceSession,
			DestinationSessionID:   r.destSession,
			State:                  r.state,
			ReconnectWindowSeconds: int(r.reconnectAfter.Seconds()),
		})
	}
	keys := slices.Collect(maps.Values(e.st.keys))
	slices.SortFunc(keys, func(a, b *publicKey) int { return int(a.seq - b.seq) })
	for _, k := range keys {
		out.PublicKeys = append(out.PublicKeys, k.json(false))
	}
	for op, c := range e.counters {
		out.Counters[op] = *c
	}
	out.Observations = Observations{
		SubscribersBeforeReplicaActive:       e.observed.SubscribersBeforeReplicaActive,
		RecentSubscribersBeforeReplicaActive: make([]EarlySubscriberJoin, len(e.observed.RecentSubscribersBeforeReplicaActive)),
	}
	// The joins' Missing slices are never changed once recorded, so sharing
	// them with the copy is safe.
	copy(out.Observations.RecentSubscribersBeforeReplicaActive, e.observed.RecentSubscribersBeforeReplicaActive)
	return out
}

// controlState answers GET /_emulator/state; ?participants=false leaves
// the sessions' participants out (the counts stay).
func (e *Emulator) controlState(w http.ResponseWriter, r *http.Request) {
	with := true
	switch v := r.URL.Query().Get("participants"); v {
	case "", "true":
	case "false":
		with = false
	default:
		writeError(w, validationError("participants must be true or false, not %q", v))
		return
	}
	writeJSON(w, e.snapshot(with))
}

// SetFault installs f for its operation ("*" for all); a fault with neither
// error rate nor latency removes the operation's fault.
func (e *Emulator) SetFault(f Fault) error {
	if _, ok := operations[f.Operation]; !ok && f.Operation != "*" {
		return errors.New("operation must be an IVS operation name or \"*\"")
	}
	if f.ErrorRate < 0 || f.ErrorRate > 1 {
		return errors.New("errorRate must be between 0 and 1")
	}
	if f.LatencyMS < 0 || f.LatencyMS > int(maxLatency.Milliseconds()) {
		return fmt.Errorf("latencyMs must be between 0 and %d", maxLatency.Milliseconds())
	}
	if _, ok := errorStatus[f.ErrorType]; f.ErrorType != "" && !ok {
		return errors.New("errorType must be one of the IVS error names, e.g. InternalServerException or ThrottlingException")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if f.ErrorRate == 0 && f.LatencyMS == 0 {
		delete(e.faults, f.Operation)
		return nil
	}
	e.faults[f.Operation] = f
	return nil
}

func (e *Emulator) controlSetFault(w http.ResponseWriter, r *http.Request) {
	var f Fault
	if aerr := readControl(w, r, &f); aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := e.SetFault(f); err != nil {
		writeError(w, validationError("%v", err))
		return
	}
	e.controlListFaults(w, r)
}

func (e *Emulator) controlListFaults(w http.ResponseWriter, _ *http.Request) {
	e.mu.Lock()
	faults := slices.Collect(maps.Values(e.faults))
	e.mu.Unlock()
	slices.SortFunc(faults, func(a, b Fault) int { return cmp.Compare(a.Operation, b.Operation) })
	writeJSON(w, map[string]any{"faults": faults})
}

func (e *Emulator) controlClearFaults(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	clear(e.faults)
	e.mu.Unlock()
	e.controlListFaults(w, r)
}

func (e *Emulator) controlEvents(w http.ResponseWriter, _ *http.Request) {
	d, stats, recent := e.events.snapshot()
	writeJSON(w, map[string]any{"delivery": d, "stats": stats, "events": recent})
}

// SetDelivery changes how later events are delivered.
func (e *Emulator) SetDelivery(d Delivery) error {
	if err := d.validate(); err != nil {
		return err
	}
	e.events.setDelivery(d)
	return nil
}

func (e *Emulator) controlSetDelivery(w http.ResponseWriter, r *http.Request) {
	var d Delivery
	if aerr := readControl(w, r, &d); aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := e.SetDelivery(d); err != nil {
		writeError(w, validationError("%v", err))
		return
	}
	e.controlEvents(w, r)
}

// Reset empties the account and clears faults, counters, observations, event
// delivery settings and the event log, as if the emulator had just started.
func (e *Emulator) Reset() {
	e.mu.Lock()
	e.st.stopTimers()
	gen := e.st.gen
	e.st = newState()
	e.st.gen = gen
	e.limiters = newLimiters(e.cfg.Quotas)
	clear(e.faults)
	clear(e.counters)
	e.observed = Observations{}
	e.mu.Unlock()
	e.events.reset(e.cfg.Delivery)
}

func (e *Emulator) controlReset(w http.ResponseWriter, _ *http.Request) {
	e.Reset()
	writeJSON(w, map[string]bool{"reset": true})
}
