package redis

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/store"
)

// Seat groups split one broadcast's seats over several Redis slots, so that
// a broadcast is not bound by what one Redis core does (docs/scale.md).
//
// A broadcast made with n groups (WithSeatGroups when it was created; 1
// before groups existed) keeps each stage in one group: its record, count,
// seats and their expiry under the group's hash tag, {id} for group 0 (the
// broadcast's own tag, so that one group is the layout from before groups)
// and {id#g...} for the others ('#' is in no broadcast id; newLayout).
// Capacity is exact within a group as it is within a broadcast: one script
// decides a seat. A new stage goes to the group with the fewest stages;
// the stage index names its group ("id#g").
//
// A viewer's home group is its user id's hash modulo n. A join looks for a
// seat at home first (store.Fuller's order within the group) and, when the
// home group is full, where this instance last found room, then in the
// next groups in turn. A seat taken in another group is claimed at home
// (the group's away hash: user → the seat's group and start time), so
// that a later join, renewal, leave or read finds it, and so that two
// joins of one viewer at once keep one seat: the first claim wins and the
// other join gives its seat back. A renewal that names its stage (every
// heartbeat does) goes straight to the stage's group.
//
// Fenced writes to a group on another slot than the broadcast's lease
// cannot check the lease in the same step: such a write checks the lease
// first, and the group keeps the highest token each lease has written or
// been granted with (floorCheck), so that a write of a lost grant is
// refused once the next grant exists.

// MaxSeatGroups bounds WithSeatGroups: a listing or a sweep of a broadcast
// reads every group.
const MaxSeatGroups = 64

// WithSeatGroups makes the broadcasts this store creates split their seats
// over n groups, each on a Redis slot of its own. It panics unless
// 1 <= n <= MaxSeatGroups.
func WithSeatGroups(n int) Option {
	if n < 1 || n > MaxSeatGroups {
		panic(fmt.Sprintf("redis.WithSeatGroups(%d): want 1 to %d", n, MaxSeatGroups))
	}
	return func(s *Store) { s.groups = n }
}

// layout is where a broadcast's seat groups are: each group's key tag.
type layout struct{ tags []string }

// n is the number of groups.
func (l *layout) n() int { return len(l.tags) }

// group names the keys of seat group g.
func (l *layout) group(g int) keys { return keys{tag: l.tags[g]} }

// clusterSlots is the number of Redis Cluster hash slots.
const clusterSlots = 16384

// crcTable is CRC16 (XMODEM, Redis Cluster's) a byte at a time.
var crcTable = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

// crc16 carries on crc over s, so that a tag's shared start is read once.
func crc16(crc uint16, s string) uint16 {
	for i := range len(s) {
		crc = crc<<8 ^ crcTable[byte(crc>>8)^s[i]]
	}
	return crc
}

// newLayout names the n seat groups of broadcastID: group 0 under the
// broadcast's own tag, {id}, so that one group is the layout from before
// groups; group g under {id#g}, or {id#g.k} with the first k that puts it
// in a part of the slot space no other group holds. The slot space is cut
// into n equal parts, one group in each: on a Cluster whose masters hold
// equal runs of slots (as redis-cli --cluster create makes them), n a
// multiple of the masters puts as many groups on each. The names are
// computed, not stored: this is a data format, which no version may
// change while broadcasts made with groups live.
func (s *Store) newLayout(broadcastID string, n int) *layout {
	l := &layout{tags: make([]string, n)}
	l.tags[0] = s.prefix + ":{" + broadcastID + "}:"
	part := func(crc uint16) int { return int(crc) % clusterSlots * n / clusterSlots }
	taken := make([]bool, n)
	taken[part(crc16(0, broadcastID))] = true
	free := 0
	for g := 1; g < n; g++ {
		for taken[free] {
			free++
		}
		taken[free] = true
		tag := broadcastID + "#" + strconv.Itoa(g)
		if crc := crc16(0, tag); part(crc) != free {
			// A few times n tries find the part; the bound only makes the
			// loop's end plain (the plain tag is as good, only less even).
			dotted := crc16(crc, ".")
			for k := 1; k < 1000*n; k++ {
				if suffix := strconv.Itoa(k); part(crc16(dotted, suffix)) == free {
					tag += "." + suffix
					break
				}
			}
		}
		l.tags[g] = s.prefix + ":{" + tag + "}:"
	}
	return l
}

// homeGroup is the group where userID's join looks first.
func homeGroup(userID string, groups int) int {
	h := fnv.New32a()
	h.Write([]byte(userID))
	return int(h.Sum32() % uint32(groups))
}

// cacheLimit bounds each of a store's caches: past it, the cache starts
// again empty (entries of ended broadcasts and deleted stages pile up).
const cacheLimit = 100_000

// cache is a map safe for concurrent use, bounded by cacheLimit.
type cache[V any] struct {
	mu sync.Mutex
	m  map[string]V
}

func (c *cache[V]) get(k string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *cache[V]) put(k string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= cacheLimit {
		c.m = map[string]V{}
	}
	c.m[k] = v
}

func (c *cache[V]) drop(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}

// layoutOf answers the seat groups of broadcastID: as many as it was
// created with (kept, as it never changes), 1 for a broadcast created
// before seat groups, and this store's own setting for one that does not
// exist. A broadcast id used again after its end is read with the first
// one's count until this instance restarts, unless it ended here: keep
// one REDIS_SEAT_GROUPS across a deployment.
func (s *Store) layoutOf(ctx context.Context, broadcastID string) (*layout, error) {
	l, _, err := s.storedLayout(ctx, broadcastID)
	return l, err
}

// storedLayout is layoutOf, and whether the broadcast exists (only then is
// its layout kept: one that does not exist may yet be created).
func (s *Store) storedLayout(ctx context.Context, broadcastID string) (*layout, bool, error) {
	if l, ok := s.layouts.get(broadcastID); ok {
		return l, true, nil
	}
	k := s.bc(broadcastID)
	var count *goredis.StringCmd
	var exists *goredis.IntCmd
	if _, err := s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		count = p.Get(ctx, k.seatGroups())
		exists = p.Exists(ctx, k.broadcast())
		return nil
	}); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, false, err
	}
	n, err := count.Int()
	switch {
	case err == nil && n >= 1 && n <= MaxSeatGroups:
	case errors.Is(err, goredis.Nil) && exists.Val() > 0:
		n = 1
	case errors.Is(err, goredis.Nil):
		return s.newLayout(broadcastID, s.groups), false, nil
	default:
		return nil, false, fmt.Errorf("seat groups of broadcast %s: %q: want 1 to %d", broadcastID, count.Val(), MaxSeatGroups)
	}
	l := s.newLayout(broadcastID, n)
	s.layouts.put(broadcastID, l)
	return l, true, nil
}

// stageRef is where a stage's records are: its broadcast and seat group.
type stageRef struct {
	broadcastID string
	group       int
}

// indexValue is how the stage index names a stage's broadcast and group.
func (r stageRef) indexValue() string {
	if r.group == 0 {
		return r.broadcastID
	}
	return r.broadcastID + "#" + strconv.Itoa(r.group)
}

func parseStageRef(v string) stageRef {
	b, g, ok := strings.Cut(v, "#")
	if !ok {
		return stageRef{broadcastID: v}
	}
	n, err := strconv.Atoi(g)
	if err != nil || n < 0 || n >= MaxSeatGroups {
		// No store writes this: read it as group 0, whose scripts answer
		// that the stage is not there.
		return stageRef{broadcastID: b}
	}
	return stageRef{broadcastID: b, group: n}
}

// lookupStage reads a stage's broadcast and group from the stage index.
func (s *Store) lookupStage(ctx context.Context, arn string) (stageRef, error) {
	v, err := s.rdb.HGet(ctx, s.stageIndexKey(), arn).Result()
	if errors.Is(err, goredis.Nil) {
		return stageRef{}, fmt.Errorf("stage %s: %w", arn, store.ErrNotFound)
	}
	if err != nil {
		return stageRef{}, err
	}
	ref := parseStageRef(v)
	s.stageRefs.put(arn, ref)
	return ref, nil
}

// stageAt finds a stage's broadcast and group, and the broadcast's seat
// groups.
func (s *Store) stageAt(ctx context.Context, arn string) (stageRef, *layout, error) {
	ref, err := s.lookupStage(ctx, arn)
	if err != nil {
		return ref, nil, err
	}
	lay, err := s.layoutOf(ctx, ref.broadcastID)
	if err != nil {
		return ref, nil, err
	}
	if ref.group >= lay.n() {
		// No store writes this: an index entry from a broadcast of the
		// same id made with more groups.
		return ref, nil, fmt.Errorf("stage %s: %w", arn, store.ErrNotFound)
	}
	return ref, lay, nil
}

// knownStage is lookupStage answered from memory when it can be: for
// renewals, which then take one round trip. A stage deleted and made again
// in another group is read stale; the caller checks its answer.
func (s *Store) knownStage(ctx context.Context, arn string) (stageRef, error) {
	if ref, ok := s.stageRefs.get(arn); ok {
		return ref, nil
	}
	return s.lookupStage(ctx, arn)
}

// placeStage answers the group of a stage being put, and its broadcast's
// groups: its own group if the index has it, else the group with the
// fewest stages, lowest first.
func (s *Store) placeStage(ctx context.Context, st store.Stage) (stageRef, *layout, error) {
	ref, lay, err := s.stageAt(ctx, st.Arn)
	if err == nil && ref.broadcastID == st.BroadcastID {
		return ref, lay, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return stageRef{}, nil, err
	}
	lay, err = s.layoutOf(ctx, st.BroadcastID)
	if err != nil {
		return stageRef{}, nil, err
	}
	ref = stageRef{broadcastID: st.BroadcastID}
	if n := lay.n(); n > 1 {
		// A record whose index entry is missing (a put racing a delete
		// drops it) keeps its group, so that no stage is in two groups.
		lens := make([]*goredis.IntCmd, n)
		has := make([]*goredis.BoolCmd, n)
		if _, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for g := range n {
				lens[g] = p.HLen(ctx, lay.group(g).stages())
				has[g] = p.HExists(ctx, lay.group(g).stages(), st.Arn)
			}
			return nil
		}); err != nil {
			return stageRef{}, nil, err
		}
		for g := range n {
			if lens[g].Val() < lens[ref.group].Val() {
				ref.group = g
			}
		}
		for g := range n {
			if has[g].Val() {
				ref.group = g
				break
			}
		}
	}
	// Two puts of one new stage at once must agree on its group.
	set, err := s.rdb.HSetNX(ctx, s.stageIndexKey(), st.Arn, ref.indexValue()).Result()
	if err != nil {
		return stageRef{}, nil, err
	}
	if set {
		s.stageRefs.put(st.Arn, ref)
		return ref, lay, nil
	}
	if got, _, err := s.stageAt(ctx, st.Arn); err == nil && got.broadcastID == st.BroadcastID {
		return got, lay, nil
	}
	// An index entry of another broadcast's stage of this ARN (or of a
	// group this broadcast has not), left behind: the stage is this
	// broadcast's now.
	if err := s.rdb.HSet(ctx, s.stageIndexKey(), st.Arn, ref.indexValue()).Err(); err != nil {
		return stageRef{}, nil, err
	}
	s.stageRefs.put(st.Arn, ref)
	return ref, lay, nil
}

// runFenced runs a fenced script over seat group g of broadcastID, fenced
// as ctx says: with the lease on group 0, with the group's floors on
// another after checking the lease.
func (s *Store) runFenced(ctx context.Context, sc fencedSeatScript, broadcastID string, lay *layout, g int, args ...any) (string, []any, error) {
	if g != 0 {
		if err := s.leaseStillHeld(ctx, broadcastID); err != nil {
			return "", nil, err
		}
	}
	return s.runChecked(ctx, sc, broadcastID, lay, g, args...)
}

// runChecked is runFenced for a caller that has checked the lease once
// for every group it runs in (the floors refuse a newer grant's writes
// in each group all the same).
func (s *Store) runChecked(ctx context.Context, sc fencedSeatScript, broadcastID string, lay *layout, g int, args ...any) (string, []any, error) {
	k := lay.group(g)
	lease, fence := s.fence(ctx, broadcastID)
	name := "control"
	if f, ok := store.FenceFor(ctx, broadcastID); ok {
		name = f.Name
	}
	args = append(append(fence, args...), name)
	if g == 0 {
		return s.run(ctx, sc.lease, append([]string{lease}, k.seatKeys()...), args...)
	}
	return s.run(ctx, sc.floor, append([]string{k.floors()}, k.seatKeys()...), args...)
}

// leaseStillHeld checks ctx's fence for broadcastID, if it has one, against
// the lease as Redis has it now.
func (s *Store) leaseStillHeld(ctx context.Context, broadcastID string) error {
	f, ok := store.FenceFor(ctx, broadcastID)
	if !ok {
		return nil
	}
	cur, err := s.rdb.HMGet(ctx, s.bc(broadcastID).lease(f.Name), "holder", "token").Result()
	if err != nil {
		return err
	}
	if cur[0] != f.Holder || cur[1] != strconv.FormatInt(f.Token, 10) {
		return fmt.Errorf("lease %s of broadcast %s: %w", f.Name, broadcastID, store.ErrFenced)
	}
	return nil
}

// raiseFloors tells every seat group on another slot than the lease of a
// new grant of it. A lease of no broadcast (a scope such as the
// reconciler's) has no groups to tell.
func (s *Store) raiseFloors(ctx context.Context, l store.Lease) error {
	lay, exists, err := s.storedLayout(ctx, l.BroadcastID)
	if err != nil || !exists {
		return err
	}
	for g := 1; g < lay.n(); g++ {
		if _, _, err := s.run(ctx, raiseFloor, []string{lay.group(g).floors()}, l.Name, l.Token); err != nil {
			return err
		}
	}
	return nil
}

// forgetAway takes the seats just freed in group g out of their viewers'
// home groups' away hashes. It is best effort: a claim left behind names a
// seat that is gone, which every reader takes as none and the viewer's
// next join clears, while the freed seats must reach the caller (their
// sessions close) whatever happens here.
func (s *Store) forgetAway(ctx context.Context, lay *layout, g int, seats []store.Seat) {
	n := lay.n()
	if n == 1 {
		return
	}
	byHome := map[int][]seatCall{}
	for _, seat := range seats {
		if h := homeGroup(seat.UserID, n); h != g {
			byHome[h] = append(byHome[h], unclaimCall(seat.UserID, claimValue(g, seat)))
		}
	}
	for h, calls := range byHome {
		for chunk := range slices.Chunk(calls, maxBatch) {
			s.seatCalls(ctx, lay.group(h), chunk)
		}
	}
}

// freeOverGroups frees up to limit seats over the broadcast's groups, from
// group first on, with free: one script call on group g freeing at most
// most seats.
func (s *Store) freeOverGroups(ctx context.Context, lay *layout, first, limit int, free func(g, most int) ([]store.Seat, error)) ([]store.Seat, error) {
	out := []store.Seat{}
	for i := 0; i < lay.n() && len(out) < limit; i++ {
		g := (first + i) % lay.n()
		seats, err := free(g, limit-len(out))
		if err != nil {
			return out, err
		}
		out = append(out, seats...)
	}
	return out, nil
}

// claim is how a home group's away hash names a seat kept in another
// group: the group and the seat's TakenAt (Unix ns), so that forgetting a
// freed seat never forgets a newer seat of the same viewer in that group.
type claim struct {
	group int
	value string
}

// claimValue is the away hash's value for seat, kept in group g.
func claimValue(g int, seat store.Seat) string {
	return strconv.Itoa(g) + " " + strconv.FormatInt(seat.TakenAt.UnixNano(), 10)
}

// parseClaim reads a claim a script answered.
func parseClaim(v string, n int) (claim, error) {
	group, _, _ := strings.Cut(v, " ")
	g, err := strconv.Atoi(group)
	if err != nil || g < 0 || g >= n {
		return claim{}, fmt.Errorf("seat group %q from redis: want 0 to %d", v, n-1)
	}
	return claim{group: g, value: v}, nil
}

func reserveCall(req store.SeatRequest, want, mode string) seatCall {
	exp := req.Now.Add(req.TTL)
	return seatCall{name: "reserve", args: []any{req.UserID, want, req.ParticipantID, rfc3339(req.Now), rfc3339(exp),
		exp.UnixMicro(), req.BroadcastID, req.Now.Unix(), mode}}
}

func renewCall(userID string, owner store.SeatOwner, now time.Time, ttl time.Duration, mode string) seatCall {
	exp := now.Add(ttl)
	return seatCall{name: "renew", args: []any{userID, owner.ParticipantID, owner.StageArn, rfc3339(exp), exp.UnixMicro(), mode}}
}

func releaseCall(userID, mode, stageArn string) seatCall {
	return seatCall{name: "release", args: []any{userID, mode, stageArn}}
}

func unclaimCall(userID, value string) seatCall {
	return seatCall{name: "unclaim", args: []any{userID, value}}
}

// reserveGrouped is ReserveSeat over n > 1 groups (see the top of this
// file). A join that loses its seat to another join of the same viewer at
// the same time starts again; one that keeps losing gives up.
func (s *Store) reserveGrouped(ctx context.Context, req store.SeatRequest, lay *layout, what string) (store.Seat, error) {
	n := lay.n()
	h := homeGroup(req.UserID, n)
	// target is the asked-for stage's group: -1 for any stage, n for a
	// stage that is not this broadcast's (only an existing seat answers).
	target := -1
	if req.StageArn != "" {
		ref, err := s.lookupStage(ctx, req.StageArn)
		switch {
		case errors.Is(err, store.ErrNotFound) || (err == nil && (ref.broadcastID != req.BroadcastID || ref.group >= n)):
			target = n
		case err != nil:
			return store.Seat{}, err
		default:
			target = ref.group
		}
	}
	want := func(g int) string {
		switch {
		case target < 0:
			return ""
		case g == target:
			return req.StageArn
		}
		return "-"
	}
	for range 2*n + 2 {
		r := s.call(ctx, lay.group(h), reserveCall(req, want(h), "home"))
		if r.err != nil || r.status == "ok" {
			return decodeSeat(r, what)
		}
		// from is where the viewer's seat is: home (for none, too) or
		// the claim of a seat away, and stale that seat when it is away,
		// on a stage that no longer takes viewers (the claim frees one at
		// home).
		from, stale, answers := claim{group: h}, "", []string{r.status}
		if r.status == "away" {
			c, err := parseClaim(r.seat, n)
			if err != nil {
				return store.Seat{}, err
			}
			// A seat taken once the home group answered is claimed,
			// whatever becomes of the caller (claimSeat).
			rj := s.call(context.WithoutCancel(ctx), lay.group(c.group), reserveCall(req, want(c.group), "keep"))
			if rj.err != nil {
				return store.Seat{}, rj.err
			}
			if rj.status == "ok" {
				// Claimed again: the seat may have moved within its group.
				seat, again, err := s.claimSeat(ctx, req, what, lay, c.group, c, "", rj)
				if again {
					continue
				}
				return seat, err
			}
			if rj.status == "gone" {
				// The seat the home group named is gone: forget it, and
				// look again from home.
				if u := s.call(ctx, lay.group(h), unclaimCall(req.UserID, c.value)); u.err != nil {
					return store.Seat{}, u.err
				}
				continue
			}
			from, stale, answers = c, rj.replaced, []string{rj.status}
		}
		var groups []int
		for i := range n {
			if g := (h + i) % n; g != from.group && (target < 0 || g == target) {
				groups = append(groups, g)
			}
		}
		// In a storm most groups are full but the one or two where the
		// fleet's newest stages are: after home, ask first where the last
		// join of this instance away from home found room.
		if g, ok := s.roomAt.get(req.BroadcastID); ok {
			first := 0
			if len(groups) > 0 && groups[0] == h {
				first = 1
			}
			if i := slices.Index(groups, g); i > first {
				groups = slices.Insert(slices.Delete(groups, i, i+1), first, g)
			}
		}
		seat, again, err := s.seatElsewhere(ctx, req, what, lay, groups, from, stale, want, &answers)
		if !again {
			if err == nil && seat.UserID == "" {
				return store.Seat{}, groupedErr(answers, target, n, what)
			}
			return seat, err
		}
	}
	return store.Seat{}, fmt.Errorf("%s: joins of viewer %s at once kept taking seats in different groups; try again", what, req.UserID)
}

// seatElsewhere looks for a seat in groups, in order, and claims the first
// one (claimSeat). Without one it answers no seat and each group's answer
// added to answers.
func (s *Store) seatElsewhere(ctx context.Context, req store.SeatRequest, what string, lay *layout, groups []int, from claim, stale string,
	want func(int) string, answers *[]string) (store.Seat, bool, error) {
	for _, g := range groups {
		if err := ctx.Err(); err != nil {
			return store.Seat{}, false, err
		}
		// Not the caller's context from here: a seat taken is claimed
		// (or given back) whatever becomes of the caller.
		rg := s.call(context.WithoutCancel(ctx), lay.group(g), reserveCall(req, want(g), "seat"))
		if rg.err != nil {
			return store.Seat{}, false, rg.err
		}
		if rg.status == "ok" {
			s.roomAt.put(req.BroadcastID, g)
			return s.claimSeat(ctx, req, what, lay, g, from, stale, rg)
		}
		*answers = append(*answers, rg.status)
	}
	return store.Seat{}, false, nil
}

// claimSeat claims at home the seat rg that a join took in group g, the
// viewer's seat having been from (home, for none, or a claim away; stale
// is that seat if it was away and on a stage that takes no viewers: it is
// freed).
// It answers again when a join of the same viewer at the same time claimed
// another seat first: this one is given back. Once a seat is taken, the
// steps after it go on whatever becomes of the caller, so that no seat is
// left unclaimed.
func (s *Store) claimSeat(ctx context.Context, req store.SeatRequest, what string, lay *layout, g int, from claim, stale string, rg seatResult) (store.Seat, bool, error) {
	ctx = context.WithoutCancel(ctx)
	h := homeGroup(req.UserID, lay.n())
	seat, err := decodeSeat(rg, what)
	if err != nil {
		return store.Seat{}, false, err
	}
	at := claimValue(g, seat)
	if g == h {
		at = ""
	}
	c := s.call(ctx, lay.group(h), seatCall{name: "claim", args: []any{req.UserID, at, from.value}})
	if c.err != nil || c.status != "ok" {
		// Given back on its stage only; a seat a join at the same time
		// moved within the group (notowner) or freed (notfound) is that
		// join's to claim or give back.
		if r := s.call(ctx, lay.group(g), releaseCall(req.UserID, "seat", seat.StageArn)); r.err != nil {
			return store.Seat{}, false, r.err
		}
		return store.Seat{}, c.err == nil, c.err
	}
	old := c.replaced
	if stale != "" && from.group != h && from.group != g {
		var st store.Seat
		if err := decodeInto(stale, &st); err != nil {
			return store.Seat{}, false, err
		}
		// Freed on its stage only: a join at the same time that moved it
		// within its group has given that seat back, or will.
		if r := s.call(ctx, lay.group(from.group), releaseCall(req.UserID, "seat", st.StageArn)); r.err != nil {
			return store.Seat{}, false, r.err
		}
		old = stale
	}
	if old != "" {
		seat.Replaced = &store.Seat{}
		if err := decodeInto(old, seat.Replaced); err != nil {
			return store.Seat{}, false, err
		}
	}
	return seat, false, nil
}

// groupedErr is a join's error from every group's answer: for the asked-for
// stage, its group's; for any, full if a group was, else not live if
// every group was.
func groupedErr(answers []string, target, n int, what string) error {
	if target == n {
		return statusErr("notfound", what)
	}
	status := "notlive"
	for _, a := range answers {
		switch {
		case a == "elsewhere":
		case target >= 0:
			return statusErr(a, what)
		case a == "full":
			status = a
		case a != "notlive":
			return statusErr(a, what)
		}
	}
	return statusErr(status, what)
}

// renewGrouped is RenewSeat over n > 1 groups: to the named stage's group,
// else (or when the seat is not there) through the viewer's home group.
func (s *Store) renewGrouped(ctx context.Context, broadcastID, userID string, owner store.SeatOwner, now time.Time, ttl time.Duration, lay *layout, what string) (store.Seat, error) {
	n := lay.n()
	h := homeGroup(userID, n)
	if owner.StageArn != "" {
		ref, err := s.knownStage(ctx, owner.StageArn)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return store.Seat{}, err
		}
		if err == nil && ref.broadcastID == broadcastID && ref.group != h && ref.group < n {
			r := s.call(ctx, lay.group(ref.group), renewCall(userID, owner, now, ttl, "seat"))
			if r.err != nil || r.status != "notfound" {
				return decodeSeat(r, what)
			}
		}
	}
	r := s.call(ctx, lay.group(h), renewCall(userID, owner, now, ttl, "home"))
	if r.err == nil && r.status == "away" {
		c, err := parseClaim(r.seat, n)
		if err != nil {
			return store.Seat{}, err
		}
		r = s.call(ctx, lay.group(c.group), renewCall(userID, owner, now, ttl, "seat"))
	}
	return decodeSeat(r, what)
}

// releaseGrouped is ReleaseSeat over n > 1 groups.
func (s *Store) releaseGrouped(ctx context.Context, userID string, lay *layout, what string) (store.Seat, error) {
	n := lay.n()
	r := s.call(ctx, lay.group(homeGroup(userID, n)), releaseCall(userID, "home", ""))
	if r.err == nil && r.status == "away" {
		c, err := parseClaim(r.seat, n)
		if err != nil {
			return store.Seat{}, err
		}
		r = s.call(ctx, lay.group(c.group), releaseCall(userID, "seat", ""))
	}
	return decodeSeat(r, what)
}
