package emulator

import (
	"maps"
	"slices"
	"time"
)

func (e *Emulator) startParticipantReplication(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		SourceStageArn         string            `json:"sourceStageArn"`
		DestinationStageArn    string            `json:"destinationStageArn"`
		ParticipantID          string            `json:"participantId"`
		ReconnectWindowSeconds int               `json:"reconnectWindowSeconds"`
		Attributes             map[string]string `json:"attributes"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	if in.SourceStageArn == in.DestinationStageArn {
		return nil, validationError("sourceStageArn and destinationStageArn must be different stages")
	}
	src, aerr := e.stageByArn(in.SourceStageArn)
	if aerr != nil {
		return nil, aerr
	}
	dst, aerr := e.stageByArn(in.DestinationStageArn)
	if aerr != nil {
		return nil, aerr
	}
	var p *participant
	if src.active != nil {
		p = src.active.participant(in.ParticipantID)
	}
	if p == nil || !p.connected() || !p.publishing {
		// The real service's text; clients match on it, not on the type.
		return nil, validationError("%s is not publishing", in.ParticipantID)
	}
	if r := e.findReplication(src.arn, dst.arn, p.id); r != nil && r.state != replStopped {
		return nil, newError(errConflict, "participant %s is already being replicated from %s to %s", p.id, src.arn, dst.arn)
	}
	if pubs := e.destinationPublishers(dst); pubs >= e.cfg.MaxPublishers {
		return nil, newError(errQuota, "stage %s already has %d publishers, the most a stage holds", dst.arn, pubs)
	}
	r := &replication{
		seq:            e.st.next(),
		participantID:  p.id,
		sourceArn:      src.arn,
		destArn:        dst.arn,
		sourceSession:  src.active.id,
		state:          replStarting,
		reconnectAfter: time.Duration(in.ReconnectWindowSeconds) * time.Second,
		attributes:     in.Attributes,
	}
	e.replaceReplication(r)
	// A replica disconnected earlier may come back through a new start.
	delete(dst.revoked, p.id)
	p.replicationType = replSource
	if e.cfg.ReplicaDelay <= 0 {
		e.activate(r)
	} else {
		e.afterFunc(e.cfg.ReplicaDelay, func() {
			if r.state == replStarting {
				e.activate(r)
			}
		})
	}
	return struct{}{}, nil
}

func (e *Emulator) findReplication(src, dst, participantID string) *replication {
	for _, r := range e.st.replications {
		if r.sourceArn == src && r.destArn == dst && r.participantID == participantID {
			return r
		}
	}
	return nil
}

// replaceReplication records r, in place of a stopped record of the same
// participant and stages, so that each triple is listed once.
func (e *Emulator) replaceReplication(r *replication) {
	e.st.replications = slices.DeleteFunc(e.st.replications, func(old *replication) bool {
		return old.sourceArn == r.sourceArn && old.destArn == r.destArn && old.participantID == r.participantID
	})
	e.st.replications = append(e.st.replications, r)
}

// destinationPublishers counts the publishers a stage has or is about to
// have from replications still starting.
func (e *Emulator) destinationPublishers(dst *stage) int {
	n := 0
	if dst.active != nil {
		_, n = dst.active.counts()
	}
	for _, r := range e.st.replications {
		if r.destArn == dst.arn && r.state == replStarting {
			n++
		}
	}
	return n
}

// activate makes a starting replication ACTIVE: the replica joins the
// destination stage and publishes what the source publishes.
func (e *Emulator) activate(r *replication) {
	dst, ok := e.st.stages[r.destArn]
	if !ok {
		r.state = replStopped
		return
	}
	var source *participant
	if src, ok := e.st.stages[r.sourceArn]; ok && src.active != nil {
		source = src.active.participant(r.participantID)
	}
	ds := e.session(dst)
	replica := ds.participant(r.participantID)
	if replica == nil {
		replica = &participant{seq: e.st.next(), id: r.participantID, firstJoin: e.now()}
		ds.participants = append(ds.participants, replica)
	}
	attrs := map[string]string{}
	if source != nil {
		replica.userID = source.userID
		maps.Copy(attrs, source.attributes)
		replica.publishing = source.publishing
	}
	maps.Copy(attrs, r.attributes)
	replica.attributes = attrs
	replica.state = stateConnected
	replica.everPublished = true
	replica.canPublish = true
	replica.canSubscribe = true
	replica.replicationType = replReplica
	replica.replicationState = replActive
	replica.sourceStageArn = r.sourceArn
	replica.sourceSessionID = r.sourceSession
	r.destSession = ds.id
	r.state = replActive
	e.emit(dst, evReplicationStarted, replica, r.eventDetail())
	e.log.Info("replication active", "participant", r.participantID, "source", r.sourceArn, "destination", r.destArn)
}

func (r *replication) eventDetail() map[string]any {
	return map[string]any{
		"replica":                true,
		"source_stage_arn":       r.sourceArn,
		"source_session_id":      r.sourceSession,
		"destination_stage_arn":  r.destArn,
		"destination_session_id": r.destSession,
	}
}

// stopReplication ends r: the replica leaves the destination stage.
func (e *Emulator) stopReplication(r *replication, reason string) {
	wasActive := r.state == replActive
	r.state = replStopped
	if !wasActive {
		return
	}
	about := &participant{id: r.participantID}
	if dst, ok := e.st.stages[r.destArn]; ok && dst.active != nil && dst.active.id == r.destSession {
		if replica := dst.active.participant(r.participantID); replica != nil && replica.connected() {
			replica.replicationState = replStopped
			e.leave(dst, replica)
			about = replica
		}
	}
	e.emitFor(r.destArn, r.destSession, evReplicationStopped, about, r.eventDetail())
	e.log.Info("replication stopped", "participant", r.participantID, "source", r.sourceArn, "destination", r.destArn, "reason", reason)
}

func (e *Emulator) stopParticipantReplication(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		SourceStageArn      string `json:"sourceStageArn"`
		DestinationStageArn string `json:"destinationStageArn"`
		ParticipantID       string `json:"participantId"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	if _, aerr := e.stageByArn(in.SourceStageArn); aerr != nil {
		return nil, aerr
	}
	if _, aerr := e.stageByArn(in.DestinationStageArn); aerr != nil {
		return nil, aerr
	}
	r := e.findReplication(in.SourceStageArn, in.DestinationStageArn, in.ParticipantID)
	if r == nil || r.state == replStopped {
		return nil, notFound("participant %s is not being replicated from %s to %s", in.ParticipantID, in.SourceStageArn, in.DestinationStageArn)
	}
	e.stopReplication(r, "StopParticipantReplication")
	return struct{}{}, nil
}

// sourceStopped handles a source participant that stopped publishing or
// left: its replications stop now, or after their reconnect window unless it
// publishes again first.
func (e *Emulator) sourceStopped(s *stage, p *participant, now bool) {
	for _, r := range e.st.replications {
		if r.state == replStopped || r.sourceArn != s.arn || r.participantID != p.id {
			continue
		}
		if now || r.reconnectAfter == 0 {
			e.stopReplication(r, "source stopped publishing")
			continue
		}
		e.setReplicaPublishing(r, false)
		r.windowEpoch++
		epoch := r.windowEpoch
		e.afterFunc(r.reconnectAfter, func() {
			if r.windowEpoch == epoch && r.state != replStopped {
				e.stopReplication(r, "reconnect window expired")
			}
		})
	}
}

// sourceResumed handles a source participant publishing again within its
// replications' reconnect window. One that left and rejoined is a new
// participant record, which becomes the replications' source again.
func (e *Emulator) sourceResumed(s *stage, p *participant) {
	for _, r := range e.st.replications {
		if r.state != replStopped && r.sourceArn == s.arn && r.participantID == p.id {
			p.replicationType = replSource
			r.windowEpoch++
			e.setReplicaPublishing(r, true)
		}
	}
}

func (e *Emulator) setReplicaPublishing(r *replication, on bool) {
	if r.state != replActive {
		return
	}
	if dst, ok := e.st.stages[r.destArn]; ok && dst.active != nil {
		if replica := dst.active.participant(r.participantID); replica != nil {
			replica.publishing = on
		}
	}
}

type replicaJSON struct {
	SourceStageArn       string `json:"sourceStageArn"`
	ParticipantID        string `json:"participantId"`
	SourceSessionID      string `json:"sourceSessionId"`
	DestinationStageArn  string `json:"destinationStageArn"`
	DestinationSessionID string `json:"destinationSessionId"`
	ReplicationState     string `json:"replicationState"`
}

// listParticipantReplicas lists the replications of one source participant
// that became ACTIVE, including those since STOPPED. One still starting is
// not listed yet.
func (e *Emulator) listParticipantReplicas(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		SourceStageArn string `json:"sourceStageArn"`
		ParticipantID  string `json:"participantId"`
		listInput
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	var all []*replication
	for _, r := range e.st.replications {
		if r.sourceArn == in.SourceStageArn && r.participantID == in.ParticipantID && r.destSession != "" {
			all = append(all, r)
		}
	}
	items, next, aerr := page(all, func(r *replication) int64 { return r.seq }, in.NextToken, in.MaxResults)
	if aerr != nil {
		return nil, aerr
	}
	out := make([]replicaJSON, len(items))
	for i, r := range items {
		out[i] = replicaJSON{
			SourceStageArn:       r.sourceArn,
			ParticipantID:        r.participantID,
			SourceSessionID:      r.sourceSession,
			DestinationStageArn:  r.destArn,
			DestinationSessionID: r.destSession,
			ReplicationState:     r.state,
		}
	}
	return withNext(map[string]any{"replicas": out}, next), nil
}
