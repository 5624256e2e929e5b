package postgres_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/history/historytest"
	"github.com/stagefleet/stagefleet/internal/history/postgres"
	"github.com/stagefleet/stagefleet/internal/pgtest"
)

func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	historytest.Run(t, func(t *testing.T) historytest.Opener {
		url := srv.NewDatabase(t)
		return func(ctx context.Context) (history.Store, []int, error) {
			st, err := postgres.Open(ctx, url)
			if err != nil {
				return nil, nil, err
			}
			return st, st.AppliedMigrations(), nil
		}
	})
}

// The database has the columns of historytest.Columns, which SQLite's has
// too.
func TestColumns(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	st, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer st.Close()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for table, want := range historytest.Columns {
		rows, _ := conn.Query(t.Context(), `SELECT column_name::text FROM information_schema.columns
			WHERE table_name = $1 ORDER BY ordinal_position`, table)
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: columns %v, want %v", table, got, want)
		}
	}
}
