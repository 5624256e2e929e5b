package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/stagefleet/stagefleet/internal/config"
	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/history/postgres"
	"github.com/stagefleet/stagefleet/internal/history/sqlite"
	"github.com/stagefleet/stagefleet/internal/store"
)

// openHistory opens the viewing history the configuration names: nil when
// it is off.
func openHistory(ctx context.Context, cfg config.Config) (history.Store, error) {
	switch cfg.HistoryKind() {
	case "postgres":
		// An unreachable host would otherwise hold start-up for the
		// system's connect timeout, often minutes.
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		st, err := postgres.Open(octx, cfg.PostgresURL())
		if err != nil {
			return nil, fmt.Errorf("viewing history on PostgreSQL (DATABASE_URL or DB_HOST): %w", err)
		}
		return st, nil
	case "sqlite":
		st, err := sqlite.Open(ctx, cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("viewing history in DATA_DIR %s: %w", cfg.DataDir, err)
		}
		return st, nil
	}
	return nil, nil
}

// sessions turns the fleet's seats into history events, queued on the
// writer: never a database call on the join path.
type sessions struct {
	w        *history.Writer
	instance string
}

func (s sessions) SeatOpened(seat store.Seat, client fleet.Client) {
	s.w.Record(history.Event{
		Kind: history.Open, SessionID: fleet.SessionID(seat), BroadcastID: seat.BroadcastID, UserID: seat.UserID,
		StageArn: seat.StageArn, ParticipantID: seat.ParticipantID, Instance: s.instance, At: seat.TakenAt,
		UserAgent: client.UserAgent, IPAddress: client.IP, CountryCode: client.Country,
	})
}

// WaitRoom lets a broadcast's end wait for the writer rather than drop the
// closes of its seats.
func (s sessions) WaitRoom(ctx context.Context, n int) (int, error) { return s.w.WaitRoom(ctx, n) }

func (s sessions) SeatClosed(seat store.Seat, reason string, lastSeen time.Time) {
	if lastSeen.Before(seat.TakenAt) {
		lastSeen = seat.TakenAt
	}
	s.w.Record(history.Event{
		Kind: history.Close, SessionID: fleet.SessionID(seat), BroadcastID: seat.BroadcastID, UserID: seat.UserID,
		StageArn: seat.StageArn, ParticipantID: seat.ParticipantID, Instance: s.instance,
		At: lastSeen, EndReason: reason,
	})
}

// historyLease makes one instance of the fleet take each snapshot round
// and the daily retention.
const historyLease = "history"

// recorder takes snapshots of every stage each interval and applies the
// retention once a day, on the instance holding the history lease.
type recorder struct {
	fleet     *fleet.Service
	leases    store.LeaseStore
	w         *history.Writer
	hist      history.Store
	holder    string
	interval  time.Duration
	retention time.Duration
	log       *slog.Logger

	pruned time.Time
}

func (r *recorder) run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.round(ctx)
		}
	}
}

// round takes one snapshot round if it is this instance's turn. The lease
// is kept, not released: it runs out before the next round, when any
// instance may take it.
func (r *recorder) round(ctx context.Context) {
	_, err := r.leases.AcquireLease(ctx, "#all", historyLease, r.holder, r.interval*9/10)
	if errors.Is(err, store.ErrLeaseHeld) {
		return
	}
	if err != nil {
		r.log.Warn("history: taking the snapshot lease", "error", err)
		return
	}
	if err := r.snapshot(ctx); err != nil {
		r.log.Warn("history: snapshot", "error", err)
	}
	if now := time.Now(); now.Sub(r.pruned) >= 24*time.Hour {
		n, err := r.hist.Prune(ctx, now.Add(-r.retention))
		if err != nil {
			r.log.Warn("history: retention", "error", err)
			return
		}
		r.pruned = now
		r.log.Info("history: retention applied", "rows_deleted", n, "retention", r.retention.String())
	}
}

// snapshot records every stage's viewers, role and replication state, all
// of one round at one time.
func (r *recorder) snapshot(ctx context.Context) error {
	bs, err := r.fleet.Broadcasts(ctx)
	if err != nil {
		return err
	}
	at := time.Now()
	var snaps []history.Snapshot
	for _, b := range bs {
		views, err := r.fleet.Stages(ctx, b.ID)
		if err != nil {
			return err
		}
		for _, v := range views {
			snaps = append(snaps, history.Snapshot{
				StageArn: v.Arn, BroadcastID: b.ID, Role: string(v.Role), ReplicationState: replicationState(v),
				Viewers: v.Seats, Capacity: v.Capacity, At: at,
			})
		}
	}
	r.w.RecordSnapshots(snaps...)
	return nil
}

// replicationState sums up the replications into a stage: "active" when
// every one is, else the least advanced; "none" for a stage without any
// (the origin, a manual stage).
func replicationState(v fleet.StageView) string {
	order := []string{store.ReplFailed, store.ReplPending, store.ReplStarting, store.ReplStopped, store.ReplActive}
	worst := len(order)
	for _, rep := range v.Replications {
		for i, s := range order {
			if rep.State == s && i < worst {
				worst = i
			}
		}
	}
	if worst == len(order) {
		return "none"
	}
	return order[worst]
}

// instanceName names this process in history rows.
func instanceName(cfg config.Config) string {
	if cfg.InstanceID != "" {
		return cfg.InstanceID
	}
	host, err := os.Hostname()
	if err != nil {
		host = "stagefleet"
	}
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}
