package storetest

import (
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

func getBroadcast(t *testing.T, st store.Store, id string) store.Broadcast {
	t.Helper()
	b, err := st.GetBroadcast(testCtx(t), id)
	must(t, err, "GetBroadcast %s", id)
	return b
}

func listBroadcasts(t *testing.T, st store.Store) []store.Broadcast {
	t.Helper()
	bs, err := st.ListBroadcasts(testCtx(t))
	must(t, err, "ListBroadcasts")
	return bs
}

func testPutBroadcast(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	a := store.Broadcast{ID: bcA, OriginArn: arn("origin-1"), CreatedAt: at(time.Second)}
	wantErr(t, st.PutBroadcast(ctx, a), store.ErrNotFound, "PutBroadcast of an unknown broadcast")
	_, err := st.GetBroadcast(ctx, bcA)
	wantErr(t, err, store.ErrNotFound, "GetBroadcast after a refused PutBroadcast")
	if bs := listBroadcasts(t, st); len(bs) != 0 {
		t.Fatalf("a refused PutBroadcast left broadcasts %+v", bs)
	}

	// CreateBroadcast keeps every field too.
	b := store.Broadcast{
		ID:                bcB,
		OriginArn:         arn("origin-b2"),
		CreatedAt:         at(0),
		IdleSince:         at(1500 * time.Millisecond),
		OriginReplacedAt:  at(time.Second),
		ReplacedOriginArn: arn("origin-b1"),
	}
	for _, x := range []store.Broadcast{a, b} {
		_, err := st.CreateBroadcast(ctx, x)
		must(t, err, "CreateBroadcast %s", x.ID)
	}
	if got := getBroadcast(t, st, bcB); normBroadcast(got) != normBroadcast(b) {
		t.Fatalf("GetBroadcast after CreateBroadcast = %+v, want %+v", got, b)
	}

	// Each put replaces the whole record: a field left zero is cleared.
	replaced := store.Broadcast{
		ID:                bcA,
		OriginArn:         arn("origin-2"),
		CreatedAt:         a.CreatedAt,
		IdleSince:         at(2 * time.Second),
		OriginReplacedAt:  at(3250 * time.Millisecond),
		ReplacedOriginArn: arn("origin-1"),
	}
	busy := replaced
	busy.IdleSince = time.Time{}
	idle := a
	idle.IdleSince = at(2 * time.Second)
	steps := []struct {
		name string
		b    store.Broadcast
	}{
		{"idle", idle},
		{"origin replaced while idle", replaced},
		{"busy again", busy},
		{"as first recorded", a},
	}
	for _, s := range steps {
		must(t, st.PutBroadcast(ctx, s.b), "PutBroadcast %s", s.name)
		if got := getBroadcast(t, st, bcA); normBroadcast(got) != normBroadcast(s.b) {
			t.Fatalf("GetBroadcast after PutBroadcast %s = %+v, want %+v", s.name, got, s.b)
		}
		eqList(t, "ListBroadcasts after PutBroadcast "+s.name, listBroadcasts(t, st), []store.Broadcast{s.b, b}, normBroadcast)
	}
}

// fillBroadcast records a broadcast with some of everything a broadcast
// holds (stages, a host, a replication, seats, demand); it returns the
// seats.
func fillBroadcast(t *testing.T, st store.Store, id string) []store.Seat {
	t.Helper()
	ctx := testCtx(t)
	origin := stageRec("origin-"+id, id, 10, true, 0)
	origin.Role = store.RoleOrigin
	replica := stageRec("replica-"+id, id, 10, true, time.Second)
	closed := stageRec("closed-"+id, id, 10, false, 2*time.Second)
	_, err := st.CreateBroadcast(ctx, store.Broadcast{ID: id, OriginArn: origin.Arn, CreatedAt: at(0), IdleSince: at(time.Second)})
	must(t, err, "CreateBroadcast %s", id)
	putStages(t, st, origin, replica, closed)
	must(t, st.PutHost(ctx, store.Host{BroadcastID: id, ParticipantID: "host", UserID: "alice", StageArn: origin.Arn, JoinedAt: at(0), Publishing: true}), "PutHost")
	must(t, st.PutReplication(ctx, store.Replication{BroadcastID: id, ParticipantID: "host", SourceArn: origin.Arn, DestArn: replica.Arn, State: store.ReplActive, UpdatedAt: at(time.Second)}), "PutReplication")
	must(t, st.PutDemand(ctx, id, store.Demand{Instance: "i1", Waiting: 2, JoinRate: 0.5, At: at(time.Second)}), "PutDemand")
	return []store.Seat{
		reserve(t, st, id, "v1", origin.Arn),
		reserve(t, st, id, "v2", replica.Arn),
		reserve(t, st, id, "v3", replica.Arn),
	}
}

func testDeleteBroadcast(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	_, err := st.DeleteBroadcast(ctx, bcA)
	wantErr(t, err, store.ErrNotFound, "DeleteBroadcast of an unknown broadcast")

	seatsA := fillBroadcast(t, st, bcA)
	fillBroadcast(t, st, bcB)
	otherBefore := snapshot(t, st, bcB)
	other := getBroadcast(t, st, bcB)
	l := acquire(t, st, bcA, "control", "one", time.Hour)
	fenced := store.WithFence(ctx, l)
	freed, err := st.DeleteBroadcast(fenced, bcA)
	must(t, err, "DeleteBroadcast")
	eqSeatSet(t, "seats DeleteBroadcast returned", freed, seatsA)

	// Nothing of the broadcast is left.
	_, err = st.GetBroadcast(ctx, bcA)
	wantErr(t, err, store.ErrNotFound, "GetBroadcast of a deleted broadcast")
	eqList(t, "ListBroadcasts after DeleteBroadcast", listBroadcasts(t, st), []store.Broadcast{other}, normBroadcast)
	for _, id := range []string{"origin-" + bcA, "replica-" + bcA, "closed-" + bcA} {
		_, err := st.GetStage(ctx, arn(id))
		wantErr(t, err, store.ErrNotFound, "GetStage of a deleted broadcast's stage")
		wantErr(t, st.SetSeatable(ctx, arn(id), true), store.ErrNotFound, "SetSeatable of a deleted broadcast's stage")
	}
	_, err = st.GetHost(ctx, bcA, "host")
	wantErr(t, err, store.ErrNotFound, "GetHost of a deleted broadcast")
	_, err = st.GetReplication(ctx, bcA, "host", arn("replica-"+bcA))
	wantErr(t, err, store.ErrNotFound, "GetReplication of a deleted broadcast")
	stages, err := st.ListStages(ctx, bcA)
	must(t, err, "ListStages")
	hosts, err := st.ListHosts(ctx, bcA)
	must(t, err, "ListHosts")
	reps, err := st.ListReplications(ctx, bcA)
	must(t, err, "ListReplications")
	demand, err := st.ListDemand(ctx, bcA, time.Time{})
	must(t, err, "ListDemand")
	left := map[string]int{
		"stages":       len(stages),
		"hosts":        len(hosts),
		"replications": len(reps),
		"seats":        len(listSeats(t, st, bcA)),
		"demands":      len(demand),
	}
	for what, n := range left {
		if n != 0 {
			t.Errorf("%d %s of the deleted broadcast are left", n, what)
		}
	}
	_, err = st.ReleaseSeat(ctx, bcA, "v1")
	wantErr(t, err, store.ErrNotFound, "ReleaseSeat in a deleted broadcast")
	_, err = st.RenewSeat(ctx, bcA, "v2", owner("v2"), base, ttl)
	wantErr(t, err, store.ErrNotFound, "RenewSeat in a deleted broadcast")
	_, err = st.ReserveSeat(ctx, seatReq(bcA, "v4", ""))
	wantErr(t, err, store.ErrNotLive, "ReserveSeat in a deleted broadcast")
	if after := snapshot(t, st, bcB); after != otherBefore {
		t.Fatalf("deleting another broadcast changed this one:\nbefore %s\nafter  %s", otherBefore, after)
	}

	_, err = st.DeleteBroadcast(ctx, bcA)
	wantErr(t, err, store.ErrNotFound, "DeleteBroadcast twice")
	wantErr(t, st.PutBroadcast(ctx, store.Broadcast{ID: bcA, CreatedAt: at(0)}), store.ErrNotFound, "PutBroadcast of a deleted broadcast")

	// The lease is left to run out: still held, and its fence still good.
	_, err = st.AcquireLease(ctx, bcA, "control", "two", time.Hour)
	wantErr(t, err, store.ErrLeaseHeld, "AcquireLease of a deleted broadcast's lease")

	// The id can be used again, from nothing: a stage recorded again under
	// a deleted one's ARN has no seats.
	again := store.Broadcast{ID: bcA, OriginArn: arn("origin-" + bcA), CreatedAt: at(time.Hour)}
	_, err = st.CreateBroadcast(fenced, again)
	must(t, err, "CreateBroadcast after DeleteBroadcast")
	eqList(t, "ListBroadcasts after the broadcast was made again", listBroadcasts(t, st), []store.Broadcast{again, other}, normBroadcast)
	origin := stageRec("origin-"+bcA, bcA, 10, true, time.Hour)
	putStages(t, st, origin)
	wantSeats(t, st, origin.Arn, 0)
	if seat := reserve(t, st, bcA, "v1", ""); seat.StageArn != origin.Arn {
		t.Fatalf("seat %+v after the broadcast was made again, want one on %s", seat, origin.Arn)
	}
	checkCounts(t, st, bcA)
	checkCounts(t, st, bcB)
}
