// Package redis is the Store shared by many stagefleet instances, kept in
// Redis (standalone or Cluster) with go-redis.
//
// Every broadcast's keys share one hash tag, {broadcast id}, so that each
// multi-key step is one Lua script on one slot: seats, fenced record writes
// and leases are atomic in Redis, never read-then-write from Go. Three keys
// are global (outside any broadcast): the set of broadcast ids, the index
// from stage ARN to broadcast, and the event ids. The set and the index are
// written in their own commands, apart from the broadcast's script: an entry
// is added before its record is written and removed after it is dropped,
// and read tolerantly (an entry whose record is gone reads as not found).
// The event ids are one sorted set, which a script of its own keeps.
package redis

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/store"
)

// DefaultPrefix starts every key, so that one Redis can hold several
// deployments (each with its own prefix) or other data.
const DefaultPrefix = "stagefleet"

// Store is the Redis store.
type Store struct {
	rdb        goredis.UniversalClient
	prefix     string
	eventLimit int
	// batches coalesces seat operations (WithSeatBatching); nil: each is
	// its own script call.
	batches *batcher
	// groups is how many seat groups a broadcast created here gets
	// (WithSeatGroups; groups.go).
	groups    int
	layouts   cache[*layout]  // broadcast id → its seat groups
	stageRefs cache[stageRef] // stage ARN → its broadcast and group
	roomAt    cache[int]      // broadcast id → the group a join last found room in away from home
	// sweepFrom turns the group an expiry sweep starts with.
	sweepFrom atomic.Uint32
}

var _ store.Store = (*Store)(nil)

// Option changes how New makes a store.
type Option func(*Store)

// WithEventLimit makes the store remember at most n event ids at once
// instead of store.EventLogLimit, so that tests can reach the limit. It
// panics unless 0 < n <= store.EventLogLimit.
func WithEventLimit(n int) Option {
	if n <= 0 || n > store.EventLogLimit {
		panic(fmt.Sprintf("redis.WithEventLimit(%d): want 1 to %d", n, store.EventLogLimit))
	}
	return func(s *Store) { s.eventLimit = n }
}

// New returns a store on rdb, which it closes on Close. An empty prefix
// means DefaultPrefix.
func New(rdb goredis.UniversalClient, prefix string, opts ...Option) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	s := &Store{rdb: rdb, prefix: prefix, eventLimit: store.EventLogLimit, groups: 1}
	for _, o := range opts {
		o(s)
	}
	return s
}

// keys names one broadcast's keys.
type keys struct{ tag string }

func (s *Store) bc(broadcastID string) keys {
	return keys{tag: s.prefix + ":{" + broadcastID + "}:"}
}

func (k keys) broadcast() string        { return k.tag + "broadcast" }
func (k keys) stages() string           { return k.tag + "stages" } // arn -> stage JSON
func (k keys) open() string             { return k.tag + "open" }   // seatable arns
func (k keys) rank() string             { return k.tag + "rank" }   // arn -> "capacity createdMicros"
func (k keys) counts() string           { return k.tag + "counts" } // arn -> seats taken
func (k keys) seats() string            { return k.tag + "seats" }  // user -> seat JSON
func (k keys) expiry() string           { return k.tag + "expiry" } // user by ExpiresAt (micros)
func (k keys) onStage() string          { return k.tag + "on:" }    // prefix: on:ARN is the stage's users (a set)
func (k keys) totals() string           { return k.tag + "totals" } // tracked seats, sum of their takenSec
func (k keys) room() string             { return k.tag + "room" }   // stages with room, Fuller's order
func (k keys) away() string             { return k.tag + "away" }   // user -> group of its seat elsewhere
func (k keys) floors() string           { return k.tag + "floors" } // lease name -> highest token (groups.go)
func (k keys) seatGroups() string       { return k.tag + "seat-groups" }
func (k keys) hosts() string            { return k.tag + "hosts" }
func (k keys) replications() string     { return k.tag + "replications" }
func (k keys) demand() string           { return k.tag + "demand" } // instance -> demand JSON
func (k keys) lease(name string) string { return k.tag + "lease:" + name }
func (k keys) leaseTokens() string      { return k.tag + "lease-tokens" }

func (s *Store) broadcastsKey() string { return s.prefix + ":broadcasts" }
func (s *Store) stageIndexKey() string { return s.prefix + ":stage-index" }
func (s *Store) eventsKey() string     { return s.prefix + ":events" } // event id by expiry (ms)

// eventMember is how an event id is kept in the events set: 16 bytes of its
// SHA-256, whatever its length (up to 256 bytes), so that a full set stays
// small. Two ids taken for one would need a 128-bit collision.
func eventMember(id string) string {
	sum := sha256.Sum256([]byte(id))
	return string(sum[:16])
}

// fence returns the lease key and script arguments of ctx's fence for
// writes to broadcastID ("" holder when there is none).
func (s *Store) fence(ctx context.Context, broadcastID string) (string, []any) {
	k := s.bc(broadcastID)
	if f, ok := store.FenceFor(ctx, broadcastID); ok {
		return k.lease(f.Name), []any{f.Holder, strconv.FormatInt(f.Token, 10)}
	}
	return k.lease("control"), []any{"", ""}
}

// run runs a script and splits its answer into status and payload.
func (s *Store) run(ctx context.Context, sc *goredis.Script, keys []string, args ...any) (string, []any, error) {
	res, err := sc.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return "", nil, err
	}
	if len(res) == 0 {
		return "", nil, errors.New("redis script answered nothing")
	}
	status, _ := res[0].(string)
	return status, res[1:], nil
}

// statusErr maps a script's status to the store's errors.
func statusErr(status, what string) error {
	switch status {
	case "ok":
		return nil
	case "fenced":
		return fmt.Errorf("%s: %w", what, store.ErrFenced)
	case "notfound":
		return fmt.Errorf("%s: %w", what, store.ErrNotFound)
	case "exists":
		return fmt.Errorf("%s: %w", what, store.ErrExists)
	case "full":
		return fmt.Errorf("%s: %w", what, store.ErrFull)
	case "notlive":
		return fmt.Errorf("%s: %w", what, store.ErrNotLive)
	case "noteligible":
		return fmt.Errorf("%s: %w", what, store.ErrNotEligible)
	case "notowner":
		return fmt.Errorf("%s: %w", what, store.ErrNotOwner)
	}
	return fmt.Errorf("%s: unexpected answer %q from redis", what, status)
}

func (s *Store) CreateBroadcast(ctx context.Context, b store.Broadcast) (store.Broadcast, error) {
	data, err := json.Marshal(b)
	if err != nil {
		return store.Broadcast{}, err
	}
	// Listed first: a broadcast listed but not recorded reads as absent.
	if err := s.rdb.SAdd(ctx, s.broadcastsKey(), b.ID).Err(); err != nil {
		return store.Broadcast{}, err
	}
	lease, fence := s.fence(ctx, b.ID)
	k := s.bc(b.ID)
	status, out, err := s.run(ctx, createBroadcast, []string{lease, k.broadcast(), k.seatGroups()}, append(fence, data, s.groups)...)
	if err != nil {
		return store.Broadcast{}, err
	}
	if status == "ok" {
		// Listed again: a DeleteBroadcast of the same id may have taken it
		// off the list after the first SADD and before the record was
		// written. DeleteBroadcast looks for the record after taking it
		// off, so one of the two puts it back.
		if err := s.rdb.SAdd(ctx, s.broadcastsKey(), b.ID).Err(); err != nil {
			return store.Broadcast{}, err
		}
	}
	if status == "exists" {
		var old store.Broadcast
		if err := decode(out, &old); err != nil {
			return store.Broadcast{}, err
		}
		return old, statusErr(status, "broadcast "+b.ID)
	}
	return b, statusErr(status, "broadcast "+b.ID)
}

func (s *Store) GetBroadcast(ctx context.Context, id string) (store.Broadcast, error) {
	var b store.Broadcast
	data, err := s.rdb.Get(ctx, s.bc(id).broadcast()).Bytes()
	if errors.Is(err, goredis.Nil) {
		return b, fmt.Errorf("broadcast %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return b, err
	}
	return b, json.Unmarshal(data, &b)
}

func (s *Store) ListBroadcasts(ctx context.Context) ([]store.Broadcast, error) {
	ids, err := s.rdb.SMembers(ctx, s.broadcastsKey()).Result()
	if err != nil {
		return nil, err
	}
	cmds := make([]*goredis.StringCmd, len(ids))
	if _, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.Get(ctx, s.bc(id).broadcast())
		}
		return nil
	}); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, err
	}
	var out []store.Broadcast
	for _, c := range cmds {
		data, err := c.Bytes()
		if errors.Is(err, goredis.Nil) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var b store.Broadcast
		if err := json.Unmarshal(data, &b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b store.Broadcast) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

func (s *Store) PutBroadcast(ctx context.Context, b store.Broadcast) error {
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	lease, fence := s.fence(ctx, b.ID)
	status, _, err := s.run(ctx, putBroadcast, []string{lease, s.bc(b.ID).broadcast()}, append(fence, data)...)
	if err != nil {
		return err
	}
	return statusErr(status, "broadcast "+b.ID)
}

// DeleteBroadcast drops the broadcast's records in one script, atomically,
// after its seat groups on other slots (groups.go), each in a script of its
// own: a failure in between leaves the broadcast, short of some stages,
// for the call to be made again. Taking the broadcast off the list of
// broadcasts and its stages out of the stage index (keys on other slots)
// is not atomic with it: it comes after the script, as in DeleteStage, so
// that from the script on the broadcast reads as gone everywhere (entries
// left behind by a failure in between read as absent). A CreateBroadcast
// of the same id racing the delete stays listed: see the SADD it makes
// after its record. A PutStage of one of the deleted stages racing the
// delete may be left out of the stage index, as with DeleteStage. The
// groups' fence floors stay, as the leases and their token counter do, so
// that a write of a lost lease is refused after the end too.
func (s *Store) DeleteBroadcast(ctx context.Context, id string) ([]store.Seat, error) {
	k := s.bc(id)
	lay, exists, err := s.storedLayout(ctx, id)
	if err != nil {
		return nil, err
	}
	var arns, seats []any
	if exists && lay.n() > 1 {
		if err := s.leaseStillHeld(ctx, id); err != nil {
			return nil, err
		}
	}
	// A broadcast that does not exist has no groups: the script below
	// answers so.
	for g := 1; exists && g < lay.n(); g++ {
		status, out, err := s.runChecked(ctx, deleteGroup, id, lay, g)
		if err := cmp.Or(err, statusErr(status, "broadcast "+id)); err != nil {
			return nil, err
		}
		if err := collectDropped(out, &arns, &seats); err != nil {
			return nil, fmt.Errorf("broadcast %s: %w", id, err)
		}
	}
	lease, fence := s.fence(ctx, id)
	status, out, err := s.run(ctx, deleteBroadcast,
		append([]string{lease, k.broadcast(), k.hosts(), k.replications(), k.demand(), k.seatGroups()}, k.seatKeys()...), fence...)
	if err != nil {
		return nil, err
	}
	if err := statusErr(status, "broadcast "+id); err != nil {
		return nil, err
	}
	if err := collectDropped(out, &arns, &seats); err != nil {
		return nil, fmt.Errorf("broadcast %s: %w", id, err)
	}
	s.layouts.drop(id)
	if len(arns) > 0 {
		fields := make([]string, 0, len(arns))
		for _, a := range arns {
			arn, _ := a.(string)
			fields = append(fields, arn)
			s.stageRefs.drop(arn)
		}
		if err := s.rdb.HDel(ctx, s.stageIndexKey(), fields...).Err(); err != nil {
			return nil, err
		}
	}
	if err := s.rdb.SRem(ctx, s.broadcastsKey(), id).Err(); err != nil {
		return nil, err
	}
	// A CreateBroadcast of the same id may have listed it (its first SADD)
	// before the SREM and written its record since: list it again.
	again, err := s.rdb.Exists(ctx, k.broadcast()).Result()
	if err != nil {
		return nil, err
	}
	if again > 0 {
		if err := s.rdb.SAdd(ctx, s.broadcastsKey(), id).Err(); err != nil {
			return nil, err
		}
	}
	return decodeAll[store.Seat](seats)
}

// collectDropped adds a dropped group's ARNs and seats (its script's
// answer) to arns and seats.
func collectDropped(out []any, arns, seats *[]any) error {
	if len(out) != 2 {
		return fmt.Errorf("unexpected answer %v from redis", out)
	}
	a, _ := out[0].([]any)
	b, _ := out[1].([]any)
	*arns = append(*arns, a...)
	*seats = append(*seats, b...)
	return nil
}

func bit(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func (s *Store) PutStage(ctx context.Context, st store.Stage) error {
	st.Seats = 0 // kept in the counts hash
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	ref, lay, err := s.placeStage(ctx, st)
	if err != nil {
		return err
	}
	rank := fmt.Sprintf("%d %d", st.Capacity, st.CreatedAt.UnixMicro())
	status, _, err := s.runFenced(ctx, putStage, st.BroadcastID, lay, ref.group, st.Arn, data, bit(st.Seatable), rank)
	if err != nil {
		return err
	}
	return statusErr(status, "stage "+st.Arn)
}

func (s *Store) GetStage(ctx context.Context, arn string) (store.Stage, error) {
	ref, lay, err := s.stageAt(ctx, arn)
	if err != nil {
		return store.Stage{}, err
	}
	k := lay.group(ref.group)
	var rec, count *goredis.StringCmd
	var open *goredis.BoolCmd
	if _, err := s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		rec = p.HGet(ctx, k.stages(), arn)
		count = p.HGet(ctx, k.counts(), arn)
		open = p.SIsMember(ctx, k.open(), arn)
		return nil
	}); err != nil && !errors.Is(err, goredis.Nil) {
		return store.Stage{}, err
	}
	data, err := rec.Bytes()
	if errors.Is(err, goredis.Nil) {
		return store.Stage{}, fmt.Errorf("stage %s: %w", arn, store.ErrNotFound)
	}
	if err != nil {
		return store.Stage{}, err
	}
	var st store.Stage
	if err := json.Unmarshal(data, &st); err != nil {
		return store.Stage{}, err
	}
	st.Seats, _ = count.Int()
	st.Seatable = open.Val()
	return st, nil
}

// ListStages reads every seat group of the broadcast, each group as one
// snapshot (a MULTI on its slot).
func (s *Store) ListStages(ctx context.Context, broadcastID string) ([]store.Stage, error) {
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return nil, err
	}
	out := []store.Stage{}
	for g := range lay.n() {
		k := lay.group(g)
		var recs, counts *goredis.MapStringStringCmd
		var open *goredis.StringSliceCmd
		if _, err := s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
			recs = p.HGetAll(ctx, k.stages())
			counts = p.HGetAll(ctx, k.counts())
			open = p.SMembers(ctx, k.open())
			return nil
		}); err != nil {
			return nil, err
		}
		seatable := map[string]bool{}
		for _, a := range open.Val() {
			seatable[a] = true
		}
		for arn, data := range recs.Val() {
			var st store.Stage
			if err := json.Unmarshal([]byte(data), &st); err != nil {
				return nil, fmt.Errorf("stage %s: %w", arn, err)
			}
			st.Seats, _ = strconv.Atoi(counts.Val()[arn])
			st.Seatable = seatable[arn]
			out = append(out, st)
		}
	}
	slices.SortFunc(out, func(a, b store.Stage) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.Arn, b.Arn))
	})
	return out, nil
}

func (s *Store) SetSeatable(ctx context.Context, arn string, seatable bool) error {
	ref, lay, err := s.stageAt(ctx, arn)
	if err != nil {
		return err
	}
	status, _, err := s.runFenced(ctx, setSeatable, ref.broadcastID, lay, ref.group, arn, bit(seatable))
	if err != nil {
		return err
	}
	return statusErr(status, "stage "+arn)
}

// DropSeats frees up to n seats over the broadcast's groups, the first
// groups first. It leaves the viewers' claims in their home groups: only
// an end drops seats, and DeleteBroadcast drops the claims with the rest.
func (s *Store) DropSeats(ctx context.Context, broadcastID string, n int) ([]store.Seat, error) {
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return nil, err
	}
	if lay.n() > 1 {
		if err := s.leaseStillHeld(ctx, broadcastID); err != nil {
			return nil, err
		}
	}
	return s.freeOverGroups(ctx, lay, 0, n, func(g, most int) ([]store.Seat, error) {
		status, freed, err := s.runChecked(ctx, dropSeats, broadcastID, lay, g, most)
		return freedSeats(status, freed, err, "seats of "+broadcastID)
	})
}

// freedSeats reads the answer of a script that frees seats.
func freedSeats(status string, out []any, err error, what string) ([]store.Seat, error) {
	if err != nil {
		return nil, err
	}
	if err := statusErr(status, what); err != nil {
		return nil, err
	}
	return decodeAll[store.Seat](out)
}

func (s *Store) DeleteStage(ctx context.Context, arn string) ([]store.Seat, error) {
	ref, lay, err := s.stageAt(ctx, arn)
	if err != nil {
		return nil, err
	}
	status, out, err := s.runFenced(ctx, deleteStage, ref.broadcastID, lay, ref.group, arn)
	seats, err := freedSeats(status, out, err, "stage "+arn)
	if err != nil {
		return nil, err
	}
	s.forgetAway(ctx, lay, ref.group, seats)
	if err := s.rdb.HDel(ctx, s.stageIndexKey(), arn).Err(); err != nil {
		return nil, err
	}
	s.stageRefs.drop(arn)
	return seats, nil
}

func (s *Store) PutHost(ctx context.Context, h store.Host) error {
	return s.hset(ctx, h.BroadcastID, s.bc(h.BroadcastID).hosts(), h.ParticipantID, h, "host "+h.ParticipantID)
}

func (s *Store) GetHost(ctx context.Context, broadcastID, participantID string) (store.Host, error) {
	return hget[store.Host](ctx, s, s.bc(broadcastID).hosts(), participantID, "host "+participantID)
}

func (s *Store) ListHosts(ctx context.Context, broadcastID string) ([]store.Host, error) {
	return hvals(ctx, s, s.bc(broadcastID).hosts(), func(a, b store.Host) int {
		return cmp.Or(a.JoinedAt.Compare(b.JoinedAt), cmp.Compare(a.ParticipantID, b.ParticipantID))
	})
}

func (s *Store) DeleteHost(ctx context.Context, broadcastID, participantID string) error {
	return s.hdel(ctx, broadcastID, s.bc(broadcastID).hosts(), participantID, "host "+participantID)
}

// replField names a replication in the broadcast's replications hash; a
// newline appears in neither participant ids nor ARNs.
func replField(participantID, destArn string) string { return participantID + "\n" + destArn }

func (s *Store) PutReplication(ctx context.Context, r store.Replication) error {
	return s.hset(ctx, r.BroadcastID, s.bc(r.BroadcastID).replications(), replField(r.ParticipantID, r.DestArn), r,
		"replication of "+r.ParticipantID+" into "+r.DestArn)
}

func (s *Store) GetReplication(ctx context.Context, broadcastID, participantID, destArn string) (store.Replication, error) {
	return hget[store.Replication](ctx, s, s.bc(broadcastID).replications(), replField(participantID, destArn),
		"replication of "+participantID+" into "+destArn)
}

func (s *Store) ListReplications(ctx context.Context, broadcastID string) ([]store.Replication, error) {
	return hvals(ctx, s, s.bc(broadcastID).replications(), func(a, b store.Replication) int {
		return cmp.Or(cmp.Compare(a.DestArn, b.DestArn), cmp.Compare(a.ParticipantID, b.ParticipantID))
	})
}

func (s *Store) DeleteReplication(ctx context.Context, broadcastID, participantID, destArn string) error {
	return s.hdel(ctx, broadcastID, s.bc(broadcastID).replications(), replField(participantID, destArn),
		"replication of "+participantID+" into "+destArn)
}

func (s *Store) hset(ctx context.Context, broadcastID, key, field string, v any, what string) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	lease, fence := s.fence(ctx, broadcastID)
	status, _, err := s.run(ctx, fencedHSet, []string{lease, key}, append(fence, field, data)...)
	if err != nil {
		return err
	}
	return statusErr(status, what)
}

func (s *Store) hdel(ctx context.Context, broadcastID, key, field, what string) error {
	lease, fence := s.fence(ctx, broadcastID)
	status, _, err := s.run(ctx, fencedHDel, []string{lease, key}, append(fence, field)...)
	if err != nil {
		return err
	}
	return statusErr(status, what)
}

func hget[T any](ctx context.Context, s *Store, key, field, what string) (T, error) {
	var v T
	data, err := s.rdb.HGet(ctx, key, field).Bytes()
	if errors.Is(err, goredis.Nil) {
		return v, fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	if err != nil {
		return v, err
	}
	return v, json.Unmarshal(data, &v)
}

func hvals[T any](ctx context.Context, s *Store, key string, order func(a, b T) int) ([]T, error) {
	vals, err := s.rdb.HVals(ctx, key).Result()
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(vals))
	for _, data := range vals {
		var v T
		if err := json.Unmarshal([]byte(data), &v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if order != nil {
		slices.SortFunc(out, order)
	}
	return out, nil
}

// decode unmarshals the first element of a script's payload.
func decode(out []any, v any) error {
	if len(out) == 0 {
		return errors.New("redis script answered no record")
	}
	data, ok := out[0].(string)
	if !ok {
		return fmt.Errorf("redis script answered %T, not a record", out[0])
	}
	return json.Unmarshal([]byte(data), v)
}

func decodeAll[T any](out []any) ([]T, error) {
	res := make([]T, 0, len(out))
	for i := range out {
		var v T
		if err := decode(out[i:], &v); err != nil {
			return nil, err
		}
		res = append(res, v)
	}
	return res, nil
}

// seat times are written as Go writes them in JSON, so that a seat made in
// Lua reads back as one made in Go.
func rfc3339(t time.Time) string { return t.Format(time.RFC3339Nano) }

// seatKeys are a seat group's keys the seat scripts use, in the order of
// seatLib's seatKeys.
func (k keys) seatKeys() []string {
	return []string{k.open(), k.counts(), k.rank(), k.seats(), k.expiry(), k.stages(), k.onStage(), k.totals(), k.room(), k.away()}
}

func (s *Store) ReserveSeat(ctx context.Context, req store.SeatRequest) (store.Seat, error) {
	what := "broadcast " + req.BroadcastID
	if req.StageArn != "" {
		what = "stage " + req.StageArn
	}
	lay, err := s.layoutOf(ctx, req.BroadcastID)
	if err != nil {
		return store.Seat{}, err
	}
	if lay.n() > 1 {
		return s.reserveGrouped(ctx, req, lay, what)
	}
	return decodeSeat(s.call(ctx, s.bc(req.BroadcastID), reserveCall(req, req.StageArn, "")), what)
}

func (s *Store) RenewSeat(ctx context.Context, broadcastID, userID string, owner store.SeatOwner, now time.Time, ttl time.Duration) (store.Seat, error) {
	what := "seat of " + userID
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return store.Seat{}, err
	}
	if lay.n() > 1 {
		return s.renewGrouped(ctx, broadcastID, userID, owner, now, ttl, lay, what)
	}
	return decodeSeat(s.call(ctx, s.bc(broadcastID), renewCall(userID, owner, now, ttl, "")), what)
}

func (s *Store) ReleaseSeat(ctx context.Context, broadcastID, userID string) (store.Seat, error) {
	what := "seat of " + userID
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return store.Seat{}, err
	}
	if lay.n() > 1 {
		return s.releaseGrouped(ctx, userID, lay, what)
	}
	return decodeSeat(s.call(ctx, s.bc(broadcastID), releaseCall(userID, "", "")), what)
}

// call runs one seat operation on a seat group: in a batch with the
// group's other operations in flight when batching is on, else as a batch
// of one.
func (s *Store) call(ctx context.Context, k keys, call seatCall) seatResult {
	if s.batches != nil {
		return s.batches.do(ctx, k, call)
	}
	return s.seatCalls(ctx, k, []seatCall{call})[0]
}

// decodeSeat reads a seat operation's answer.
func decodeSeat(res seatResult, what string) (store.Seat, error) {
	if res.err != nil {
		return store.Seat{}, res.err
	}
	if err := statusErr(res.status, what); err != nil {
		return store.Seat{}, err
	}
	var seat store.Seat
	if err := decodeInto(res.seat, &seat); err != nil {
		return store.Seat{}, err
	}
	if res.count != "" {
		n, err := strconv.Atoi(res.count)
		if err != nil {
			return store.Seat{}, fmt.Errorf("seat count %q: %w", res.count, err)
		}
		seat.StageSeats = n
	}
	if res.replaced != "" {
		seat.Replaced = &store.Seat{}
		if err := decodeInto(res.replaced, seat.Replaced); err != nil {
			return store.Seat{}, err
		}
	}
	return seat, nil
}

func decodeInto(data string, seat *store.Seat) error {
	if err := json.Unmarshal([]byte(data), seat); err != nil {
		return fmt.Errorf("decoding seat: %w", err)
	}
	return nil
}

// ExpireSeats sweeps the broadcast's groups in turn, starting with another
// group each call, so that a group with many seats to free does not hold
// back the others' sweep.
func (s *Store) ExpireSeats(ctx context.Context, broadcastID string, now time.Time) ([]store.Seat, error) {
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return nil, err
	}
	first := int(s.sweepFrom.Add(1) % uint32(lay.n()))
	return s.freeOverGroups(ctx, lay, first, store.ExpireBatch, func(g, most int) ([]store.Seat, error) {
		status, freed, err := s.run(ctx, expireSeats, lay.group(g).seatKeys(), now.UnixMicro(), most)
		seats, err := freedSeats(status, freed, err, "expiring seats of "+broadcastID)
		s.forgetAway(ctx, lay, g, seats)
		return seats, err
	})
}

func (s *Store) SeatTotals(ctx context.Context, broadcastID string) (store.SeatTotals, error) {
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return store.SeatTotals{}, err
	}
	var sum [3]int64
	for g := range lay.n() {
		k := lay.group(g)
		status, out, err := s.run(ctx, seatTotals, []string{k.counts(), k.totals()})
		if err != nil {
			return store.SeatTotals{}, err
		}
		if err := statusErr(status, "seat totals of "+broadcastID); err != nil {
			return store.SeatTotals{}, err
		}
		if len(out) != 3 {
			return store.SeatTotals{}, fmt.Errorf("seat totals of %s: unexpected answer %v from redis", broadcastID, out)
		}
		for i, v := range out {
			x, err := strconv.ParseInt(fmt.Sprint(v), 10, 64)
			if err != nil {
				return store.SeatTotals{}, fmt.Errorf("seat totals of %s: %q: %w", broadcastID, v, err)
			}
			sum[i] += x
		}
	}
	return store.SeatTotals{Seats: int(sum[0]), Untracked: int(sum[0] - sum[1]), TakenAtSum: sum[2]}, nil
}

// GetSeat reads the seat in the viewer's home group, or in the group the
// home group names.
func (s *Store) GetSeat(ctx context.Context, broadcastID, userID string) (store.Seat, error) {
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return store.Seat{}, err
	}
	n := lay.n()
	home := lay.group(homeGroup(userID, n))
	seat, err := hget[store.Seat](ctx, s, home.seats(), userID, "seat of "+userID)
	if n == 1 || !errors.Is(err, store.ErrNotFound) {
		return seat, err
	}
	away, err := s.rdb.HGet(ctx, home.away(), userID).Result()
	if errors.Is(err, goredis.Nil) {
		return store.Seat{}, fmt.Errorf("seat of %s: %w", userID, store.ErrNotFound)
	}
	if err != nil {
		return store.Seat{}, err
	}
	c, err := parseClaim(away, n)
	if err != nil {
		return store.Seat{}, err
	}
	return hget[store.Seat](ctx, s, lay.group(c.group).seats(), userID, "seat of "+userID)
}

func (s *Store) ListSeats(ctx context.Context, broadcastID string) ([]store.Seat, error) {
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return nil, err
	}
	out := []store.Seat{}
	for g := range lay.n() {
		seats, err := hvals[store.Seat](ctx, s, lay.group(g).seats(), nil)
		if err != nil {
			return nil, err
		}
		out = append(out, seats...)
	}
	slices.SortFunc(out, func(a, b store.Seat) int {
		return cmp.Or(a.TakenAt.Compare(b.TakenAt), cmp.Compare(a.UserID, b.UserID))
	})
	return out, nil
}

func (s *Store) AcquireLease(ctx context.Context, broadcastID, name, holder string, ttl time.Duration) (store.Lease, error) {
	k := s.bc(broadcastID)
	status, out, err := s.run(ctx, acquireLease, []string{k.lease(name), k.leaseTokens()}, holder, ttl.Milliseconds())
	if err != nil {
		return store.Lease{}, err
	}
	if len(out) < 3 {
		return store.Lease{}, fmt.Errorf("lease %s of broadcast %s: unexpected answer %v", name, broadcastID, out)
	}
	l := store.Lease{BroadcastID: broadcastID, Name: name}
	l.Holder, _ = out[0].(string)
	tok, _ := out[1].(string)
	if l.Token, err = strconv.ParseInt(tok, 10, 64); err != nil {
		return store.Lease{}, fmt.Errorf("lease %s of broadcast %s: token %q: %w", name, broadcastID, tok, err)
	}
	left, _ := out[2].(int64)
	l.ExpiresAt = time.Now().Add(time.Duration(left) * time.Millisecond)
	if status == "held" {
		return l, fmt.Errorf("lease %s of broadcast %s: %w", name, broadcastID, store.ErrLeaseHeld)
	}
	if err := statusErr(status, "lease "+name); err != nil {
		return l, err
	}
	if len(out) > 3 && out[3] == "1" {
		if err := s.raiseFloors(ctx, l); err != nil {
			// Not held with floors unraised: the next grant raises them.
			_, rerr := s.ReleaseLease(context.WithoutCancel(ctx), l)
			return l, errors.Join(fmt.Errorf("lease %s of broadcast %s: telling its seat groups: %w", name, broadcastID, err), rerr)
		}
	}
	return l, nil
}

func (s *Store) ReleaseLease(ctx context.Context, l store.Lease) (bool, error) {
	status, out, err := s.run(ctx, releaseLease, []string{s.bc(l.BroadcastID).lease(l.Name)}, l.Holder, strconv.FormatInt(l.Token, 10))
	if err != nil {
		return false, err
	}
	wanted := len(out) > 0 && out[0] == "1"
	return wanted, statusErr(status, "lease "+l.Name)
}

func (s *Store) PutDemand(ctx context.Context, broadcastID string, d store.Demand) error {
	data, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return s.rdb.HSet(ctx, s.bc(broadcastID).demand(), d.Instance, data).Err()
}

func (s *Store) ListDemand(ctx context.Context, broadcastID string, since time.Time) ([]store.Demand, error) {
	key := s.bc(broadcastID).demand()
	all, err := hvals(ctx, s, key, func(a, b store.Demand) int { return cmp.Compare(a.Instance, b.Instance) })
	if err != nil {
		return nil, err
	}
	out := all[:0]
	var stale []string
	for _, d := range all {
		if d.At.Before(since) {
			stale = append(stale, d.Instance)
			continue
		}
		out = append(out, d)
	}
	// Instances that stopped leave their last demand behind: drop it.
	if len(stale) > 0 {
		if err := s.rdb.HDel(ctx, key, stale...).Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *Store) FirstSeen(ctx context.Context, eventID string, ttl time.Duration) (bool, error) {
	status, _, err := s.run(ctx, firstSeen, []string{s.eventsKey()}, eventMember(eventID), ttl.Milliseconds(), s.eventLimit)
	if err != nil {
		return false, err
	}
	switch status {
	case "new":
		return true, nil
	case "seen":
		return false, nil
	}
	return false, statusErr(status, "event "+eventID)
}

func (s *Store) ForgetEvent(ctx context.Context, eventID string) error {
	return s.rdb.ZRem(ctx, s.eventsKey(), eventMember(eventID)).Err()
}

func (s *Store) Ping(ctx context.Context) error { return s.rdb.Ping(ctx).Err() }

func (s *Store) Close() error { return s.rdb.Close() }

// QuotaTurn takes the next turn of a rate that every instance sharing this
// Redis shares: tps turns a second, burst at once, named by name (an IVS
// operation in a region). It answers how long to wait for the turn.
func (s *Store) QuotaTurn(ctx context.Context, name string, tps float64, burst int) (time.Duration, error) {
	if tps <= 0 {
		return 0, nil
	}
	interval := int64(1e6 / tps)
	_, out, err := s.run(ctx, quotaTurn, []string{s.prefix + ":quota:" + name}, interval, max(1, burst))
	if err != nil {
		return 0, err
	}
	if len(out) == 0 {
		return 0, errors.New("quota script answered no wait")
	}
	us, err := strconv.ParseInt(fmt.Sprint(out[0]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("quota wait %v: %w", out[0], err)
	}
	return time.Duration(us) * time.Microsecond, nil
}
