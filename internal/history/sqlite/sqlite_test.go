package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/history/historytest"
	"github.com/stagefleet/stagefleet/internal/history/sqlite"
)

func TestConformance(t *testing.T) {
	historytest.Run(t, func(t *testing.T) historytest.Opener {
		dir := t.TempDir()
		return func(ctx context.Context) (history.Store, []int, error) {
			st, err := sqlite.Open(ctx, dir)
			if err != nil {
				return nil, nil, err
			}
			return st, st.AppliedMigrations(), nil
		}
	})
}

// The database has the columns of historytest.Columns, which PostgreSQL's
// has too.
func TestColumns(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	st, err := sqlite.Open(t.Context(), dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer st.Close()
	db, err := sql.Open("sqlite", filepath.Join(dir, sqlite.FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for table, want := range historytest.Columns {
		rows, err := db.QueryContext(t.Context(), `SELECT name FROM pragma_table_info(?) ORDER BY cid`, table)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				t.Fatal(err)
			}
			got = append(got, name)
		}
		rows.Close()
		if !slices.Equal(got, want) {
			t.Errorf("%s: columns %v, want %v", table, got, want)
		}
	}
}
