package metrics

import (
	"context"
	"errors"
	"reflect"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stagefleet/stagefleet/internal/store"
)

// Store is a store.Store that counts its calls by method. It forwards
// every call as is.
type Store struct {
	next    store.Store
	methods map[string]storeCounters
}

type storeCounters struct{ calls, errors prometheus.Counter }

var _ store.Store = (*Store)(nil)

// answers are the store's errors that answer a question (no such record,
// no free seat, lease held...), not failures of the store.
var answers = []error{
	store.ErrNotFound, store.ErrNotLive, store.ErrFull, store.ErrNotEligible,
	store.ErrExists, store.ErrLeaseHeld, store.ErrFenced, store.ErrNotOwner,
}

// WrapStore returns next counted by m.
func (m *Metrics) WrapStore(next store.Store) *Store {
	s := &Store{next: next, methods: map[string]storeCounters{}}
	// Every method's series exists from the start, at 0, so that a rate
	// over a method not called yet is 0 rather than missing.
	t := reflect.TypeFor[store.Store]()
	for i := range t.NumMethod() {
		name := t.Method(i).Name
		s.methods[name] = storeCounters{m.storeCalls.WithLabelValues(name), m.storeErrors.WithLabelValues(name)}
	}
	return s
}

func (s *Store) count(method string, err error) {
	c := s.methods[method]
	c.calls.Inc()
	if err != nil && !isAnswer(err) {
		c.errors.Inc()
	}
}

func isAnswer(err error) bool {
	for _, a := range answers {
		if errors.Is(err, a) {
			return true
		}
	}
	return false
}

func (s *Store) CreateBroadcast(ctx context.Context, b store.Broadcast) (store.Broadcast, error) {
	out, err := s.next.CreateBroadcast(ctx, b)
	s.count("CreateBroadcast", err)
	return out, err
}

func (s *Store) GetBroadcast(ctx context.Context, id string) (store.Broadcast, error) {
	out, err := s.next.GetBroadcast(ctx, id)
	s.count("GetBroadcast", err)
	return out, err
}

func (s *Store) ListBroadcasts(ctx context.Context) ([]store.Broadcast, error) {
	out, err := s.next.ListBroadcasts(ctx)
	s.count("ListBroadcasts", err)
	return out, err
}

func (s *Store) PutBroadcast(ctx context.Context, b store.Broadcast) error {
	err := s.next.PutBroadcast(ctx, b)
	s.count("PutBroadcast", err)
	return err
}

func (s *Store) DeleteBroadcast(ctx context.Context, id string) ([]store.Seat, error) {
	out, err := s.next.DeleteBroadcast(ctx, id)
	s.count("DeleteBroadcast", err)
	return out, err
}

func (s *Store) PutStage(ctx context.Context, st store.Stage) error {
	err := s.next.PutStage(ctx, st)
	s.count("PutStage", err)
	return err
}

func (s *Store) GetStage(ctx context.Context, arn string) (store.Stage, error) {
	out, err := s.next.GetStage(ctx, arn)
	s.count("GetStage", err)
	return out, err
}

func (s *Store) ListStages(ctx context.Context, broadcastID string) ([]store.Stage, error) {
	out, err := s.next.ListStages(ctx, broadcastID)
	s.count("ListStages", err)
	return out, err
}

func (s *Store) SetSeatable(ctx context.Context, arn string, seatable bool) error {
	err := s.next.SetSeatable(ctx, arn, seatable)
	s.count("SetSeatable", err)
	return err
}

func (s *Store) DeleteStage(ctx context.Context, arn string) ([]store.Seat, error) {
	out, err := s.next.DeleteStage(ctx, arn)
	s.count("DeleteStage", err)
	return out, err
}

func (s *Store) PutHost(ctx context.Context, h store.Host) error {
	err := s.next.PutHost(ctx, h)
	s.count("PutHost", err)
	return err
}

func (s *Store) GetHost(ctx context.Context, broadcastID, participantID string) (store.Host, error) {
	out, err := s.next.GetHost(ctx, broadcastID, participantID)
	s.count("GetHost", err)
	return out, err
}

func (s *Store) ListHosts(ctx context.Context, broadcastID string) ([]store.Host, error) {
	out, err := s.next.ListHosts(ctx, broadcastID)
	s.count("ListHosts", err)
	return out, err
}

func (s *Store) DeleteHost(ctx context.Context, broadcastID, participantID string) error {
	err := s.next.DeleteHost(ctx, broadcastID, participantID)
	s.count("DeleteHost", err)
	return err
}

func (s *Store) PutReplication(ctx context.Context, r store.Replication) error {
	err := s.next.PutReplication(ctx, r)
	s.count("PutReplication", err)
	return err
}

func (s *Store) GetReplication(ctx context.Context, broadcastID, participantID, destArn string) (store.Replication, error) {
	out, err := s.next.GetReplication(ctx, broadcastID, participantID, destArn)
	s.count("GetReplication", err)
	return out, err
}

func (s *Store) ListReplications(ctx context.Context, broadcastID string) ([]store.Replication, error) {
	out, err := s.next.ListReplications(ctx, broadcastID)
	s.count("ListReplications", err)
	return out, err
}

func (s *Store) DeleteReplication(ctx context.Context, broadcastID, participantID, destArn string) error {
	err := s.next.DeleteReplication(ctx, broadcastID, participantID, destArn)
	s.count("DeleteReplication", err)
	return err
}

func (s *Store) ReserveSeat(ctx context.Context, req store.SeatRequest) (store.Seat, error) {
	out, err := s.next.ReserveSeat(ctx, req)
	s.count("ReserveSeat", err)
	return out, err
}

func (s *Store) RenewSeat(ctx context.Context, broadcastID, userID string, owner store.SeatOwner, now time.Time, ttl time.Duration) (store.Seat, error) {
	out, err := s.next.RenewSeat(ctx, broadcastID, userID, owner, now, ttl)
	s.count("RenewSeat", err)
	return out, err
}

func (s *Store) ReleaseSeat(ctx context.Context, broadcastID, userID string) (store.Seat, error) {
	out, err := s.next.ReleaseSeat(ctx, broadcastID, userID)
	s.count("ReleaseSeat", err)
	return out, err
}

func (s *Store) ExpireSeats(ctx context.Context, broadcastID string, now time.Time) ([]store.Seat, error) {
	out, err := s.next.ExpireSeats(ctx, broadcastID, now)
	s.count("ExpireSeats", err)
	return out, err
}

func (s *Store) ListSeats(ctx context.Context, broadcastID string) ([]store.Seat, error) {
	out, err := s.next.ListSeats(ctx, broadcastID)
	s.count("ListSeats", err)
	return out, err
}

func (s *Store) GetSeat(ctx context.Context, broadcastID, userID string) (store.Seat, error) {
	out, err := s.next.GetSeat(ctx, broadcastID, userID)
	s.count("GetSeat", err)
	return out, err
}

func (s *Store) DropSeats(ctx context.Context, broadcastID string, n int) ([]store.Seat, error) {
	out, err := s.next.DropSeats(ctx, broadcastID, n)
	s.count("DropSeats", err)
	return out, err
}

func (s *Store) SeatTotals(ctx context.Context, broadcastID string) (store.SeatTotals, error) {
	out, err := s.next.SeatTotals(ctx, broadcastID)
	s.count("SeatTotals", err)
	return out, err
}

func (s *Store) ScanSeats(ctx context.Context, broadcastID, cursor string, count int) ([]store.Seat, string, error) {
	out, next, err := s.next.ScanSeats(ctx, broadcastID, cursor, count)
	s.count("ScanSeats", err)
	return out, next, err
}

func (s *Store) AcquireLease(ctx context.Context, broadcastID, name, holder string, ttl time.Duration) (store.Lease, error) {
	out, err := s.next.AcquireLease(ctx, broadcastID, name, holder, ttl)
	s.count("AcquireLease", err)
	return out, err
}

func (s *Store) ReleaseLease(ctx context.Context, l store.Lease) (bool, error) {
	out, err := s.next.ReleaseLease(ctx, l)
	s.count("ReleaseLease", err)
	return out, err
}

func (s *Store) PutDemand(ctx context.Context, broadcastID string, d store.Demand) error {
	err := s.next.PutDemand(ctx, broadcastID, d)
	s.count("PutDemand", err)
	return err
}

func (s *Store) ListDemand(ctx context.Context, broadcastID string, since time.Time) ([]store.Demand, error) {
	out, err := s.next.ListDemand(ctx, broadcastID, since)
	s.count("ListDemand", err)
	return out, err
}

func (s *Store) FirstSeen(ctx context.Context, eventID string, ttl time.Duration) (bool, error) {
	out, err := s.next.FirstSeen(ctx, eventID, ttl)
	s.count("FirstSeen", err)
	return out, err
}

func (s *Store) ForgetEvent(ctx context.Context, eventID string) error {
	err := s.next.ForgetEvent(ctx, eventID)
	s.count("ForgetEvent", err)
	return err
}

func (s *Store) Ping(ctx context.Context) error {
	err := s.next.Ping(ctx)
	s.count("Ping", err)
	return err
}

// Close closes the store counted, and is counted like every method.
func (s *Store) Close() error {
	err := s.next.Close()
	s.count("Close", err)
	return err
}
