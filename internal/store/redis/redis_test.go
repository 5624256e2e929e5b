package redis_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/redistest"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/redis"
	"github.com/stagefleet/stagefleet/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	srv := redistest.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		// Each store gets its own prefix: the subtests share one server.
		rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		return redis.New(rdb, fmt.Sprintf("test%d", n.Add(1)))
	})
}

func seatable(t *testing.T, st *redis.Store, arn string) {
	t.Helper()
	err := st.PutStage(t.Context(), store.Stage{Arn: arn, BroadcastID: "b", Role: store.RoleOrigin, Capacity: 1000, Seatable: true, CreatedAt: time.Now()})
	if err != nil {
		t.Fatalf("PutStage: %v", err)
	}
}

// TestConformanceCluster runs the suite on a Redis Cluster of three masters:
// every script must keep to one slot (CROSSSLOT otherwise), and the global
// keys and pipelines must work across nodes.
func TestConformanceCluster(t *testing.T) {
	addrs := redistest.StartCluster(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
		return redis.New(rdb, fmt.Sprintf("cluster%d", n.Add(1)))
	})
}

// A join, new or repeated, is one round trip to Redis: one EVALSHA.
func TestReserveSeatOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "")
	seatable(t, st, "arn:aws:ivs:us-east-1:123456789012:stage/origin")
	counter := &redistest.CommandCounter{}
	rdb.AddHook(counter)
	req := store.SeatRequest{BroadcastID: "b", ParticipantID: "p", Now: time.Now(), TTL: time.Minute}
	for i := range 100 {
		req.UserID = fmt.Sprintf("viewer-%d", i%50) // half are repeats
		if _, err := st.ReserveSeat(t.Context(), req); err != nil {
			t.Fatalf("ReserveSeat: %v", err)
		}
	}
	// The first call loads the script (EVALSHA answered NOSCRIPT, then
	// EVAL); every later one is a single EVALSHA.
	if got := counter.Count(); got != 100+1 {
		t.Fatalf("100 joins sent %d commands, want 101 (100 EVALSHA and one EVAL loading the script)", got)
	}
}

// After Redis loses its script cache (a restart, SCRIPT FLUSH), scripts are
// sent again: no call fails with NOSCRIPT.
func TestSurvivesScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "")
	seatable(t, st, "arn:aws:ivs:us-east-1:123456789012:stage/origin")
	req := store.SeatRequest{BroadcastID: "b", UserID: "v1", ParticipantID: "p", Now: time.Now(), TTL: time.Minute}
	if _, err := st.ReserveSeat(t.Context(), req); err != nil {
		t.Fatalf("ReserveSeat: %v", err)
	}
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatalf("SCRIPT FLUSH: %v", err)
	}
	req.UserID = "v2"
	if _, err := st.ReserveSeat(t.Context(), req); err != nil {
		t.Fatalf("ReserveSeat after SCRIPT FLUSH: %v", err)
	}
	srv.Restart()
	seatable(t, st, "arn:aws:ivs:us-east-1:123456789012:stage/origin")
	if _, err := st.ReserveSeat(t.Context(), req); err != nil {
		t.Fatalf("ReserveSeat after a restart: %v", err)
	}
}
