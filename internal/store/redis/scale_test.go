package redis_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/redistest"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/redis"
)

// bigStages records n seatable stages of capacity each in broadcast b.
func bigStages(tb testing.TB, st *redis.Store, b string, n, capacity int) {
	tb.Helper()
	for i := range n {
		arn := fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/s%05d", i)
		if err := st.PutStage(tb.Context(), store.Stage{Arn: arn, BroadcastID: b, Role: store.RoleReplica, Capacity: capacity, Seatable: true, CreatedAt: time.Now()}); err != nil {
			tb.Fatal(err)
		}
	}
}

func usedMemory(tb testing.TB, rdb *goredis.Client) int64 {
	tb.Helper()
	info, err := rdb.Info(tb.Context(), "memory").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatal("no used_memory in INFO memory")
	return 0
}

// TestSeatCost seats 100,000 viewers of one broadcast on 10 stages of
// capacity 10,000 through the batched store and checks the invariants (no
// stage past its capacity, every viewer seated once); it reports what a
// seat costs in Redis's memory.
func TestSeatCost(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "cost", redis.WithSeatBatching())
	const stages, capacity, viewers = 10, 10_000, 100_000
	bigStages(t, st, "b", stages, capacity)
	before := usedMemory(t, rdb)
	var next, failed atomic.Int64
	start := time.Now()
	done := make(chan struct{})
	for range 64 {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				i := next.Add(1) - 1
				if i >= viewers {
					return
				}
				_, err := st.ReserveSeat(t.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprintf("viewer-%07d", i), ParticipantID: fmt.Sprintf("P%024d", i), Now: time.Now(), TTL: time.Minute})
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	for range 64 {
		<-done
	}
	took := time.Since(start)
	if failed.Load() != 0 {
		t.Fatalf("%d of %d viewers not seated", failed.Load(), viewers)
	}
	all, err := st.ListStages(t.Context(), "b")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, s := range all {
		if s.Seats > s.Capacity {
			t.Errorf("stage %s holds %d seats, capacity %d", s.Arn, s.Seats, s.Capacity)
		}
		total += s.Seats
	}
	if total != viewers {
		t.Errorf("stages hold %d seats for %d viewers", total, viewers)
	}
	perSeat := float64(usedMemory(t, rdb)-before) / viewers
	if perSeat > 1024 {
		t.Errorf("a seat costs %.0f bytes of Redis memory; want well under 1 KiB", perSeat)
	}
	t.Logf("%d viewers seated in %v (%.0f joins/s through one Redis slot); %.0f bytes of Redis memory per seat", viewers, took.Round(time.Millisecond), viewers/took.Seconds(), perSeat)
}

// BenchmarkSeatOps is the seat operations' throughput through one
// broadcast (one Redis slot), batched as serve runs them: joins, and the
// renewals every seated viewer makes.
func BenchmarkSeatOps(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	st := redis.New(rdb, "bench", redis.WithSeatBatching())
	bigStages(b, st, "b", 100, 10_000)
	var next atomic.Int64
	b.Run("reserve", func(b *testing.B) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := next.Add(1)
				if _, err := st.ReserveSeat(b.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprint("v", i), ParticipantID: "P", Now: time.Now(), TTL: time.Hour}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	seated := next.Load()
	b.Run("renew", func(b *testing.B) {
		b.SetParallelism(16)
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)%seated + 1
				if _, err := st.RenewSeat(b.Context(), "b", fmt.Sprint("v", i), store.SeatOwner{ParticipantID: "P"}, time.Now(), time.Hour); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
