package emulator

import (
	"maps"
)

// Event names of IVS Stage Update events.
const (
	evJoined             = "Participant Joined"
	evLeft               = "Participant Left"
	evPublished          = "Participant Published"
	evUnpublished        = "Participant Unpublished"
	evPublishError       = "Participant Publish Error"
	evReplicationStarted = "Participant Replication Started"
	evReplicationStopped = "Participant Replication Stopped"
)

// session returns the stage's active session, starting one if there is none.
func (e *Emulator) session(s *stage) *session {
	if s.active == nil {
		s.active = &session{seq: e.st.next(), id: newSessionID(), start: e.now()}
		s.sessions = append(s.sessions, s.active)
	}
	return s.active
}

// join connects the bearer of a verified token to its stage. A participant
// that left may come back with the same token (same participant id).
func (e *Emulator) join(g *grant) (*stage, *participant, *apiError) {
	s := g.stage
	if s.revoked[g.participantID] {
		return nil, nil, newError(errAccessDenied, "participant %s was disconnected from %s and cannot rejoin", g.participantID, s.arn)
	}
	if s.active != nil {
		if p := s.active.participant(g.participantID); p != nil && p.connected() {
			return nil, nil, newError(errConflict, "participant %s is already connected to %s", p.id, s.arn)
		}
		if subs, _ := s.active.counts(); subs >= e.cfg.StageCapacity {
			return nil, nil, newError(errQuota, "stage %s is full: %d subscribers, the most a stage holds", s.arn, subs)
		}
	}
	ss := e.session(s)
	p := ss.participant(g.participantID)
	if p == nil {
		p = &participant{
			seq:             e.st.next(),
			id:              g.participantID,
			userID:          g.userID,
			attributes:      maps.Clone(g.attributes),
			firstJoin:       e.now(),
			replicationType: replNone,
		}
		ss.participants = append(ss.participants, p)
	}
	p.state = stateConnected
	p.canPublish = g.caps.AllowPublish
	p.canSubscribe = g.caps.AllowSubscribe
	if subs, _ := ss.counts(); subs > s.maxSubscribers {
		s.maxSubscribers = subs
	}
	e.emit(s, evJoined, p, nil)
	e.observeJoin(s, p)
	return s, p, nil
}

// connectedParticipant finds a participant connected to a stage now.
func (e *Emulator) connectedParticipant(stageArn, participantID string) (*stage, *participant, *apiError) {
	s, aerr := e.stageByArn(stageArn)
	if aerr != nil {
		return nil, nil, aerr
	}
	if s.active != nil {
		if p := s.active.participant(participantID); p != nil && p.connected() {
			return s, p, nil
		}
	}
	return nil, nil, notFound("participant %s is not connected to %s", participantID, stageArn)
}

func (e *Emulator) publish(s *stage, p *participant) *apiError {
	if p.publishing {
		return nil
	}
	if p.replicationType == replReplica {
		return newError(errConflict, "participant %s is a replica; it publishes what its source publishes", p.id)
	}
	if !p.canPublish {
		e.emit(s, evPublishError, p, map[string]any{"error_code": "INSUFFICIENT_CAPABILITIES"})
		return newError(errAccessDenied, "participant %s has a token without the PUBLISH capability", p.id)
	}
	if _, pubs := s.active.counts(); pubs >= e.cfg.MaxPublishers {
		e.emit(s, evPublishError, p, map[string]any{"error_code": "QUOTA_EXCEEDED"})
		return newError(errQuota, "stage %s already has %d publishers, the most a stage holds", s.arn, pubs)
	}
	p.publishing = true
	p.everPublished = true
	e.emit(s, evPublished, p, nil)
	e.sourceResumed(s, p)
	return nil
}

func (e *Emulator) unpublish(s *stage, p *participant) {
	if !p.publishing {
		return
	}
	p.publishing = false
	e.emit(s, evUnpublished, p, nil)
	e.sourceStopped(s, p, false)
}

// leave disconnects p from s and ends the session when nobody is left.
func (e *Emulator) leave(s *stage, p *participant) {
	ss := s.active
	e.unpublish(s, p)
	p.state = stateDisconnected
	e.emit(s, evLeft, p, nil)
	for _, q := range ss.participants {
		if q.connected() {
			return
		}
	}
	ss.end = e.now()
	s.active = nil
}

type participantJSON struct {
	ParticipantID    string            `json:"participantId"`
	UserID           string            `json:"userId,omitempty"`
	State            string            `json:"state"`
	FirstJoinTime    string            `json:"firstJoinTime"`
	Attributes       map[string]string `json:"attributes,omitempty"`
	Published        bool              `json:"published"`
	RecordingState   string            `json:"recordingState"`
	Protocol         string            `json:"protocol,omitempty"`
	ReplicationType  string            `json:"replicationType"`
	ReplicationState string            `json:"replicationState,omitempty"`
	SourceStageArn   string            `json:"sourceStageArn,omitempty"`
	SourceSessionID  string            `json:"sourceSessionId,omitempty"`
	RedundantIngest  bool              `json:"redundantIngest"`
}

func (p *participant) json(full bool) participantJSON {
	out := participantJSON{
		ParticipantID:    p.id,
		UserID:           p.userID,
		State:            p.state,
		FirstJoinTime:    isoTime(p.firstJoin),
		Published:        p.everPublished,
		RecordingState:   "DISABLED",
		ReplicationType:  p.replicationType,
		ReplicationState: p.replicationState,
		SourceStageArn:   p.sourceStageArn,
		SourceSessionID:  p.sourceSessionID,
	}
	if full {
		out.Attributes = p.attributes
		out.Protocol = "WHIP"
	}
	return out
}

func (e *Emulator) getParticipant(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		sessionInput
		ParticipantID string `json:"participantId"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	s, ss := e.sessionByID(in.StageArn, in.SessionID)
	if s == nil {
		return nil, notFound("Stage not found: %s", in.StageArn)
	}
	if ss == nil {
		return nil, notFound("Stage session not found: %s in %s", in.SessionID, in.StageArn)
	}
	p := ss.participant(in.ParticipantID)
	if p == nil {
		return nil, notFound("Participant not found: %s in session %s", in.ParticipantID, in.SessionID)
	}
	return map[string]any{"participant": p.json(true)}, nil
}

// listParticipants lists a session's participants in the order they first
// joined. An unknown stage or session has none: the model gives this
// operation no not-found error.
func (e *Emulator) listParticipants(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		sessionInput
		listInput
		FilterByUserID         *string `json:"filterByUserId"`
		FilterByPublished      *bool   `json:"filterByPublished"`
		FilterByState          *string `json:"filterByState"`
		FilterByRecordingState *string `json:"filterByRecordingState"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	filters := 0
	for _, set := range []bool{in.FilterByUserID != nil, in.FilterByPublished != nil, in.FilterByState != nil, in.FilterByRecordingState != nil} {
		if set {
			filters++
		}
	}
	if filters > 1 {
		return nil, validationError("Only one of filterByUserId, filterByPublished, filterByState, or filterByRecordingState can be provided per request")
	}
	var all []*participant
	if _, ss := e.sessionByID(in.StageArn, in.SessionID); ss != nil {
		for _, p := range ss.participants {
			switch {
			case in.FilterByUserID != nil && p.userID != *in.FilterByUserID,
				in.FilterByPublished != nil && p.everPublished != *in.FilterByPublished,
				in.FilterByState != nil && p.state != *in.FilterByState,
				// Recording is not emulated: nobody is in any recording state.
				in.FilterByRecordingState != nil:
				continue
			}
			all = append(all, p)
		}
	}
	items, next, aerr := page(all, func(p *participant) int64 { return p.seq }, in.NextToken, in.MaxResults)
	if aerr != nil {
		return nil, aerr
	}
	out := make([]participantJSON, len(items))
	for i, p := range items {
		out[i] = p.json(false)
	}
	return withNext(map[string]any{"participants": out}, next), nil
}

// disconnectParticipant removes a participant for good: its token can no
// longer join the stage.
func (e *Emulator) disconnectParticipant(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		StageArn      string `json:"stageArn"`
		ParticipantID string `json:"participantId"`
		Reason        string `json:"reason"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	s, p, aerr := e.connectedParticipant(in.StageArn, in.ParticipantID)
	if aerr != nil {
		return nil, aerr
	}
	s.revoked[p.id] = true
	if p.replicationType == replReplica {
		for _, r := range e.st.replications {
			if r.state != replStopped && r.destArn == s.arn && r.participantID == p.id {
				e.stopReplication(r, "replica disconnected")
			}
		}
		return struct{}{}, nil
	}
	e.leave(s, p)
	e.sourceStopped(s, p, true)
	return struct{}{}, nil
}
