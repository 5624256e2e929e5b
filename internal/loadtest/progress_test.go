package loadtest

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestProgressLine(t *testing.T) {
	s := time.Second
	tests := []struct {
		name     string
		pr, prev Progress
		want     string
	}{
		{"before any viewer", Progress{Phase: phaseLive, Elapsed: 1200 * time.Millisecond, Stages: 1}, Progress{},
			"going live 1.2s: requested 0/0, seated 0, waiting 0, refused 0, stages 1, 0.0 joins/s"},
		{"first line: joins since the start", Progress{Phase: phaseViewers, Elapsed: 5 * s, Planned: 2000, Requested: 1000, Seated: 900, Waiting: 100, Refused: 7, Stages: 19},
			Progress{}, "viewers 5.0s: requested 1000/2000, seated 900, waiting 100, refused 7, stages 19, 180.0 joins/s"},
		// 300 more joined in half a second, 100 of whom left again.
		{"joins since the line before, leavers included", Progress{Phase: phaseViewers, Elapsed: 5500 * time.Millisecond, Planned: 2000, Requested: 1300, Seated: 1100, Left: 100, Waiting: 100, Stages: 23},
			Progress{Elapsed: 5 * s, Seated: 900}, "viewers 5.5s: requested 1300/2000, seated 1100, waiting 100, refused 0, stages 23, 600.0 joins/s"},
		{"everyone leaving", Progress{Phase: phaseDrain, Elapsed: 60 * s, Planned: 2000, Requested: 2000, Left: 2000, Stages: 40},
			Progress{Elapsed: 55 * s, Seated: 500, Left: 1500}, "drain wait 60.0s: requested 2000/2000, seated 0, waiting 0, refused 0, stages 40, 0.0 joins/s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := progressLine(tt.pr, tt.prev); got != tt.want {
				t.Errorf("progressLine =\n %q\nwant\n %q", got, tt.want)
			}
		})
	}
}

func TestProgressWriter(t *testing.T) {
	at := func(ms int) Progress {
		return Progress{Phase: phaseViewers, Elapsed: time.Duration(ms) * time.Millisecond, Seated: ms}
	}
	tests := []struct {
		name    string
		inPlace bool
		shows   []int // elapsed ms of each sample
		want    string
	}{
		// Samples every 250 ms: every other one is shown, over the last.
		{"in place every 500 ms", true, []int{250, 500, 750, 1000, 1250},
			"\r\033[K" + progressLine(at(500), Progress{}) + "\r\033[K" + progressLine(at(1000), at(500))},
		{"a line of its own every 5 s elsewhere", false, []int{250, 4750, 5000, 7500, 9750, 10250},
			progressLine(at(5000), Progress{}) + "\n" + progressLine(at(10250), at(5000)) + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			p := NewProgressWriter(&out, tt.inPlace)
			for _, ms := range tt.shows {
				p.Show(at(ms))
			}
			if out.String() != tt.want {
				t.Errorf("output\n %q\nwant\n %q", out.String(), tt.want)
			}
		})
	}
}

// TestProgressWriterClearsForLogs: a log line or warning written while a
// line is shown in place starts on a clean line, and Clear leaves none
// behind for the report.
func TestProgressWriterClearsForLogs(t *testing.T) {
	var out bytes.Buffer
	p := NewProgressWriter(&out, true)
	p.Show(Progress{Phase: phaseViewers, Elapsed: time.Second})
	if _, err := p.Write([]byte("warning\n")); err != nil {
		t.Fatal(err)
	}
	p.Clear() // nothing on screen since the warning: nothing to clear
	want := "\r\033[K" + progressLine(Progress{Phase: phaseViewers, Elapsed: time.Second}, Progress{}) + "\r\033[Kwarning\n"
	if out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	p.Show(Progress{Phase: phaseViewers, Elapsed: 2 * time.Second})
	p.Clear()
	if !strings.HasSuffix(out.String(), "joins/s\r\033[K") {
		t.Errorf("Clear left the line: %q", out.String())
	}
}
