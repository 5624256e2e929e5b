package fleet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// Resync compares the store with IVS, the source of truth, over every
// stage of this deployment: records whose stage is gone are dropped
// (freeing their seats), tagged stages without a record are adopted or
// deleted. Then every broadcast is reconciled again with a fresh reading of
// its hosts and replications from IVS: the same reconcile as any other,
// queued.
func (s *Service) Resync(ctx context.Context) error {
	listed := s.now()
	tagged, err := s.ivs.ListStages(ctx, s.ours)
	if err != nil {
		return fmt.Errorf("listing tagged stages: %w", err)
	}
	inIVS := make(map[string]IVSStage, len(tagged))
	for _, st := range tagged {
		inIVS[st.Arn] = st
	}
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, b := range bs {
		if err := s.dropGone(ctx, b, listed, inIVS, known); err != nil {
			s.log.Warn("resync", "broadcast", b.ID, "error", err)
		}
	}
	var unknown []IVSStage
	for _, st := range tagged {
		if !known[st.Arn] {
			unknown = append(unknown, st)
		}
	}
	if len(unknown) > 0 {
		// Listed again, so that a stage removed while the broadcasts were
		// looked at is not adopted back: one listing, not one read per
		// stage (after a lost store, every stage is unknown). One removed
		// between this listing and its adoption leaves a record that the
		// next resync drops.
		still, err := s.ivs.ListStages(ctx, s.ours)
		if err != nil {
			return fmt.Errorf("listing tagged stages again: %w", err)
		}
		present := map[string]bool{}
		for _, st := range still {
			present[st.Arn] = true
		}
		unknown = slices.DeleteFunc(unknown, func(st IVSStage) bool { return !present[st.Arn] })
	}
	// Origins first: a replica of a broadcast whose record was lost is
	// adopted only once its origin has rebuilt the broadcast; before, it
	// would look like an orphan.
	slices.SortStableFunc(unknown, func(a, b IVSStage) int {
		return cmp.Compare(originFirst(a), originFirst(b))
	})
	for _, st := range unknown {
		s.adopt(ctx, st)
	}
	// Broadcasts rebuilt by adoption (the store was lost) included.
	all, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return err
	}
	for _, b := range all {
		s.resyncs.Store(b.ID, struct{}{})
		s.enqueue(b.ID)
	}
	return nil
}

func originFirst(st IVSStage) int {
	if st.Tags[TagRole] == string(store.RoleOrigin) {
		return 0
	}
	return 1
}

// reconcileTurn reconciles if it is this instance's turn. With many
// instances, one reconciles at a time: the one holding the reconcile lease,
// which it keeps from one reconcile to the next (so the work stays on one
// instance) and which another takes over once it runs out.
func (s *Service) reconcileTurn(ctx context.Context) error {
	// Held past the holder's next tick, so that it renews in time; short
	// enough that another instance takes over within two intervals. Kept
	// renewed while a reconcile runs (a long one, under throttling, must
	// not overlap another instance's), and not released after it, so that
	// the work stays on this instance.
	ttl := s.cfg.ReconcileInterval + s.cfg.ReconcileInterval/2
	lease, err := s.store.AcquireLease(ctx, reconcileScope, reconcileLease, s.instance, ttl)
	switch {
	case errors.Is(err, store.ErrLeaseHeld):
		return nil
	case err != nil:
		return fmt.Errorf("taking the reconcile lease: %w", err)
	}
	// Kept from one reconcile to the next, the lease is renewed with its
	// token; a new token is a new grant.
	if s.reconcileToken.Swap(lease.Token) != lease.Token {
		s.metrics.LeaseAcquired(reconcileLease)
	}
	held, stop := s.keep(ctx, lease, ttl)
	defer stop()
	return s.Resync(held)
}

// ReconcileBroadcast is the controller's reconcile of one broadcast:
// it reads the broadcast (and, when a resync asked for it, the broadcast's
// hosts and replications from IVS, without holding the broadcast: a slow or
// failing read is retried by the queue), then, holding the broadcast for
// one pass, repairs the records from what IVS showed, makes at most a
// budget of IVS calls toward the desired fleet, and derives seating. It
// answers when to look again.
func (s *Service) ReconcileBroadcast(ctx context.Context, broadcastID string) (time.Duration, error) {
	// Reported first, so that the audience this instance sees counts
	// whichever instance makes the pass.
	s.reportDemand(ctx, broadcastID, s.local(broadcastID))
	var fresh *ivsView
	if _, resync := s.resyncs.LoadAndDelete(broadcastID); resync {
		v, err := s.readIVS(ctx, broadcastID)
		if err != nil {
			s.resyncs.Store(broadcastID, struct{}{})
			return 0, err
		}
		fresh = v
	}
	held, unlock, ok, err := s.tryLock(ctx, broadcastID, "reconcile")
	if err != nil || !ok {
		if fresh != nil {
			s.resyncs.Store(broadcastID, struct{}{})
		}
		// Held by this instance's own event or manual change, or by another
		// instance's pass: soon again.
		return busyRetry, err
	}
	in, next, end, err := s.pass(held, broadcastID, fresh)
	unlock()
	if err != nil {
		return 0, err
	}
	if !in.empty() {
		out := s.act(ctx, in)
		held, unlock, err := s.lock(ctx, broadcastID, "reconcile: record")
		if err != nil {
			return 0, err
		}
		err = s.recordActs(held, in, out)
		unlock()
		if err != nil {
			return 0, err
		}
		if len(out.stages) > 0 {
			// New stages get their replications on the next pass: now.
			next = time.Millisecond
		}
	}
	if end.due() {
		if _, err := s.endFound(ctx, broadcastID, end); err != nil && !errors.Is(err, ErrNotFound) {
			return 0, fmt.Errorf("ending broadcast: %w", err)
		}
		return 0, nil
	}
	return next, nil
}

// replicaReadBack is how soon replications started by a reconcile with a
// fresh IVS reading are read back: IVS makes a replica active within about
// a second.
const replicaReadBack = time.Second

// busyRetry is how soon a broadcast held by someone else is tried again.
const busyRetry = 50 * time.Millisecond

// ivsView is what IVS showed of one broadcast: its origin's participants
// and its hosts' active replications, as of seen.
type ivsView struct {
	broadcast store.Broadcast
	seen      time.Time
	present   map[string]IVSParticipant
	active    map[replKey]bool
	// originLost: IVS no longer has the origin.
	originLost bool
}

// readIVS reads a broadcast's hosts and replications from IVS.
func (s *Service) readIVS(ctx context.Context, broadcastID string) (*ivsView, error) {
	b, err := s.store.GetBroadcast(ctx, broadcastID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// What IVS shows is true as of before the calls: an event newer than
	// that still wins.
	v := &ivsView{broadcast: b, seen: s.now()}
	v.present, err = s.originParticipants(ctx, b)
	if errors.Is(err, ErrIVSNotFound) {
		v.originLost = true
		return v, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading hosts of %s from IVS: %w", broadcastID, err)
	}
	if v.active, err = s.activeReplicas(ctx, b); err != nil {
		return nil, fmt.Errorf("reading replications of %s from IVS: %w", broadcastID, err)
	}
	return v, nil
}

// pass is the deciding part of one reconcile of a broadcast, under its
// lock: repairs from a fresh IVS reading if there is one, then a
// controller step (which derives seating at its end and answers what to
// do outside the lock), then the idle check; or, for a broadcast whose
// end was cut short, nothing but the answer that the end is due.
func (s *Service) pass(ctx context.Context, broadcastID string, fresh *ivsView) (in intent, next time.Duration, end endDue, err error) {
	if fresh != nil {
		cur, err := s.store.GetBroadcast(ctx, broadcastID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return intent{}, 0, endDue{}, nil
		case err != nil:
			return intent{}, 0, endDue{}, err
		case !cur.EndingSince.IsZero():
			// An end was cut short: a repair could make a new origin.
			return intent{}, 0, endDue{ending: cur.EndingSince}, nil
		case cur.OriginArn != fresh.broadcast.OriginArn:
			// Replaced meanwhile: what IVS showed is of another origin.
		case fresh.originLost:
			if err := s.replaceOrigin(ctx, cur); err != nil {
				return intent{}, 0, endDue{}, fmt.Errorf("replacing the lost origin %s: %w", cur.OriginArn, err)
			}
		default:
			if err := s.applyHosts(ctx, cur, fresh.present, fresh.seen); err != nil {
				return intent{}, 0, endDue{}, fmt.Errorf("repairing hosts: %w", err)
			}
			if err := s.pruneHosts(ctx, cur, fresh.present); err != nil {
				return intent{}, 0, endDue{}, fmt.Errorf("pruning hosts: %w", err)
			}
			if err := s.applyReplicas(ctx, cur, fresh.active, fresh.seen); err != nil {
				return intent{}, 0, endDue{}, fmt.Errorf("repairing replications: %w", err)
			}
		}
	}
	in, res, err := s.step(ctx, broadcastID)
	if err != nil || !res.ending.IsZero() {
		return intent{}, 0, endDue{ending: res.ending}, err
	}
	next = res.next
	if fresh != nil && len(in.starts) > 0 {
		// What IVS showed is out of date now: read the replications back
		// once they have had time to start.
		s.resyncs.Store(broadcastID, struct{}{})
		next = replicaReadBack
	}
	if fresh != nil {
		// Read again: the broadcast's IdleSince is kept in its record.
		if cur, err := s.store.GetBroadcast(ctx, broadcastID); err == nil {
			if end.idle, err = s.checkIdle(ctx, cur); err != nil {
				return intent{}, 0, endDue{}, err
			}
		}
	}
	return in, next, end, nil
}

// dropGone drops the records of the broadcast's stages that IVS no longer
// has, freeing their seats, and notes every recorded stage in known.
func (s *Service) dropGone(ctx context.Context, b store.Broadcast, listed time.Time, inIVS map[string]IVSStage, known map[string]bool) error {
	ctx, unlock, err := s.lock(ctx, b.ID, "reconcile: gone stages")
	if err != nil {
		return err
	}
	defer unlock()
	stages, err := s.store.ListStages(ctx, b.ID)
	if err != nil {
		return fmt.Errorf("listing stage records: %w", err)
	}
	for _, st := range stages {
		known[st.Arn] = true
		// A configured origin (MASTER_STAGE_ARN) carries no tags of ours;
		// a stage recorded after the listing began (CreatedAt is set once
		// CreateStage has returned) may be missing from it.
		if _, ok := inIVS[st.Arn]; ok || st.Arn == s.cfg.OriginArn || st.CreatedAt.After(listed) {
			continue
		}
		freed, err := s.store.DeleteStage(ctx, st.Arn)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("dropping the record of %s: %w", st.Arn, err)
		}
		s.seatsEnded(freed, EndStageRemoved)
		s.log.Warn("stage gone from IVS; record dropped", "broadcast", b.ID, "stage", st.Arn, "role", st.Role, "seats_freed", len(freed))
	}
	return nil
}

// originParticipants returns the non-replica participants of the origin's
// active session, by id.
func (s *Service) originParticipants(ctx context.Context, b store.Broadcast) (map[string]IVSParticipant, error) {
	origin, err := s.ivs.GetStage(ctx, b.OriginArn)
	if err != nil {
		return nil, err
	}
	present := map[string]IVSParticipant{}
	if origin.ActiveSessionID == "" {
		return present, nil
	}
	ps, err := s.ivs.ListPublishers(ctx, b.OriginArn, origin.ActiveSessionID)
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		if !p.Replica {
			present[p.ID] = p
		}
	}
	return present, nil
}

// applyHosts marks a host connected and published in the origin as
// publishing, one disconnected or absent as not, and records a publishing
// participant it has no record of: lost Published and Unpublished events,
// and a lost store, are repaired here.
func (s *Service) applyHosts(ctx context.Context, b store.Broadcast, present map[string]IVSParticipant, seen time.Time) error {
	hosts, err := s.store.ListHosts(ctx, b.ID)
	if err != nil {
		return err
	}
	recorded := map[string]bool{}
	for _, h := range hosts {
		recorded[h.ParticipantID] = true
	}
	for _, p := range present {
		// A host publishing without a record (the store was lost, or its
		// Published event too): as with the event, publishing makes a
		// host.
		if recorded[p.ID] || !p.Connected || !p.Published {
			continue
		}
		h := store.Host{BroadcastID: b.ID, ParticipantID: p.ID, UserID: p.UserID, StageArn: b.OriginArn, JoinedAt: seen, Publishing: true, EventTime: seen}
		if err := s.store.PutHost(ctx, h); err != nil {
			return err
		}
		s.log.Info("host restored from IVS", "broadcast", b.ID, "participant", p.ID, "user", p.UserID)
		s.metrics.Repaired(RepairHostRestored)
	}
	for _, h := range hosts {
		p, ok := present[h.ParticipantID]
		// IVS's published means "ever published in this session", not
		// "publishing now": it can show a host gone (disconnected) or one
		// that never published, but not one that stopped. So it makes a
		// host publishing only when no event has said otherwise (a lost
		// Published event), never undoing an Unpublished one.
		publishing := ok && p.Connected && p.Published && (h.Publishing || h.EventTime.IsZero())
		// An event applied since the listing began is newer than what it
		// shows, unless its time is ahead of this clock: IVS's view as
		// read now wins over a time that has not happened yet.
		newer := h.EventTime.After(seen) && !h.EventTime.After(s.now())
		if publishing == h.Publishing || newer {
			continue
		}
		h.Publishing = publishing
		h.EventTime = seen
		if err := s.store.PutHost(ctx, h); err != nil {
			return err
		}
		s.log.Info("host state repaired from IVS", "broadcast", b.ID, "participant", h.ParticipantID, "publishing", publishing)
		s.metrics.Repaired(RepairHost)
	}
	return nil
}

// activeReplicas reads from IVS which replications of the broadcast's hosts
// are active.
func (s *Service) activeReplicas(ctx context.Context, b store.Broadcast) (map[replKey]bool, error) {
	hosts, err := s.store.ListHosts(ctx, b.ID)
	if err != nil {
		return nil, err
	}
	active := map[replKey]bool{}
	for _, h := range hosts {
		replicas, err := s.ivs.ListReplicas(ctx, b.OriginArn, h.ParticipantID)
		if err != nil {
			return nil, err
		}
		for _, r := range replicas {
			if r.Active {
				active[replKey{h.ParticipantID, r.DestArn}] = true
			}
		}
	}
	return active, nil
}

// applyReplicas sets each replication record to what IVS shows, and the
// stages' seating with them.
func (s *Service) applyReplicas(ctx context.Context, b store.Broadcast, active map[replKey]bool, seen time.Time) error {
	reps, err := s.store.ListReplications(ctx, b.ID)
	if err != nil {
		return err
	}
	stages, err := s.store.ListStages(ctx, b.ID)
	if err != nil {
		return err
	}
	// An active replication without a record (the store was lost) is
	// recorded as IVS shows it.
	recorded := map[replKey]bool{}
	for _, r := range reps {
		recorded[replKey{r.ParticipantID, r.DestArn}] = true
	}
	for _, st := range stages {
		for key := range active {
			if key.dest != st.Arn || recorded[key] || st.Role != store.RoleReplica {
				continue
			}
			r := store.Replication{BroadcastID: b.ID, ParticipantID: key.participant, SourceArn: b.OriginArn, DestArn: st.Arn, State: store.ReplActive, UpdatedAt: s.now(), EventTime: seen}
			if err := s.store.PutReplication(ctx, r); err != nil {
				return err
			}
			s.log.Info("replication restored from IVS", "broadcast", b.ID, "stage", st.Arn, "participant", key.participant)
			s.metrics.Repaired(RepairReplicationRestore)
		}
	}
	for _, r := range reps {
		want := r.State
		switch {
		case active[replKey{r.ParticipantID, r.DestArn}]:
			want = store.ReplActive
		case r.State == store.ReplActive:
			want = store.ReplStopped
		}
		// As with hosts: an event applied since the listing began is
		// newer than what it shows (a replica must not reopen to viewers
		// on a reading from before its replication stopped).
		newer := r.EventTime.After(seen) && !r.EventTime.After(s.now())
		if want == r.State || newer {
			continue
		}
		s.log.Info("replication state repaired from IVS", "broadcast", b.ID, "stage", r.DestArn, "participant", r.ParticipantID, "from", r.State, "to", want)
		r.State, r.Reason, r.UpdatedAt, r.EventTime = want, "", s.now(), seen
		if err := s.store.PutReplication(ctx, r); err != nil {
			return err
		}
		s.metrics.Repaired(RepairReplication)
	}
	return nil
}

// adopt takes back a stage tagged as stagefleet's that has no record (after
// the store was lost, or a crash between create and record): replicas and
// manual stages of a known broadcast are recorded again; an origin whose
// broadcast is unknown rebuilds the broadcast; anything else is an orphan
// and is deleted.
func (s *Service) adopt(ctx context.Context, st IVSStage) {
	b := st.Tags[TagBroadcast]
	role := store.Role(st.Tags[TagRole])
	ctx, unlock, err := s.lock(ctx, b, "reconcile: adopt")
	if err != nil {
		s.log.Warn("adopting stage", "stage", st.Arn, "error", err)
		return
	}
	defer unlock()
	// Another instance may have recorded it since the listing (it was
	// being created then).
	if _, err := s.store.GetStage(ctx, st.Arn); err == nil {
		return
	}
	rec := store.Stage{Arn: st.Arn, BroadcastID: b, Role: role, Name: st.Name, Capacity: s.cfg.StageCapacity, CreatedAt: s.now()}
	bc, err := s.store.GetBroadcast(ctx, b)
	switch {
	case err == nil && bc.OriginArn == st.Arn:
		// The broadcast's own origin lost its record: record it again,
		// never delete it.
		if err := s.store.PutStage(ctx, rec); err != nil {
			s.log.Warn("re-recording origin", "stage", st.Arn, "error", err)
			return
		}
		s.log.Info("origin stage record restored from IVS", "broadcast", b, "stage", st.Arn)
		return
	case role == store.RoleOrigin && errors.Is(err, store.ErrNotFound):
		if err := s.store.PutStage(ctx, rec); err != nil {
			s.log.Warn("adopting origin", "stage", st.Arn, "error", err)
			return
		}
		if _, err := s.store.CreateBroadcast(ctx, store.Broadcast{ID: b, OriginArn: st.Arn, CreatedAt: s.now()}); err != nil {
			s.log.Warn("rebuilding broadcast", "broadcast", b, "error", err)
			return
		}
		s.log.Info("origin stage adopted from IVS", "broadcast", b, "stage", st.Arn)
		s.metrics.Repaired(RepairStageAdopted)
		return
	case err == nil && (role == store.RoleReplica || role == store.RoleManual):
		if err := s.store.PutStage(ctx, rec); err != nil {
			s.log.Warn("adopting stage", "stage", st.Arn, "error", err)
			return
		}
		s.log.Info("stage adopted from IVS", "broadcast", b, "stage", st.Arn, "role", role)
		s.metrics.Repaired(RepairStageAdopted)
		return
	case err != nil && !errors.Is(err, store.ErrNotFound):
		s.log.Warn("reading broadcast for adoption", "broadcast", b, "error", err)
		return
	}
	if err := s.ivs.DeleteStage(ctx, st.Arn); err != nil && !errors.Is(err, ErrIVSNotFound) {
		s.log.Warn("deleting orphan stage", "stage", st.Arn, "error", err)
		return
	}
	s.log.Warn("orphan stage deleted", "broadcast", b, "stage", st.Arn, "role", role)
	s.metrics.Repaired(RepairOrphanDeleted)
}
