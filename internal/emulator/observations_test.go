package emulator

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime/types"
)

// wantEarlyJoins checks the count of subscribers that joined before their
// stage's replicas were ACTIVE, both through the accessor and through GET
// /_emulator/state, and returns the state's observations.
func wantEarlyJoins(t *testing.T, env *testEnv, want int) Observations {
	t.Helper()
	if got := env.emu.SubscribersBeforeReplicaActive(); got != want {
		t.Fatalf("SubscribersBeforeReplicaActive() = %d, want %d", got, want)
	}
	obs := env.state(t).Observations
	if obs.SubscribersBeforeReplicaActive != want {
		t.Fatalf("state observations.subscribersBeforeReplicaActive = %d, want %d", obs.SubscribersBeforeReplicaActive, want)
	}
	if len(obs.RecentSubscribersBeforeReplicaActive) != min(want, recentEarlyJoins) {
		t.Fatalf("state keeps %d recent early joins, want %d: %+v",
			len(obs.RecentSubscribersBeforeReplicaActive), min(want, recentEarlyJoins), obs.RecentSubscribersBeforeReplicaActive)
	}
	return obs
}

// wantLastEarlyJoin checks the most recent early join recorded.
func wantLastEarlyJoin(t *testing.T, obs Observations, stageArn, participantID string, missing ...MissingReplica) {
	t.Helper()
	joins := obs.RecentSubscribersBeforeReplicaActive
	if len(joins) == 0 {
		t.Fatal("no early join recorded")
	}
	last := joins[len(joins)-1]
	if last.StageArn != stageArn || last.ParticipantID != participantID || last.SessionID == "" || last.Time == "" {
		t.Errorf("last early join %+v, want %s in %s with its session and time", last, participantID, stageArn)
	}
	if !slices.Equal(last.Missing, missing) {
		t.Errorf("last early join misses %+v, want %+v", last.Missing, missing)
	}
}

func TestSubscriberBeforeReplicaActive(t *testing.T) {
	t.Parallel()
	cfg := quiet()
	// Long enough that the join below comes before activation even on a
	// slow machine under the race detector.
	cfg.ReplicaDelay = time.Second
	env := newTestEnv(t, cfg)
	src, pid := env.host(t, "origin")
	dst := env.newStage(t, "replica")
	wantEarlyJoins(t, env, 0)

	env.mustStartReplication(t, src, dst, pid, 0)
	early := env.guest(t, dst, "viewer-early", "SUBSCRIBE")
	if state := env.replicationState(t, src, dst, pid); state != "" {
		t.Fatalf("replication %q right after the join, want still starting (raise the replica delay)", state)
	}
	obs := wantEarlyJoins(t, env, 1)
	wantLastEarlyJoin(t, obs, dst, early.ParticipantID, MissingReplica{SourceStageArn: src, ParticipantID: pid, ReplicationState: replStarting})
	if j := obs.RecentSubscribersBeforeReplicaActive[0]; j.UserID != "viewer-early" || j.SessionID != early.SessionID {
		t.Errorf("early join %+v, want user viewer-early in session %s", j, early.SessionID)
	}

	// A participant that may publish is a host, not a viewer, wherever it
	// joins.
	env.guest(t, dst, "co-host", "PUBLISH", "SUBSCRIBE")
	wantEarlyJoins(t, env, 1)

	eventually(t, 10*time.Second, "replication ACTIVE", func() bool {
		return env.replicationState(t, src, dst, pid) == types.ReplicationStateActive
	})
	env.guest(t, dst, "viewer-late", "SUBSCRIBE")
	wantEarlyJoins(t, env, 1)
}

func TestSubscriberBeforeReplicaActiveSecondHost(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	src, dst, pid := env.replicating(t, 0)
	env.guest(t, dst, "viewer-1", "SUBSCRIBE")
	wantEarlyJoins(t, env, 0)

	// A second host starts publishing in the origin; until its replication
	// into the destination is started and ACTIVE, viewers there miss it.
	pid2, _ := env.publisher(t, src, "host-2")
	v2 := env.guest(t, dst, "viewer-2", "SUBSCRIBE")
	obs := wantEarlyJoins(t, env, 1)
	wantLastEarlyJoin(t, obs, dst, v2.ParticipantID, MissingReplica{SourceStageArn: src, ParticipantID: pid2, ReplicationState: replNone})

	env.mustStartReplication(t, src, dst, pid2, 0)
	env.guest(t, dst, "viewer-3", "SUBSCRIBE")
	wantEarlyJoins(t, env, 1)

	// A destination whose replication stopped while its host still
	// publishes is still a destination, now missing that host.
	if _, err := env.ivs.StopParticipantReplication(ctx(t), &ivsrealtime.StopParticipantReplicationInput{
		SourceStageArn: aws.String(src), DestinationStageArn: aws.String(dst), ParticipantId: aws.String(pid),
	}); err != nil {
		t.Fatalf("StopParticipantReplication: %v", err)
	}
	v4 := env.guest(t, dst, "viewer-4", "SUBSCRIBE")
	obs = wantEarlyJoins(t, env, 2)
	wantLastEarlyJoin(t, obs, dst, v4.ParticipantID, MissingReplica{SourceStageArn: src, ParticipantID: pid, ReplicationState: replStopped})

	// Once that host no longer publishes, nobody is missing.
	env.mustAct(t, "leave", src, pid)
	env.guest(t, dst, "viewer-5", "SUBSCRIBE")
	wantEarlyJoins(t, env, 2)
}

func TestSubscriberBeforeReplicaActiveNotOnOrigin(t *testing.T) {
	t.Parallel()
	cfg := quiet()
	// Replications stay starting for the whole test.
	cfg.ReplicaDelay = time.Hour
	env := newTestEnv(t, cfg)
	src, pid := env.host(t, "origin")
	pid2, _ := env.publisher(t, src, "host-2")
	dst := env.newStage(t, "replica")
	plain := env.newStage(t, "plain")
	env.guest(t, src, "viewer-before", "SUBSCRIBE")

	env.mustStartReplication(t, src, dst, pid, 0)
	env.guest(t, src, "viewer-origin", "SUBSCRIBE")
	env.guest(t, plain, "viewer-plain", "SUBSCRIBE")
	wantEarlyJoins(t, env, 0)

	// The destination, in contrast, counts, naming both hosts: one starting,
	// one never started.
	v := env.guest(t, dst, "viewer-dst", "SUBSCRIBE")
	obs := wantEarlyJoins(t, env, 1)
	wantLastEarlyJoin(t, obs, dst, v.ParticipantID,
		MissingReplica{SourceStageArn: src, ParticipantID: pid, ReplicationState: replStarting},
		MissingReplica{SourceStageArn: src, ParticipantID: pid2, ReplicationState: replNone})
}

func TestSubscriberBeforeReplicaActiveRecentBounded(t *testing.T) {
	t.Parallel()
	cfg := quiet()
	cfg.ReplicaDelay = time.Hour
	env := newTestEnv(t, cfg)
	src, pid := env.host(t, "origin")
	dst := env.newStage(t, "replica")
	env.mustStartReplication(t, src, dst, pid, 0)
	var last joinResult
	for i := range recentEarlyJoins + 3 {
		last = env.guest(t, dst, "viewer", "SUBSCRIBE")
		wantEarlyJoins(t, env, i+1)
	}
	obs := env.state(t).Observations
	wantLastEarlyJoin(t, obs, dst, last.ParticipantID, MissingReplica{SourceStageArn: src, ParticipantID: pid, ReplicationState: replStarting})
}

func TestSubscriberBeforeReplicaActiveReset(t *testing.T) {
	t.Parallel()
	cfg := quiet()
	cfg.ReplicaDelay = time.Hour
	env := newTestEnv(t, cfg)
	src, pid := env.host(t, "origin")
	dst := env.newStage(t, "replica")
	env.mustStartReplication(t, src, dst, pid, 0)
	env.guest(t, dst, "viewer", "SUBSCRIBE")
	wantEarlyJoins(t, env, 1)

	if status := env.control(t, http.MethodPost, "/_emulator/reset", nil, nil); status != http.StatusOK {
		t.Fatalf("POST /_emulator/reset: status %d", status)
	}
	obs := wantEarlyJoins(t, env, 0)
	if obs.RecentSubscribersBeforeReplicaActive == nil {
		t.Error("recent early joins are null after reset, want an empty list")
	}
}
