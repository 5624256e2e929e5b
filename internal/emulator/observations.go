package emulator

import "slices"

// Observations are what the emulator noticed about how its clients use it.
// They are not part of AWS and change nothing the emulator does; they let a
// test hold the client (stagefleet) to its own rules, which AWS would not
// enforce either.
type Observations struct {
	// SubscribersBeforeReplicaActive counts subscribers that joined a
	// replication destination while some host was not yet replicated into it
	// (see earlyJoinGaps). stagefleet must seat a viewer on a replica stage
	// only once every publishing host's replication into it is ACTIVE, or the
	// viewer sees a stage without that host.
	SubscribersBeforeReplicaActive int `json:"subscribersBeforeReplicaActive"`
	// RecentSubscribersBeforeReplicaActive are the last of those joins, most
	// recent last, to tell which stage and host it was.
	RecentSubscribersBeforeReplicaActive []EarlySubscriberJoin `json:"recentSubscribersBeforeReplicaActive"`
}

// EarlySubscriberJoin is one subscriber that joined a replication
// destination before every host was replicated into it.
type EarlySubscriberJoin struct {
	StageArn      string `json:"stageArn"`
	SessionID     string `json:"sessionId"`
	ParticipantID string `json:"participantId"`
	UserID        string `json:"userId,omitempty"`
	Time          string `json:"time"`
	// Missing are the hosts that had no ACTIVE replica in the stage then.
	Missing []MissingReplica `json:"missing"`
}

// MissingReplica is a host of a source stage without an ACTIVE replica in
// a destination.
type MissingReplica struct {
	SourceStageArn string `json:"sourceStageArn"`
	ParticipantID  string `json:"participantId"`
	// ReplicationState is that of the host's replication into the
	// destination: STARTING, STOPPED, or NONE when none was ever started.
	ReplicationState string `json:"replicationState"`
}

// recentEarlyJoins is how many early joins Observations keeps; enough to
// debug one failing test without growing with a long load test.
const recentEarlyJoins = 10

// SubscribersBeforeReplicaActive returns how many subscribers joined a
// replication destination before every host's replica in it was ACTIVE.
func (e *Emulator) SubscribersBeforeReplicaActive() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.observed.SubscribersBeforeReplicaActive
}

// observeJoin records p, who has just joined s, if it is a subscriber (its
// token cannot publish) joining a replication destination too early. It
// only looks: the join has happened and stands either way.
func (e *Emulator) observeJoin(s *stage, p *participant) {
	if p.canPublish {
		return
	}
	missing := e.earlyJoinGaps(s)
	if len(missing) == 0 {
		return
	}
	e.observed.SubscribersBeforeReplicaActive++
	join := EarlySubscriberJoin{
		StageArn:      s.arn,
		SessionID:     s.active.id,
		ParticipantID: p.id,
		UserID:        p.userID,
		Time:          isoTime(e.now()),
		Missing:       missing,
	}
	recent := append(e.observed.RecentSubscribersBeforeReplicaActive, join)
	if len(recent) > recentEarlyJoins {
		// Copy rather than reslice, so the dropped joins can be collected.
		recent = append([]EarlySubscriberJoin(nil), recent[len(recent)-recentEarlyJoins:]...)
	}
	e.observed.RecentSubscribersBeforeReplicaActive = recent
	e.log.Debug("subscriber joined before replicas were active", "stage", s.arn, "participant", p.id, "missing", len(missing))
}

// earlyJoinGaps returns the hosts a subscriber of dst would miss now because
// their replica in dst is not ACTIVE, nil when dst is not a replication
// destination or every host's replica in it is ACTIVE. A stage is a
// destination when any replication into it was ever started, whatever its
// state now, so a stage whose replicas all stopped while its sources still
// have hosts publishing counts too. The hosts are:
//   - the participant of every replication into dst still starting, even
//     one whose source is not publishing now (within its reconnect window);
//   - every participant publishing now in a source stage of dst (that of any
//     replication into dst), unless its replication from that stage into dst
//     is ACTIVE. Replicas in the source count, as hosts of a chain, except
//     those replicated from dst itself, whose media dst already has.
func (e *Emulator) earlyJoinGaps(dst *stage) []MissingReplica {
	var (
		missing []MissingReplica
		sources []string
		seen    = map[[2]string]bool{}
	)
	add := func(src, participantID, state string) {
		key := [2]string{src, participantID}
		if !seen[key] {
			seen[key] = true
			missing = append(missing, MissingReplica{SourceStageArn: src, ParticipantID: participantID, ReplicationState: state})
		}
	}
	for _, r := range e.st.replications {
		if r.destArn != dst.arn {
			continue
		}
		if !slices.Contains(sources, r.sourceArn) {
			sources = append(sources, r.sourceArn)
		}
		if r.state == replStarting {
			add(r.sourceArn, r.participantID, replStarting)
		}
	}
	for _, arn := range sources {
		src, ok := e.st.stages[arn]
		if !ok || src.active == nil {
			continue
		}
		for _, p := range src.active.participants {
			if !p.connected() || !p.publishing || (p.replicationType == replReplica && p.sourceStageArn == dst.arn) {
				continue
			}
			switch r := e.findReplication(arn, dst.arn, p.id); {
			case r == nil:
				add(arn, p.id, replNone)
			case r.state != replActive:
				add(arn, p.id, r.state)
			}
		}
	}
	return missing
}
