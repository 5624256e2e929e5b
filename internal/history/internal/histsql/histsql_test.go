package histsql

import (
	"errors"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"github.com/stagefleet/stagefleet/internal/history"
)

// Both databases have the same migrations: the same versions and names.
func TestMigrationsAgree(t *testing.T) {
	pg, err := Migrations(Postgres)
	if err != nil {
		t.Fatalf("Migrations(postgres): %v", err)
	}
	lite, err := Migrations(SQLite)
	if err != nil {
		t.Fatalf("Migrations(sqlite): %v", err)
	}
	names := func(ms []Migration) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Name)
		}
		return out
	}
	if !slices.Equal(names(pg), names(lite)) {
		t.Errorf("postgres migrations %v, sqlite %v: want the same", names(pg), names(lite))
	}
}

func TestLoad(t *testing.T) {
	file := &fstest.MapFile{Data: []byte("CREATE TABLE t (x INTEGER);")}
	tests := []struct {
		name    string
		files   []string
		want    []int
		wantErr bool
	}{
		{"in order", []string{"0002_b.sql", "0001_a.sql", "0003_c.sql"}, []int{1, 2, 3}, false},
		{"gap", []string{"0001_a.sql", "0003_c.sql"}, nil, true},
		{"duplicate", []string{"0001_a.sql", "0001_b.sql"}, nil, true},
		{"not from 1", []string{"0002_b.sql"}, nil, true},
		{"no name", []string{"0001.sql"}, nil, true},
		{"short number", []string{"1_a.sql"}, nil, true},
		{"not sql", []string{"0001_a.sql", "README"}, nil, true},
		{"none", nil, nil, true},
	}
	for _, tt := range tests {
		fsys := fstest.MapFS{"m": &fstest.MapFile{Mode: 0o755 | 1<<31}}
		for _, f := range tt.files {
			fsys["m/"+f] = file
		}
		ms, err := load(fsys, "m")
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: error %v, want one: %v", tt.name, err, tt.wantErr)
			continue
		}
		var got []int
		for _, m := range ms {
			got = append(got, m.Version)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: versions %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestPending(t *testing.T) {
	ms := []Migration{{Version: 1}, {Version: 2}, {Version: 3}}
	tests := []struct {
		applied []int
		want    []int
	}{
		{nil, []int{1, 2, 3}},
		{[]int{1}, []int{2, 3}},
		{[]int{1, 2, 3}, nil},
		{[]int{1, 2, 3, 4}, nil}, // 4 is a newer release's
	}
	for _, tt := range tests {
		var got []int
		for _, m := range Pending(ms, tt.applied) {
			got = append(got, m.Version)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("Pending(%v) = %v, want %v", tt.applied, got, tt.want)
		}
	}
}

func TestCursor(t *testing.T) {
	for _, c := range []Cursor{
		{At: time.Date(2030, 1, 2, 3, 4, 5, 678901000, time.UTC), SessionID: "s/1:x"},
		{At: time.Unix(0, 0).UTC(), SessionID: "a"},
		{At: time.Date(1969, 7, 20, 20, 17, 0, 0, time.UTC), SessionID: "apollo"},
	} {
		got, err := DecodeCursor(c.Encode())
		if err != nil || got != c {
			t.Errorf("DecodeCursor(Encode(%v)) = %v, %v", c, got, err)
		}
	}
	for _, bad := range []string{"", "***", "MTIz", "YWJjL3g", "MTIzLw"} {
		if _, err := DecodeCursor(bad); !errors.Is(err, history.ErrInvalid) {
			t.Errorf("DecodeCursor(%q): %v, want ErrInvalid", bad, err)
		}
	}
}

func TestFold(t *testing.T) {
	from := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	instants := []Instant{
		{At: from.Add(-time.Second), Viewers: 99, Stages: 9}, // before from
		{At: from, Viewers: 3, Stages: 1},
		{At: from.Add(9 * time.Second), Viewers: 7, Stages: 1},
		{At: from.Add(10 * time.Second), Viewers: 2, Stages: 4},
		{At: from.Add(30 * time.Second), Viewers: 99, Stages: 9}, // past the last step
	}
	got := Fold(from, 10*time.Second, 3, instants)
	want := []history.Point{
		{At: from, Viewers: 7, Stages: 1},
		{At: from.Add(10 * time.Second), Viewers: 2, Stages: 4},
		{At: from.Add(20 * time.Second)},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Fold = %+v, want %+v", got, want)
	}
}

func TestAverage(t *testing.T) {
	if got := Average(0, 0); got != 0 {
		t.Errorf("Average(0, 0) = %v", got)
	}
	if got := Average(10, 4); got != 2500*time.Millisecond {
		t.Errorf("Average(10, 4) = %v, want 2.5s", got)
	}
}

func TestSeriesSteps(t *testing.T) {
	at := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		from, to time.Time
		step     time.Duration
		want     int
		invalid  bool
	}{
		{"exact", at, at.Add(time.Hour), time.Minute, 60, false},
		{"rounds up", at, at.Add(time.Hour + time.Second), time.Minute, 61, false},
		{"empty", at, at, time.Minute, 0, false},
		{"backwards", at, at.Add(-time.Hour), time.Minute, 0, false},
		{"at most", at, at.Add(history.MaxSeriesPoints * time.Second), time.Second, history.MaxSeriesPoints, false},
		{"too many", at, at.Add(history.MaxSeriesPoints*time.Second + 1), time.Second, 0, true},
		{"zero step", at, at.Add(time.Hour), 0, 0, true},
		{"span past Sub's range", time.Date(1000, 1, 1, 0, 0, 1, 0, time.UTC), at, 8760 * time.Hour, 0, true},
		{"step past Duration's range", time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC), at, 2562047 * time.Hour, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := SeriesSteps(tt.from, tt.to, tt.step)
			if tt.invalid != errors.Is(err, history.ErrInvalid) || n != tt.want {
				t.Errorf("SeriesSteps = %d, %v; want %d, invalid %v", n, err, tt.want, tt.invalid)
			}
		})
	}
}
