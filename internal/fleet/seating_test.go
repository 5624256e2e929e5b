package fleet

import (
	"testing"

	"github.com/stagefleet/stagefleet/internal/store"
)

func TestSeatable(t *testing.T) {
	const origin, replica = "arn:o", "arn:r"
	host := func(id string, publishing bool) store.Host {
		return store.Host{ParticipantID: id, Publishing: publishing}
	}
	repl := func(id, state string) store.Replication {
		return store.Replication{ParticipantID: id, DestArn: replica, State: state}
	}
	tests := []struct {
		name  string
		stage store.Stage
		hosts []store.Host
		reps  []store.Replication
		want  bool
	}{
		{"origin with a publishing host", store.Stage{Arn: origin, Role: store.RoleOrigin}, []store.Host{host("h1", true)}, nil, true},
		{"origin with hosts not publishing", store.Stage{Arn: origin, Role: store.RoleOrigin}, []store.Host{host("h1", false)}, nil, false},
		{"origin with no host", store.Stage{Arn: origin, Role: store.RoleOrigin}, nil, nil, false},
		{"new replica, replication starting", store.Stage{Arn: replica, Role: store.RoleReplica}, []store.Host{host("h1", true)}, []store.Replication{repl("h1", store.ReplStarting)}, false},
		{"new replica, no replication yet", store.Stage{Arn: replica, Role: store.RoleReplica}, []store.Host{host("h1", true)}, nil, false},
		{"replica, replication active", store.Stage{Arn: replica, Role: store.RoleReplica}, []store.Host{host("h1", true)}, []store.Replication{repl("h1", store.ReplActive)}, true},
		{"replica, a second host live and not yet replicated", store.Stage{Arn: replica, Role: store.RoleReplica},
			[]store.Host{host("h1", true), host("h2", true)}, []store.Replication{repl("h1", store.ReplActive), repl("h2", store.ReplStarting)}, false},
		{"replica, both hosts replicated", store.Stage{Arn: replica, Role: store.RoleReplica},
			[]store.Host{host("h1", true), host("h2", true)}, []store.Replication{repl("h1", store.ReplActive), repl("h2", store.ReplActive)}, true},
		{"replica, a host that stopped publishing does not count", store.Stage{Arn: replica, Role: store.RoleReplica},
			[]store.Host{host("h1", true), host("h2", false)}, []store.Replication{repl("h1", store.ReplActive), repl("h2", store.ReplPending)}, true},
		{"replica, no host publishing", store.Stage{Arn: replica, Role: store.RoleReplica}, []store.Host{host("h1", false)}, []store.Replication{repl("h1", store.ReplActive)}, false},
		{"replica draining", store.Stage{Arn: replica, Role: store.RoleReplica, Draining: true}, []store.Host{host("h1", true)}, []store.Replication{repl("h1", store.ReplActive)}, false},
		{"manual stage", store.Stage{Arn: replica, Role: store.RoleManual}, []store.Host{host("h1", true)}, []store.Replication{repl("h1", store.ReplActive)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reps := map[replKey]store.Replication{}
			for _, r := range tt.reps {
				reps[replKey{r.ParticipantID, r.DestArn}] = r
			}
			if got := seatable(tt.stage, tt.hosts, reps); got != tt.want {
				t.Errorf("seatable = %v, want %v", got, tt.want)
			}
		})
	}
}
