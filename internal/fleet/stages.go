package fleet

import (
	"context"
	"errors"
	"maps"
	"strings"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// StageView is a stage as the API shows it.
type StageView struct {
	store.Stage
	ActiveSessionID string
	// Tags are the stage's tags: all of them as IVS has them for a single
	// stage read from IVS, stagefleet's own in lists (read from the store,
	// with no IVS call).
	Tags         map[string]string
	Replications []store.Replication
	// Endpoints are set for a single stage read from IVS.
	Endpoints IVSEndpoints
}

// CreateStage creates a manual stage: tagged as stagefleet's, but unmanaged
// (no viewers seated there, nothing replicated into it by the controller,
// never deleted by it).
func (s *Service) CreateStage(ctx context.Context, broadcastID, name string, tags map[string]string) (StageView, error) {
	for k := range tags {
		if strings.HasPrefix(strings.ToLower(k), "stagefleet:") {
			return StageView{}, fail(ErrInvalid, "tag %q: the stagefleet: prefix is reserved", k)
		}
	}
	all := maps.Clone(tags)
	if all == nil {
		all = map[string]string{}
	}
	maps.Copy(all, s.stageTags(broadcastID, store.RoleManual))
	if ending, err := s.ending(ctx, broadcastID); err != nil {
		return StageView{}, err
	} else if ending {
		return StageView{}, endingErr(broadcastID)
	}
	st, err := s.ivs.CreateStage(ctx, name, all)
	if err != nil {
		return StageView{}, ivsFailure(err, "creating stage %q", name)
	}
	rec := store.Stage{Arn: st.Arn, BroadcastID: broadcastID, Role: store.RoleManual, Name: st.Name, Capacity: s.cfg.StageCapacity, CreatedAt: s.now()}
	if err := s.store.PutStage(ctx, rec); err != nil {
		// Nothing half-written: without a record the stage would leak.
		if derr := s.ivs.DeleteStage(context.WithoutCancel(ctx), st.Arn); derr != nil {
			s.log.Error("deleting unrecorded stage", "stage", st.Arn, "error", derr)
		}
		return StageView{}, failWrap(ErrUnavailable, err, "recording stage")
	}
	s.log.Info("manual stage created", "broadcast", broadcastID, "stage", st.Arn, "name", name)
	return StageView{Stage: rec, ActiveSessionID: st.ActiveSessionID, Tags: st.Tags}, nil
}

// record returns stagefleet's record of a stage, or ErrNotFound.
func (s *Service) record(ctx context.Context, arn string) (store.Stage, error) {
	rec, err := s.store.GetStage(ctx, arn)
	if errors.Is(err, store.ErrNotFound) {
		return store.Stage{}, fail(ErrNotFound, "stage %s is not one of stagefleet's stages", arn)
	}
	if err != nil {
		return store.Stage{}, failWrap(ErrUnavailable, err, "reading stage %s", arn)
	}
	return rec, nil
}

// Stage returns one of stagefleet's stages, with what IVS says of it.
func (s *Service) Stage(ctx context.Context, arn string) (StageView, error) {
	rec, err := s.record(ctx, arn)
	if err != nil {
		return StageView{}, err
	}
	st, err := s.ivs.GetStage(ctx, arn)
	if err != nil {
		return StageView{}, ivsFailure(err, "reading stage %s from IVS", arn)
	}
	reps, err := s.replicationsInto(ctx, rec)
	if err != nil {
		return StageView{}, err
	}
	return StageView{Stage: rec, ActiveSessionID: st.ActiveSessionID, Tags: st.Tags, Replications: reps, Endpoints: st.Endpoints}, nil
}

// UpdateStage renames one of stagefleet's stages.
func (s *Service) UpdateStage(ctx context.Context, arn, name string) (StageView, error) {
	rec, ctx, unlock, err := s.lockedRecord(ctx, arn)
	if err != nil {
		return StageView{}, err
	}
	defer unlock()
	st, err := s.ivs.UpdateStage(ctx, arn, name)
	if err != nil {
		return StageView{}, ivsFailure(err, "renaming stage %s", arn)
	}
	rec.Name = st.Name
	if err := s.store.PutStage(ctx, rec); err != nil {
		return StageView{}, failWrap(ErrUnavailable, err, "recording stage")
	}
	return StageView{Stage: rec, ActiveSessionID: st.ActiveSessionID, Tags: st.Tags}, nil
}

// DeleteStage deletes a stage of stagefleet's, the way the controller
// removes one (drain, re-check, delete). It refuses the origin and a stage
// with seated viewers.
func (s *Service) DeleteStage(ctx context.Context, arn string) error {
	rec, ctx, unlock, err := s.lockedRecord(ctx, arn)
	if err != nil {
		return err
	}
	defer unlock()
	if rec.Role == store.RoleOrigin {
		return fail(ErrForbidden, "stage %s is the origin of broadcast %s and cannot be deleted", arn, rec.BroadcastID)
	}
	if rec.Seats > 0 {
		// The previous server's answer: a 400 naming the viewer count.
		e := fail(ErrInvalid, "stage %s has %d seated viewers; it can be deleted once it is empty", arn, rec.Seats)
		e.Details = map[string]any{"viewerCount": rec.Seats}
		return e
	}
	reps, err := s.replicationsInto(ctx, rec)
	if err != nil {
		return err
	}
	deleted, err := s.drainAndDelete(ctx, rec, reps, "deleted through the API")
	switch {
	case err != nil:
		return ivsFailure(err, "deleting stage %s", arn)
	case !deleted:
		return fail(ErrForbidden, "a viewer was seated on stage %s while it was being deleted; it is kept", arn)
	}
	return nil
}

// lockedRecord reads a stage record under its broadcast's lock, so that a
// manual change does not race the controller. The caller releases it.
func (s *Service) lockedRecord(ctx context.Context, arn string) (store.Stage, context.Context, func(), error) {
	rec, err := s.record(ctx, arn)
	if err != nil {
		return store.Stage{}, nil, nil, err
	}
	held, unlock, err := s.lock(ctx, rec.BroadcastID, "stage change")
	if err != nil {
		return store.Stage{}, nil, nil, err
	}
	if rec, err = s.record(held, arn); err != nil {
		unlock()
		return store.Stage{}, nil, nil, err
	}
	return rec, held, unlock, nil
}

func (s *Service) replicationsInto(ctx context.Context, st store.Stage) ([]store.Replication, error) {
	all, err := s.store.ListReplications(ctx, st.BroadcastID)
	if err != nil {
		return nil, failWrap(ErrUnavailable, err, "listing replications")
	}
	var out []store.Replication
	for _, r := range all {
		if r.DestArn == st.Arn || r.SourceArn == st.Arn {
			out = append(out, r)
		}
	}
	return out, nil
}

// Stages lists a broadcast's stages with their seats and replications.
func (s *Service) Stages(ctx context.Context, broadcastID string) ([]StageView, error) {
	recs, err := s.store.ListStages(ctx, broadcastID)
	if err != nil {
		return nil, failWrap(ErrUnavailable, err, "listing stages")
	}
	reps, err := s.store.ListReplications(ctx, broadcastID)
	if err != nil {
		return nil, failWrap(ErrUnavailable, err, "listing replications")
	}
	out := make([]StageView, len(recs))
	for i, rec := range recs {
		out[i] = StageView{Stage: rec, Tags: s.stageTags(rec.BroadcastID, rec.Role)}
		for _, r := range reps {
			if r.DestArn == rec.Arn {
				out[i].Replications = append(out[i].Replications, r)
			}
		}
	}
	return out, nil
}

// Origin returns the broadcast's origin stage, if it has one yet.
func (s *Service) Origin(ctx context.Context, broadcastID string) (StageView, error) {
	b, err := s.store.GetBroadcast(ctx, broadcastID)
	if errors.Is(err, store.ErrNotFound) {
		return StageView{}, fail(ErrNotFound, "broadcast %s has no origin stage yet; it is created with the first host token", broadcastID)
	}
	if err != nil {
		return StageView{}, failWrap(ErrUnavailable, err, "reading broadcast")
	}
	return s.Stage(ctx, b.OriginArn)
}

// Replication names one host replication for the manual API.
type Replication struct {
	SourceArn     string
	DestArn       string
	ParticipantID string
}

// manualScope checks that both stages of a manual replication are
// stagefleet's (a stranger's stage is not ours to replicate from or into)
// and returns the broadcast it belongs to: the destination's.
func (s *Service) manualScope(ctx context.Context, r Replication) (string, error) {
	if r.SourceArn == r.DestArn {
		return "", fail(ErrInvalid, "sourceStageArn and destinationStageArn must be different stages")
	}
	if _, err := s.record(ctx, r.SourceArn); err != nil {
		return "", err
	}
	dest, err := s.record(ctx, r.DestArn)
	if err != nil {
		return "", err
	}
	return dest.BroadcastID, nil
}

// closesCycle says whether replicating from src into dest would close a
// loop: dest already reaches src through replications recorded in any
// broadcast.
func (s *Service) closesCycle(ctx context.Context, src, dest string) (bool, error) {
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return false, err
	}
	into := map[string][]string{} // source -> destinations
	for _, b := range bs {
		reps, err := s.store.ListReplications(ctx, b.ID)
		if err != nil {
			return false, err
		}
		for _, r := range reps {
			if r.State != store.ReplStopped {
				into[r.SourceArn] = append(into[r.SourceArn], r.DestArn)
			}
		}
	}
	seen := map[string]bool{dest: true}
	for next := []string{dest}; len(next) > 0; {
		at := next[len(next)-1]
		next = next[:len(next)-1]
		if at == src {
			return true, nil
		}
		for _, d := range into[at] {
			if !seen[d] {
				seen[d] = true
				next = append(next, d)
			}
		}
	}
	return false, nil
}

// StartReplication starts a host replication by hand, between two of
// stagefleet's stages. Starting one that runs already is a success. A host
// that is not publishing is refused with IVS's own message and nothing is
// recorded, and so is a replication that would close a loop.
func (s *Service) StartReplication(ctx context.Context, r Replication) (store.Replication, error) {
	b, err := s.manualScope(ctx, r)
	if err != nil {
		return store.Replication{}, err
	}
	switch cycle, err := s.closesCycle(ctx, r.SourceArn, r.DestArn); {
	case err != nil:
		return store.Replication{}, failWrap(ErrUnavailable, err, "reading replications")
	case cycle:
		return store.Replication{}, fail(ErrForbidden, "replicating from %s into %s would close a loop: %s already reaches %s through replications", r.SourceArn, r.DestArn, r.DestArn, r.SourceArn)
	}
	ctx, unlock, err := s.lock(ctx, b, "manual replication")
	if err != nil {
		return store.Replication{}, err
	}
	defer unlock()
	err = s.ivs.StartReplication(ctx, r.SourceArn, r.DestArn, r.ParticipantID, s.cfg.ReconnectWindow)
	msg, hasMsg := serviceMessage(err)
	switch {
	case errors.Is(err, ErrIVSNotPublishing) && hasMsg:
		return store.Replication{}, fail(ErrNotPublishing, "%s", msg)
	case errors.Is(err, ErrIVSConflict):
		// Already replicating: idempotent.
	case err != nil:
		return store.Replication{}, ivsFailure(err, "starting replication of %s into %s", r.ParticipantID, r.DestArn)
	}
	rec, gerr := s.store.GetReplication(ctx, b, r.ParticipantID, r.DestArn)
	if gerr != nil && !errors.Is(gerr, store.ErrNotFound) {
		return store.Replication{}, failWrap(ErrUnavailable, gerr, "reading replication")
	}
	if rec.State != store.ReplActive {
		rec = store.Replication{BroadcastID: b, ParticipantID: r.ParticipantID, SourceArn: r.SourceArn, DestArn: r.DestArn, State: store.ReplStarting, EventTime: rec.EventTime}
	}
	rec.UpdatedAt = s.now()
	if err := s.store.PutReplication(ctx, rec); err != nil {
		return store.Replication{}, failWrap(ErrUnavailable, err, "recording replication")
	}
	s.log.Info("replication started by hand", "broadcast", b, "participant", r.ParticipantID, "source", r.SourceArn, "destination", r.DestArn)
	return rec, nil
}

// StopReplication stops a host replication by hand. Replication into the
// controller's replica stages is not stopped this way: the controller
// would start it again.
func (s *Service) StopReplication(ctx context.Context, r Replication) error {
	if dest, err := s.store.GetStage(ctx, r.DestArn); err == nil && dest.Role == store.RoleReplica {
		return fail(ErrForbidden, "stage %s is a replica stage stagefleet manages: it replicates every host while it exists; it is removed when it empties", r.DestArn)
	}
	b, err := s.manualScope(ctx, r)
	if err != nil {
		return err
	}
	ctx, unlock, err := s.lock(ctx, b, "manual replication")
	if err != nil {
		return err
	}
	defer unlock()
	err = s.ivs.StopReplication(ctx, r.SourceArn, r.DestArn, r.ParticipantID)
	_, gerr := s.store.GetReplication(ctx, b, r.ParticipantID, r.DestArn)
	switch {
	case errors.Is(err, ErrIVSNotFound) && errors.Is(gerr, store.ErrNotFound):
		return fail(ErrNotFound, "participant %s is not being replicated from %s to %s", r.ParticipantID, r.SourceArn, r.DestArn)
	case err != nil && !errors.Is(err, ErrIVSNotFound):
		return ivsFailure(err, "stopping replication of %s into %s", r.ParticipantID, r.DestArn)
	}
	if err := s.store.DeleteReplication(ctx, b, r.ParticipantID, r.DestArn); err != nil && !errors.Is(err, store.ErrNotFound) {
		return failWrap(ErrUnavailable, err, "dropping replication record")
	}
	if err := s.applySeating(ctx, b); err != nil {
		return err
	}
	s.log.Info("replication stopped by hand", "broadcast", b, "participant", r.ParticipantID, "source", r.SourceArn, "destination", r.DestArn)
	return nil
}

// ReplicationStatus lists the replications into or out of a stage.
func (s *Service) ReplicationStatus(ctx context.Context, stageArn string) ([]store.Replication, error) {
	rec, err := s.store.GetStage(ctx, stageArn)
	if errors.Is(err, store.ErrNotFound) {
		rec = store.Stage{Arn: stageArn, BroadcastID: DefaultBroadcast}
	} else if err != nil {
		return nil, failWrap(ErrUnavailable, err, "reading stage")
	}
	return s.replicationsInto(ctx, rec)
}

// Hosts lists a broadcast's hosts in the order they got their tokens.
func (s *Service) Hosts(ctx context.Context, broadcastID string) ([]store.Host, error) {
	hs, err := s.store.ListHosts(ctx, broadcastID)
	if err != nil {
		return nil, failWrap(ErrUnavailable, err, "listing hosts")
	}
	return hs, nil
}

// Publisher returns the host the previous server's publisher-info showed:
// the latest publishing host, else the latest host given a token.
func (s *Service) Publisher(ctx context.Context, broadcastID string) (store.Host, bool, error) {
	hs, err := s.Hosts(ctx, broadcastID)
	if err != nil || len(hs) == 0 {
		return store.Host{}, false, err
	}
	best := hs[len(hs)-1]
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i].Publishing {
			best = hs[i]
			break
		}
	}
	return best, true, nil
}

// Broadcasts lists every broadcast.
func (s *Service) Broadcasts(ctx context.Context) ([]store.Broadcast, error) {
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return nil, failWrap(ErrUnavailable, err, "listing broadcasts")
	}
	return bs, nil
}

// Seat returns one viewer's seat in a broadcast; ok is false when it has
// none. It reads that seat only, whatever the audience.
func (s *Service) Seat(ctx context.Context, broadcastID, userID string) (store.Seat, bool, error) {
	seat, err := s.store.GetSeat(ctx, broadcastID, userID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return store.Seat{}, false, nil
	case err != nil:
		return store.Seat{}, false, failWrap(ErrUnavailable, err, "reading the seat of %s", userID)
	}
	return seat, true, nil
}

// SeatsPage lists a page of one stage's live seats: at most limit, from
// cursor ("" to begin), and the cursor of the rest ("" when done), with
// the stage's record (its seat count). A call takes a bounded number of
// steps through the broadcast's seats, so a page may hold fewer than
// limit while a cursor is still given; a seat may show on two pages.
func (s *Service) SeatsPage(ctx context.Context, stageArn, cursor string, limit int) ([]store.Seat, string, store.Stage, error) {
	rec, err := s.record(ctx, stageArn)
	if err != nil {
		return nil, "", store.Stage{}, err
	}
	var out []store.Seat
	seen := map[string]bool{}
	// Each step asks for no more than the page still has room for, so
	// that the page never overflows and the cursor never skips a seat.
	for steps := 0; steps < seatsPageSteps && len(out) < limit; steps++ {
		page, next, err := s.BroadcastSeatsPage(ctx, rec.BroadcastID, cursor, limit-len(out))
		if err != nil {
			return nil, "", store.Stage{}, err
		}
		for _, seat := range page {
			if seat.StageArn == stageArn && !seen[seat.UserID] {
				seen[seat.UserID] = true
				out = append(out, seat)
			}
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	return out, cursor, rec, nil
}

// seatsPageSteps bounds the store calls one page of a stage's seats
// makes: the stage's seats are among the whole broadcast's.
const seatsPageSteps = 10

// BroadcastSeatsPage returns at most limit of a broadcast's seats from
// cursor ("" to begin) and the cursor of the rest ("" when done).
func (s *Service) BroadcastSeatsPage(ctx context.Context, broadcastID, cursor string, limit int) ([]store.Seat, string, error) {
	page, next, err := s.store.ScanSeats(ctx, broadcastID, cursor, limit)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", fail(ErrInvalid, "cursor %q is not one this server gave", cursor)
	}
	if err != nil {
		return nil, "", failWrap(ErrUnavailable, err, "listing seats")
	}
	return page, next, nil
}

// WatchTotals returns a broadcast's viewers seated now and their watch
// time so far, in whole seconds (each seat's from its TakenAt's second),
// from the store's totals without reading the seats; only seats the
// totals leave out (see store.SeatTotals) are read, page by page.
func (s *Service) WatchTotals(ctx context.Context, broadcastID string) (viewers int, seconds int64, err error) {
	t, err := s.store.SeatTotals(ctx, broadcastID)
	if err != nil {
		return 0, 0, failWrap(ErrUnavailable, err, "reading the seat totals of %s", broadcastID)
	}
	now := s.now().Unix()
	if t.Untracked == 0 {
		return t.Seats, int64(t.Seats)*now - t.TakenAtSum, nil
	}
	seen := map[string]bool{}
	cursor := ""
	for {
		page, next, err := s.store.ScanSeats(ctx, broadcastID, cursor, 1000)
		if err != nil {
			return 0, 0, failWrap(ErrUnavailable, err, "listing seats")
		}
		for _, seat := range page {
			if !seen[seat.UserID] {
				seen[seat.UserID] = true
				seconds += now - seat.TakenAt.Unix()
			}
		}
		if cursor = next; cursor == "" {
			return len(seen), seconds, nil
		}
	}
}

// Broadcast returns one broadcast's record.
func (s *Service) Broadcast(ctx context.Context, id string) (store.Broadcast, error) {
	b, err := s.store.GetBroadcast(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Broadcast{}, fail(ErrNotFound, "there is no broadcast %s", id)
	}
	if err != nil {
		return store.Broadcast{}, failWrap(ErrUnavailable, err, "reading broadcast %s", id)
	}
	return b, nil
}

// SeatLease is how long a seat lasts past its last heartbeat.
func (s *Service) SeatLease() time.Duration { return s.cfg.HeartbeatTimeout }

// Now is the fleet's clock, for views that compute durations.
func (s *Service) Now() time.Time { return s.now() }
