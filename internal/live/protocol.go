package live

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

// Channels a client subscribes to. chanStats and its messages are the
// previous server's; the others are stagefleet's own.
const (
	chanStats      = "stats"
	chanBroadcasts = "broadcasts"
	// chanBroadcast is the prefix of one broadcast's channel,
	// "broadcast:<id>".
	chanBroadcast = "broadcast:"
)

// checkChannel says what is wrong with a channel's name, if anything.
func checkChannel(name string) error {
	switch {
	case name == chanStats || name == chanBroadcasts:
		return nil
	case strings.HasPrefix(name, chanBroadcast):
		// A channel names only a broadcast the API could have made.
		if !fleet.ValidBroadcastID(strings.TrimPrefix(name, chanBroadcast)) {
			return fmt.Errorf("channel %q: a broadcast id is 1 to 64 letters, digits, '-' or '_'", name)
		}
		return nil
	case name == "":
		return errors.New("channel is required: stats, broadcasts or broadcast:<id>")
	}
	return fmt.Errorf("unknown channel %q: use stats, broadcasts or broadcast:<id>", name)
}

// clientMessage is anything a client sends.
type clientMessage struct {
	Type    string `json:"type"`
	Channel string `json:"channel"`
}

// reply answers a client's message: subscribed, unsubscribed, pong, error.
type reply struct {
	Type      string `json:"type"`
	Channel   string `json:"channel,omitempty"`
	Message   string `json:"message,omitempty"`
	Timestamp string `json:"timestamp,omitempty"`
}

// push is a message of a channel: broadcast_update, broadcasts_update and
// fleet_event.
type push struct {
	Type      string `json:"type"`
	Channel   string `json:"channel"`
	Timestamp string `json:"timestamp"`
	Data      any    `json:"data"`
}

// statsUpdate is the previous server's message, shape and all: no channel,
// the timestamp inside data.
type statsUpdate struct {
	Type string    `json:"type"`
	Data statsData `json:"data"`
}

type statsData struct {
	ViewerCount     int    `json:"viewerCount"`
	ActiveStages    int    `json:"activeStages"`
	TotalViewers    int    `json:"totalViewers"`
	IsPublisherLive bool   `json:"isPublisherLive"`
	Timestamp       string `json:"timestamp"`
}

// timestamp is t as the previous server (Node's toISOString) wrote it:
// RFC 3339 in UTC with milliseconds.
func timestamp(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// encode marshals a message; every message is made of strings, numbers,
// booleans and slices of them, so marshalling cannot fail.
func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("live: encoding %T: %v", v, err))
	}
	return b
}

// broadcastState is what a broadcast:<id> channel shows: the data of its
// broadcast_update.
type broadcastState struct {
	BroadcastID string       `json:"broadcastId"`
	Hosts       []hostState  `json:"hosts"`
	Stages      []stageState `json:"stages"`
	// Viewers are the seats held on every stage; Capacity the seats of
	// the stages that take viewers now.
	Viewers  int `json:"viewers"`
	Capacity int `json:"capacity"`
}

type hostState struct {
	ParticipantID string `json:"participantId"`
	UserID        string `json:"userId"`
	Publishing    bool   `json:"publishing"`
}

type stageState struct {
	Arn          string             `json:"arn"`
	Name         string             `json:"name"`
	Role         store.Role         `json:"role"`
	Seats        int                `json:"seats"`
	Capacity     int                `json:"capacity"`
	Seatable     bool               `json:"seatable"`
	Draining     bool               `json:"draining"`
	Replications []replicationState `json:"replications"`
}

type replicationState struct {
	ParticipantID string `json:"participantId"`
	State         string `json:"state"`
}

// roleOrder lists the origin first, then replicas, then manual stages.
var roleOrder = map[store.Role]int{store.RoleOrigin: 0, store.RoleReplica: 1, store.RoleManual: 2}

// newBroadcastState orders what the fleet's views hold, so that two reads
// of the same fleet compare equal whatever order the store listed them in.
func newBroadcastState(id string, stages []fleet.StageView, hosts []store.Host) broadcastState {
	st := broadcastState{BroadcastID: id, Hosts: make([]hostState, 0, len(hosts)), Stages: make([]stageState, 0, len(stages))}
	for _, h := range hosts {
		st.Hosts = append(st.Hosts, hostState{h.ParticipantID, h.UserID, h.Publishing})
	}
	slices.SortFunc(st.Hosts, func(a, b hostState) int { return strings.Compare(a.ParticipantID, b.ParticipantID) })
	sorted := slices.Clone(stages)
	slices.SortFunc(sorted, func(a, b fleet.StageView) int {
		return cmp.Or(cmp.Compare(roleOrder[a.Role], roleOrder[b.Role]), a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.Arn, b.Arn))
	})
	for _, v := range sorted {
		s := stageState{Arn: v.Arn, Name: v.Name, Role: v.Role, Seats: v.Seats, Capacity: v.Capacity,
			Seatable: v.Seatable, Draining: v.Draining, Replications: make([]replicationState, 0, len(v.Replications))}
		for _, r := range v.Replications {
			s.Replications = append(s.Replications, replicationState{r.ParticipantID, r.State})
		}
		slices.SortFunc(s.Replications, func(a, b replicationState) int { return strings.Compare(a.ParticipantID, b.ParticipantID) })
		st.Stages = append(st.Stages, s)
		st.Viewers += v.Seats
		if v.Seatable {
			st.Capacity += v.Capacity
		}
	}
	return st
}

// publishing counts the hosts publishing now.
func (st broadcastState) publishing() int {
	n := 0
	for _, h := range st.Hosts {
		if h.Publishing {
			n++
		}
	}
	return n
}

// broadcastSummary is one broadcast in the broadcasts channel.
type broadcastSummary struct {
	BroadcastID string `json:"broadcastId"`
	Viewers     int    `json:"viewers"`
	Stages      int    `json:"stages"`
	HostsLive   int    `json:"hostsLive"`
}

type broadcastsData struct {
	Broadcasts []broadcastSummary `json:"broadcasts"`
}

func summarize(all []broadcastState) broadcastsData {
	d := broadcastsData{Broadcasts: make([]broadcastSummary, 0, len(all))}
	for _, st := range all {
		d.Broadcasts = append(d.Broadcasts, broadcastSummary{st.BroadcastID, st.Viewers, len(st.Stages), st.publishing()})
	}
	slices.SortFunc(d.Broadcasts, func(a, b broadcastSummary) int { return strings.Compare(a.BroadcastID, b.BroadcastID) })
	return d
}

// stats are the previous server's totals over every broadcast.
func stats(all []broadcastState, now time.Time) statsData {
	d := statsData{Timestamp: timestamp(now)}
	for _, st := range all {
		d.TotalViewers += st.Viewers
		d.ActiveStages += len(st.Stages)
		d.IsPublisherLive = d.IsPublisherLive || st.publishing() > 0
	}
	d.ViewerCount = d.TotalViewers
	return d
}

// Kinds of fleet_event.
const (
	eventStageCreated       = "stage_created"
	eventStageRemoved       = "stage_removed"
	eventStageDraining      = "stage_draining"
	eventStageOpened        = "stage_opened"
	eventStageClosed        = "stage_closed"
	eventReplicationActive  = "replication_active"
	eventReplicationStopped = "replication_stopped"
	eventHostLive           = "host_live"
	eventHostLeft           = "host_left"
)

// fleetEvent is the data of a fleet_event.
type fleetEvent struct {
	Kind          string     `json:"kind"`
	StageArn      string     `json:"stageArn,omitempty"`
	ParticipantID string     `json:"participantId,omitempty"`
	Role          store.Role `json:"role,omitempty"`
}

// changes lists what changed from old to cur as events. Every transition
// is one event, a stage or host that comes or goes included (an absent
// stage counts as neither seatable nor replicated into, an absent host as
// not publishing), so that a client counting opened against closed, or
// active against stopped, stays right.
func changes(old, cur broadcastState) []fleetEvent {
	var out []fleetEvent
	before := map[string]stageState{}
	for _, s := range old.Stages {
		before[s.Arn] = s
	}
	now := map[string]bool{}
	for _, s := range cur.Stages {
		now[s.Arn] = true
		o, existed := before[s.Arn]
		stage := func(kind string) fleetEvent { return fleetEvent{Kind: kind, StageArn: s.Arn, Role: s.Role} }
		if !existed {
			out = append(out, stage(eventStageCreated))
		}
		if s.Draining && !o.Draining {
			out = append(out, stage(eventStageDraining))
		}
		switch {
		case s.Seatable && !o.Seatable:
			out = append(out, stage(eventStageOpened))
		case !s.Seatable && o.Seatable:
			out = append(out, stage(eventStageClosed))
		}
		out = append(out, replicationChanges(s.Arn, o.Replications, s.Replications)...)
	}
	for _, o := range old.Stages {
		if now[o.Arn] {
			continue
		}
		out = append(out, replicationChanges(o.Arn, o.Replications, nil)...)
		if o.Seatable {
			out = append(out, fleetEvent{Kind: eventStageClosed, StageArn: o.Arn, Role: o.Role})
		}
		out = append(out, fleetEvent{Kind: eventStageRemoved, StageArn: o.Arn, Role: o.Role})
	}
	live := func(hs []hostState) map[string]bool {
		m := map[string]bool{}
		for _, h := range hs {
			if h.Publishing {
				m[h.ParticipantID] = true
			}
		}
		return m
	}
	wasLive, isLive := live(old.Hosts), live(cur.Hosts)
	for _, h := range cur.Hosts {
		if isLive[h.ParticipantID] && !wasLive[h.ParticipantID] {
			out = append(out, fleetEvent{Kind: eventHostLive, ParticipantID: h.ParticipantID})
		}
	}
	for _, h := range old.Hosts {
		if wasLive[h.ParticipantID] && !isLive[h.ParticipantID] {
			out = append(out, fleetEvent{Kind: eventHostLeft, ParticipantID: h.ParticipantID})
		}
	}
	return out
}

// replicationChanges are the replications into one stage that became
// active, or stopped being active.
func replicationChanges(arn string, old, cur []replicationState) []fleetEvent {
	active := func(rs []replicationState) map[string]bool {
		m := map[string]bool{}
		for _, r := range rs {
			if r.State == store.ReplActive {
				m[r.ParticipantID] = true
			}
		}
		return m
	}
	was, is := active(old), active(cur)
	var out []fleetEvent
	for _, r := range cur {
		if is[r.ParticipantID] && !was[r.ParticipantID] {
			out = append(out, fleetEvent{Kind: eventReplicationActive, StageArn: arn, ParticipantID: r.ParticipantID})
		}
	}
	for _, r := range old {
		if was[r.ParticipantID] && !is[r.ParticipantID] {
			out = append(out, fleetEvent{Kind: eventReplicationStopped, StageArn: arn, ParticipantID: r.ParticipantID})
		}
	}
	return out
}
