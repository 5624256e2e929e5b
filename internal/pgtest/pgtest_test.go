package pgtest_test

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/stagefleet/stagefleet/internal/pgtest"
)

func query(t *testing.T, url, sql string) (int, error) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(t.Context())
	var n int
	err = conn.QueryRow(t.Context(), sql).Scan(&n)
	return n, err
}

// A server starts, keeps its databases apart and its data over a restart,
// and is gone after Stop.
func TestServer(t *testing.T) {
	srv := pgtest.Start(t)
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases with one URL %s", a)
	}
	conn, err := pgx.Connect(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(t.Context(), "CREATE TABLE t AS SELECT 42 AS x")
	conn.Close(t.Context())
	if err != nil {
		t.Fatalf("creating a table: %v", err)
	}
	if _, err := query(t, b, "SELECT x FROM t"); err == nil {
		t.Error("database b sees database a's table")
	}
	srv.Restart()
	if n, err := query(t, a, "SELECT x FROM t"); err != nil || n != 42 {
		t.Errorf("after Restart: %d, %v; want 42", n, err)
	}
	if v, err := query(t, srv.URL(), "SELECT current_setting('server_version_num')::int"); err != nil || v < 150000 {
		t.Errorf("server version %d, %v; want 15 or later", v, err)
	}
	srv.Stop()
	if _, err := query(t, a, "SELECT 1"); err == nil {
		t.Error("the server still answers after Stop")
	}
}
