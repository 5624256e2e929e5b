// Package memory is the in-memory Store: one stagefleet instance, state lost
// on restart (IVS keeps the stages; the reconcile loop adopts them again).
package memory

import (
	"cmp"
	"container/heap"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

type replKey struct{ broadcast, participant, dest string }

type hostKey struct{ broadcast, participant string }

type seatKey struct{ broadcast, user string }

type leaseKey struct{ broadcast, name string }

// Store keeps everything in maps under one mutex: every method is one atomic
// step, as the Redis store's scripts are.
type Store struct {
	mu           sync.Mutex
	broadcasts   map[string]store.Broadcast
	stages       map[string]store.Stage
	hosts        map[hostKey]store.Host
	replications map[replKey]store.Replication
	seats        map[seatKey]store.Seat
	events       eventLog
	leases       map[leaseKey]store.Lease
	wanted       map[leaseKey]bool
	demand       map[string]map[string]store.Demand // broadcast -> instance
	// tokens is the last fencing token granted per broadcast.
	tokens map[string]int64
	now    func() time.Time
}

var _ store.Store = (*Store)(nil)

// Option changes how New makes a store.
type Option func(*Store)

// WithEventLimit makes the store remember at most n event ids at once
// instead of store.EventLogLimit, so that tests can reach the limit. It
// panics unless 0 < n <= store.EventLogLimit.
func WithEventLimit(n int) Option {
	if n <= 0 || n > store.EventLogLimit {
		panic(fmt.Sprintf("memory.WithEventLimit(%d): want 1 to %d", n, store.EventLogLimit))
	}
	return func(s *Store) { s.events.limit = n }
}

// New returns an empty store.
func New(opts ...Option) *Store {
	s := &Store{
		broadcasts:   map[string]store.Broadcast{},
		stages:       map[string]store.Stage{},
		hosts:        map[hostKey]store.Host{},
		replications: map[replKey]store.Replication{},
		seats:        map[seatKey]store.Seat{},
		events:       eventLog{limit: store.EventLogLimit, byID: map[string]*event{}},
		leases:       map[leaseKey]store.Lease{},
		wanted:       map[leaseKey]bool{},
		demand:       map[string]map[string]store.Demand{},
		tokens:       map[string]int64{},
		now:          time.Now,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func (s *Store) CreateBroadcast(ctx context.Context, b store.Broadcast) (store.Broadcast, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, b.ID); err != nil {
		return store.Broadcast{}, err
	}
	if old, ok := s.broadcasts[b.ID]; ok {
		return old, store.ErrExists
	}
	s.broadcasts[b.ID] = b
	return b, nil
}

func (s *Store) GetBroadcast(_ context.Context, id string) (store.Broadcast, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.broadcasts[id]
	if !ok {
		return store.Broadcast{}, fmt.Errorf("broadcast %s: %w", id, store.ErrNotFound)
	}
	return b, nil
}

func (s *Store) ListBroadcasts(context.Context) ([]store.Broadcast, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.broadcasts, func(store.Broadcast) bool { return true }, func(a, b store.Broadcast) int {
		return cmp.Compare(a.ID, b.ID)
	}), nil
}

func (s *Store) PutBroadcast(ctx context.Context, b store.Broadcast) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.broadcasts[b.ID]; !ok {
		return fmt.Errorf("broadcast %s: %w", b.ID, store.ErrNotFound)
	}
	if err := s.fenced(ctx, b.ID); err != nil {
		return err
	}
	s.broadcasts[b.ID] = b
	return nil
}

func (s *Store) DeleteBroadcast(ctx context.Context, id string) ([]store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.broadcasts[id]; !ok {
		return nil, fmt.Errorf("broadcast %s: %w", id, store.ErrNotFound)
	}
	if err := s.fenced(ctx, id); err != nil {
		return nil, err
	}
	delete(s.broadcasts, id)
	maps.DeleteFunc(s.stages, func(_ string, st store.Stage) bool { return st.BroadcastID == id })
	maps.DeleteFunc(s.hosts, func(k hostKey, _ store.Host) bool { return k.broadcast == id })
	maps.DeleteFunc(s.replications, func(k replKey, _ store.Replication) bool { return k.broadcast == id })
	var freed []store.Seat
	for k, seat := range s.seats {
		if k.broadcast == id {
			delete(s.seats, k)
			freed = append(freed, seat)
		}
	}
	delete(s.demand, id)
	// The leases and the last token granted stay: a lease runs out on its
	// own, and a broadcast made again with this id must never grant a
	// token that an earlier holder may still write with.
	return freed, nil
}

func (s *Store) DropSeats(ctx context.Context, broadcastID string, n int) ([]store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, broadcastID); err != nil {
		return nil, err
	}
	if n < 1 {
		return nil, nil
	}
	var freed []store.Seat
	for k, seat := range s.seats {
		if len(freed) == n {
			break
		}
		if k.broadcast == broadcastID {
			s.freeLocked(k, seat)
			freed = append(freed, seat)
		}
	}
	return freed, nil
}

func (s *Store) PutStage(ctx context.Context, st store.Stage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, st.BroadcastID); err != nil {
		return err
	}
	if old, ok := s.stages[st.Arn]; ok {
		st.Seats = old.Seats
	} else {
		st.Seats = 0
	}
	s.stages[st.Arn] = st
	return nil
}

func (s *Store) GetStage(_ context.Context, arn string) (store.Stage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.stages[arn]
	if !ok {
		return store.Stage{}, fmt.Errorf("stage %s: %w", arn, store.ErrNotFound)
	}
	return st, nil
}

func (s *Store) ListStages(_ context.Context, broadcastID string) ([]store.Stage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.stages, func(st store.Stage) bool {
		return st.BroadcastID == broadcastID
	}, func(a, b store.Stage) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.Arn, b.Arn))
	}), nil
}

func (s *Store) SetSeatable(ctx context.Context, arn string, seatable bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.stages[arn]
	if !ok {
		return fmt.Errorf("stage %s: %w", arn, store.ErrNotFound)
	}
	if err := s.fenced(ctx, st.BroadcastID); err != nil {
		return err
	}
	st.Seatable = seatable
	s.stages[arn] = st
	return nil
}

func (s *Store) DeleteStage(ctx context.Context, arn string) ([]store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.stages[arn]
	if !ok {
		return nil, fmt.Errorf("stage %s: %w", arn, store.ErrNotFound)
	}
	if err := s.fenced(ctx, st.BroadcastID); err != nil {
		return nil, err
	}
	delete(s.stages, arn)
	var freed []store.Seat
	for k, seat := range s.seats {
		if seat.StageArn == arn {
			delete(s.seats, k)
			freed = append(freed, seat)
		}
	}
	return freed, nil
}

func (s *Store) PutHost(ctx context.Context, h store.Host) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, h.BroadcastID); err != nil {
		return err
	}
	s.hosts[hostKey{h.BroadcastID, h.ParticipantID}] = h
	return nil
}

func (s *Store) GetHost(_ context.Context, broadcastID, participantID string) (store.Host, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.hosts[hostKey{broadcastID, participantID}]
	if !ok {
		return store.Host{}, fmt.Errorf("host %s: %w", participantID, store.ErrNotFound)
	}
	return h, nil
}

func (s *Store) ListHosts(_ context.Context, broadcastID string) ([]store.Host, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.hosts, func(h store.Host) bool { return h.BroadcastID == broadcastID }, func(a, b store.Host) int {
		return cmp.Or(a.JoinedAt.Compare(b.JoinedAt), cmp.Compare(a.ParticipantID, b.ParticipantID))
	}), nil
}

func (s *Store) DeleteHost(ctx context.Context, broadcastID, participantID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, broadcastID); err != nil {
		return err
	}
	k := hostKey{broadcastID, participantID}
	if _, ok := s.hosts[k]; !ok {
		return fmt.Errorf("host %s: %w", participantID, store.ErrNotFound)
	}
	delete(s.hosts, k)
	return nil
}

func (s *Store) PutReplication(ctx context.Context, r store.Replication) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, r.BroadcastID); err != nil {
		return err
	}
	s.replications[replKey{r.BroadcastID, r.ParticipantID, r.DestArn}] = r
	return nil
}

func (s *Store) GetReplication(_ context.Context, broadcastID, participantID, destArn string) (store.Replication, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.replications[replKey{broadcastID, participantID, destArn}]
	if !ok {
		return store.Replication{}, fmt.Errorf("replication of %s into %s: %w", participantID, destArn, store.ErrNotFound)
	}
	return r, nil
}

func (s *Store) ListReplications(_ context.Context, broadcastID string) ([]store.Replication, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.replications, func(r store.Replication) bool { return r.BroadcastID == broadcastID }, func(a, b store.Replication) int {
		return cmp.Or(cmp.Compare(a.DestArn, b.DestArn), cmp.Compare(a.ParticipantID, b.ParticipantID))
	}), nil
}

func (s *Store) DeleteReplication(ctx context.Context, broadcastID, participantID, destArn string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(ctx, broadcastID); err != nil {
		return err
	}
	k := replKey{broadcastID, participantID, destArn}
	if _, ok := s.replications[k]; !ok {
		return fmt.Errorf("replication of %s into %s: %w", participantID, destArn, store.ErrNotFound)
	}
	delete(s.replications, k)
	return nil
}

func (s *Store) ReserveSeat(_ context.Context, req store.SeatRequest) (store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := seatKey{req.BroadcastID, req.UserID}
	var replaced *store.Seat
	if seat, ok := s.seats[k]; ok {
		if st, ok := s.stages[seat.StageArn]; ok && st.Seatable {
			seat.ExpiresAt = req.Now.Add(req.TTL)
			s.seats[k] = seat
			seat.StageSeats = st.Seats
			return seat, nil
		}
		// Its stage no longer serves the show: seat the viewer again,
		// freeing this one once there is another to take.
		replaced = &seat
	}
	var best *store.Stage
	anySeatable := false
	for _, st := range s.stages {
		if st.BroadcastID != req.BroadcastID || !st.Seatable {
			continue
		}
		anySeatable = true
		if req.StageArn != "" && st.Arn != req.StageArn {
			continue
		}
		if st.Seats >= st.Capacity {
			continue
		}
		if best == nil || store.Fuller(st, *best) {
			best = &st
		}
	}
	if best == nil {
		return store.Seat{}, s.noSeat(req, anySeatable)
	}
	if replaced != nil {
		s.freeLocked(k, *replaced)
	}
	best.Seats++
	s.stages[best.Arn] = *best
	seat := store.Seat{
		BroadcastID:   req.BroadcastID,
		UserID:        req.UserID,
		StageArn:      best.Arn,
		ParticipantID: req.ParticipantID,
		TakenAt:       req.Now,
		ExpiresAt:     req.Now.Add(req.TTL),
	}
	s.seats[k] = seat
	seat.StageSeats, seat.Replaced = best.Seats, replaced
	return seat, nil
}

// noSeat says why ReserveSeat found no seat.
func (s *Store) noSeat(req store.SeatRequest, anySeatable bool) error {
	if req.StageArn != "" {
		st, ok := s.stages[req.StageArn]
		switch {
		case !ok || st.BroadcastID != req.BroadcastID:
			return fmt.Errorf("stage %s: %w", req.StageArn, store.ErrNotFound)
		case !st.Seatable:
			return fmt.Errorf("stage %s: %w", req.StageArn, store.ErrNotEligible)
		}
		return fmt.Errorf("stage %s: %w", req.StageArn, store.ErrFull)
	}
	if !anySeatable {
		return fmt.Errorf("broadcast %s: %w", req.BroadcastID, store.ErrNotLive)
	}
	return fmt.Errorf("broadcast %s: %w", req.BroadcastID, store.ErrFull)
}

func (s *Store) RenewSeat(_ context.Context, broadcastID, userID string, owner store.SeatOwner, now time.Time, ttl time.Duration) (store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := seatKey{broadcastID, userID}
	seat, ok := s.seats[k]
	if !ok {
		return store.Seat{}, fmt.Errorf("seat of %s: %w", userID, store.ErrNotFound)
	}
	if (owner.ParticipantID != "" && owner.ParticipantID != seat.ParticipantID) ||
		(owner.StageArn != "" && owner.StageArn != seat.StageArn) {
		return store.Seat{}, fmt.Errorf("seat of %s: %w", userID, store.ErrNotOwner)
	}
	seat.ExpiresAt = now.Add(ttl)
	s.seats[k] = seat
	return seat, nil
}

func (s *Store) ReleaseSeat(_ context.Context, broadcastID, userID string) (store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := seatKey{broadcastID, userID}
	seat, ok := s.seats[k]
	if !ok {
		return store.Seat{}, fmt.Errorf("seat of %s: %w", userID, store.ErrNotFound)
	}
	s.freeLocked(k, seat)
	return seat, nil
}

func (s *Store) freeLocked(k seatKey, seat store.Seat) {
	delete(s.seats, k)
	if st, ok := s.stages[seat.StageArn]; ok && st.Seats > 0 {
		st.Seats--
		s.stages[seat.StageArn] = st
	}
}

func (s *Store) ExpireSeats(_ context.Context, broadcastID string, now time.Time) ([]store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var freed []store.Seat
	for k, seat := range s.seats {
		if len(freed) == store.ExpireBatch {
			break
		}
		if k.broadcast == broadcastID && !seat.ExpiresAt.After(now) {
			s.freeLocked(k, seat)
			freed = append(freed, seat)
		}
	}
	return freed, nil
}

func (s *Store) GetSeat(_ context.Context, broadcastID, userID string) (store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seat, ok := s.seats[seatKey{broadcastID, userID}]
	if !ok {
		return store.Seat{}, fmt.Errorf("seat of %s: %w", userID, store.ErrNotFound)
	}
	return seat, nil
}

func (s *Store) ScanSeats(_ context.Context, broadcastID, cursor string, count int) ([]store.Seat, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// By user id after the cursor: one process's map, so sorting the
	// broadcast's user ids is what a page costs here.
	var users []string
	for k := range s.seats {
		if k.broadcast == broadcastID && k.user > cursor {
			users = append(users, k.user)
		}
	}
	slices.Sort(users)
	next := ""
	if count < 1 {
		count = 1
	}
	if len(users) > count {
		users, next = users[:count], users[count-1]
	}
	out := make([]store.Seat, len(users))
	for i, u := range users {
		out[i] = s.seats[seatKey{broadcastID, u}]
	}
	return out, next, nil
}

func (s *Store) SeatTotals(_ context.Context, broadcastID string) (store.SeatTotals, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t store.SeatTotals
	for k, seat := range s.seats {
		if k.broadcast == broadcastID {
			t.Seats++
			t.TakenAtSum += seat.TakenAt.Unix()
		}
	}
	return t, nil
}

func (s *Store) ListSeats(_ context.Context, broadcastID string) ([]store.Seat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.seats, func(seat store.Seat) bool { return seat.BroadcastID == broadcastID }, func(a, b store.Seat) int {
		return cmp.Or(a.TakenAt.Compare(b.TakenAt), cmp.Compare(a.UserID, b.UserID))
	}), nil
}

func (s *Store) FirstSeen(_ context.Context, eventID string, ttl time.Duration) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.events.first(eventID, s.now(), ttl), nil
}

func (s *Store) ForgetEvent(_ context.Context, eventID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events.forget(eventID)
	return nil
}

// eventLog remembers event ids until they expire, at most limit of them:
// a heap by expiry puts the ids to forget first, expired or not, on top.
type eventLog struct {
	limit int
	byID  map[string]*event
	heap  eventHeap
}

type event struct {
	id        string
	expiresAt time.Time
	index     int // in the heap, kept by eventHeap
}

// first records id until now+ttl unless it is remembered, and reports
// whether it was new. A new id is recorded even when it is the closest to
// expiry; past the limit it is then the one forgotten.
func (l *eventLog) first(id string, now time.Time, ttl time.Duration) bool {
	for len(l.heap) > 0 && !l.heap[0].expiresAt.After(now) {
		delete(l.byID, heap.Pop(&l.heap).(*event).id)
	}
	if _, ok := l.byID[id]; ok {
		return false
	}
	e := &event{id: id, expiresAt: now.Add(ttl)}
	heap.Push(&l.heap, e)
	l.byID[id] = e
	if len(l.heap) > l.limit {
		delete(l.byID, heap.Pop(&l.heap).(*event).id)
	}
	return true
}

func (l *eventLog) forget(id string) {
	if e, ok := l.byID[id]; ok {
		heap.Remove(&l.heap, e.index)
		delete(l.byID, id)
	}
}

// eventHeap is a container/heap of events, the earliest expiry first.
type eventHeap []*event

func (h eventHeap) Len() int           { return len(h) }
func (h eventHeap) Less(i, j int) bool { return h[i].expiresAt.Before(h[j].expiresAt) }

func (h eventHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *eventHeap) Push(x any) {
	e := x.(*event)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

func (s *Store) AcquireLease(_ context.Context, broadcastID, name, holder string, ttl time.Duration) (store.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	k := leaseKey{broadcastID, name}
	l, ok := s.leases[k]
	switch {
	case ok && l.ExpiresAt.After(now) && l.Holder != holder:
		s.wanted[k] = true
		return l, fmt.Errorf("lease %s of broadcast %s: %w", name, broadcastID, store.ErrLeaseHeld)
	case !ok || !l.ExpiresAt.After(now):
		s.tokens[broadcastID]++
		l = store.Lease{BroadcastID: broadcastID, Name: name, Holder: holder, Token: s.tokens[broadcastID]}
		delete(s.wanted, k)
	}
	l.ExpiresAt = now.Add(ttl)
	s.leases[k] = l
	return l, nil
}

func (s *Store) ReleaseLease(_ context.Context, l store.Lease) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := leaseKey{l.BroadcastID, l.Name}
	cur, ok := s.leases[k]
	if !ok || cur.Holder != l.Holder || cur.Token != l.Token {
		return false, nil
	}
	wanted := s.wanted[k]
	delete(s.leases, k)
	delete(s.wanted, k)
	return wanted, nil
}

func (s *Store) PutDemand(_ context.Context, broadcastID string, d store.Demand) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.demand[broadcastID] == nil {
		s.demand[broadcastID] = map[string]store.Demand{}
	}
	s.demand[broadcastID][d.Instance] = d
	return nil
}

func (s *Store) ListDemand(_ context.Context, broadcastID string, since time.Time) ([]store.Demand, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, d := range s.demand[broadcastID] {
		if d.At.Before(since) {
			delete(s.demand[broadcastID], id)
		}
	}
	return sorted(s.demand[broadcastID], func(store.Demand) bool { return true }, func(a, b store.Demand) int {
		return cmp.Compare(a.Instance, b.Instance)
	}), nil
}

// fenced refuses a write to broadcastID when ctx's fence is no longer the
// live lease.
func (s *Store) fenced(ctx context.Context, broadcastID string) error {
	f, ok := store.FenceFor(ctx, broadcastID)
	if !ok {
		return nil
	}
	cur, held := s.leases[leaseKey{f.BroadcastID, f.Name}]
	if !held || !cur.ExpiresAt.After(s.now()) || cur.Holder != f.Holder || cur.Token != f.Token {
		return fmt.Errorf("lease %s of broadcast %s (token %d): %w", f.Name, broadcastID, f.Token, store.ErrFenced)
	}
	return nil
}

func (s *Store) Ping(context.Context) error { return nil }

// sorted returns the values of m that keep accepts, in the order cmp gives:
// every list of the Store interface has a defined order.
func sorted[K comparable, V any](m map[K]V, keep func(V) bool, cmp func(a, b V) int) []V {
	var out []V
	for _, v := range m {
		if keep(v) {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, cmp)
	return out
}

func (s *Store) Close() error { return nil }
