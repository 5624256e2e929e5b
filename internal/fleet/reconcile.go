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

// Reconcile compares the store with IVS, the source of truth, and repairs
// the store: records whose stage is gone are dropped (freeing their seats),
// tagged stages without a record are adopted or deleted, hosts are marked
// publishing or gone from the origin's participants, a controller pass acts
// on that, and replication states are read back from IVS.
func (s *Service) Reconcile(ctx context.Context) error {
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
		if err := s.reconcileBroadcast(ctx, b, listed, inIVS, known); err != nil {
			s.log.Warn("reconcile", "broadcast", b.ID, "error", err)
		}
	}
	reconciled := map[string]bool{}
	for _, b := range bs {
		reconciled[b.ID] = true
	}
	var unknown []IVSStage
	for _, st := range tagged {
		if !known[st.Arn] {
			unknown = append(unknown, st)
		}
	}
	if len(unknown) > 0 {
		// Listed again, so that a stage removed while the broadcasts were
		// reconciled is not adopted back: one listing, not one read per
		// stage (after a lost store, every stage is unknown). One removed
		// between this listing and its adoption leaves a record that the
		// next reconcile drops.
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
		s.kicks.kick(st.Tags[TagBroadcast])
	}
	// Broadcasts rebuilt by adoption (the store was lost) are repaired now,
	// not one interval later: their hosts, replications and seating.
	rebuilt, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return err
	}
	for _, b := range rebuilt {
		if reconciled[b.ID] {
			continue
		}
		if err := s.reconcileBroadcast(ctx, b, listed, inIVS, known); err != nil {
			s.log.Warn("reconcile", "broadcast", b.ID, "error", err)
		}
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
	held, stop := s.keep(ctx, lease, ttl)
	defer stop()
	return s.Reconcile(held)
}

// reconcileBroadcast repairs one broadcast. IVS is read without the
// broadcast's lock (a read may be slow under throttling or retries, and the
// controller and the event handler must not wait for it); what it shows is
// applied under the lock.
func (s *Service) reconcileBroadcast(ctx context.Context, b store.Broadcast, listed time.Time, inIVS map[string]IVSStage, known map[string]bool) error {
	if err := s.dropGone(ctx, b, listed, inIVS, known); err != nil {
		return err
	}
	// What IVS shows is true as of before the calls: an event newer than
	// that still wins.
	seen := s.now()
	present, err := s.originParticipants(ctx, b)
	if errors.Is(err, ErrIVSNotFound) {
		return s.replaceLostOrigin(ctx, b)
	}
	if err != nil {
		return fmt.Errorf("reading hosts back from IVS: %w", err)
	}
	held, unlock, err := s.lock(ctx, b.ID, "reconcile: hosts")
	if err != nil {
		return err
	}
	err = s.applyHosts(held, b, present, seen)
	if err == nil {
		err = s.pruneHosts(held, b, present)
	}
	if err == nil {
		// Act on what was repaired (a host found publishing gets its
		// replications started) before reading replications back, so
		// that one reconcile converges where IVS is quick to answer.
		err = s.step(held, b.ID)
	}
	unlock()
	if err != nil {
		return fmt.Errorf("repairing hosts: %w", err)
	}
	active, err := s.activeReplicas(ctx, b)
	if err != nil {
		return fmt.Errorf("reading replications back from IVS: %w", err)
	}
	held, unlock, err = s.lock(ctx, b.ID, "reconcile: replications")
	if err != nil {
		return err
	}
	err = s.applyReplicas(held, b, active)
	var ended bool
	if err == nil {
		// Read again: the broadcast's IdleSince is kept in its record.
		if cur, gerr := s.store.GetBroadcast(held, b.ID); gerr == nil {
			ended, err = s.checkIdle(held, cur)
		}
	}
	unlock()
	if err != nil {
		return fmt.Errorf("repairing replications: %w", err)
	}
	if ended {
		if _, err := s.EndBroadcast(ctx, b.ID, "idle for BROADCAST_IDLE_TIMEOUT"); err != nil {
			return fmt.Errorf("ending idle broadcast: %w", err)
		}
	}
	return nil
}

// replaceLostOrigin replaces the origin of a broadcast that IVS no longer
// has, under the broadcast's lock, if it is still the one found missing.
func (s *Service) replaceLostOrigin(ctx context.Context, b store.Broadcast) error {
	held, unlock, err := s.lock(ctx, b.ID, "reconcile: lost origin")
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := s.store.GetBroadcast(held, b.ID)
	if err != nil || cur.OriginArn != b.OriginArn {
		return err
	}
	if err := s.replaceOrigin(held, cur); err != nil {
		return fmt.Errorf("replacing the lost origin %s: %w", b.OriginArn, err)
	}
	s.kicks.kick(b.ID)
	return nil
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
	ps, err := s.ivs.ListParticipants(ctx, b.OriginArn, origin.ActiveSessionID)
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
	}
	for _, h := range hosts {
		p, ok := present[h.ParticipantID]
		publishing := ok && p.Connected && p.Published
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
	}
	return s.applySeating(ctx, b.ID)
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
func (s *Service) applyReplicas(ctx context.Context, b store.Broadcast, active map[replKey]bool) error {
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
			r := store.Replication{BroadcastID: b.ID, ParticipantID: key.participant, SourceArn: b.OriginArn, DestArn: st.Arn, State: store.ReplActive, UpdatedAt: s.now()}
			if err := s.store.PutReplication(ctx, r); err != nil {
				return err
			}
			s.log.Info("replication restored from IVS", "broadcast", b.ID, "stage", st.Arn, "participant", key.participant)
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
		if want == r.State {
			continue
		}
		s.log.Info("replication state repaired from IVS", "broadcast", b.ID, "stage", r.DestArn, "participant", r.ParticipantID, "from", r.State, "to", want)
		r.State, r.Reason, r.UpdatedAt = want, "", s.now()
		if err := s.store.PutReplication(ctx, r); err != nil {
			return err
		}
	}
	return s.applySeating(ctx, b.ID)
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
		return
	case err == nil && (role == store.RoleReplica || role == store.RoleManual):
		if err := s.store.PutStage(ctx, rec); err != nil {
			s.log.Warn("adopting stage", "stage", st.Arn, "error", err)
			return
		}
		s.log.Info("stage adopted from IVS", "broadcast", b, "stage", st.Arn, "role", role)
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
}
