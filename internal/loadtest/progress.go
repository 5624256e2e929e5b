package loadtest

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// How often progress is shown: a line rewritten in place can keep up with
// the run; a log (a pipe, CI) wants a line now and then, not thousands.
const (
	inPlaceEvery = 500 * time.Millisecond
	plainEvery   = 5 * time.Second
)

// ProgressWriter shows a run's progress on w (stderr: stdout may carry the
// JSON report). In place, on a terminal, it is one line rewritten every
// 500 ms; otherwise a line of its own every 5 s. It is also an io.Writer
// for log lines and warnings, which clear the line in place first so that
// the two do not mix.
type ProgressWriter struct {
	w       io.Writer
	inPlace bool
	every   time.Duration

	mu sync.Mutex
	// last is the last progress shown (zero: none yet, the first line
	// coming one interval into the run), for the rate of joins since;
	// onScreen, that an in-place line is showing.
	last     Progress
	onScreen bool
}

// NewProgressWriter returns a ProgressWriter on w, rewriting one line in
// place when inPlace is set.
func NewProgressWriter(w io.Writer, inPlace bool) *ProgressWriter {
	every := plainEvery
	if inPlace {
		every = inPlaceEvery
	}
	return &ProgressWriter{w: w, inPlace: inPlace, every: every}
}

// Show shows pr if the last line shown is old enough; it fits
// Config.Progress, which is called after every sample.
func (p *ProgressWriter) Show(pr Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr.Elapsed-p.last.Elapsed < p.every {
		return
	}
	line := progressLine(pr, p.last)
	if p.inPlace {
		// Back to the start of the line, and clear what a longer line
		// left there.
		fmt.Fprint(p.w, "\r\033[K"+line)
		p.onScreen = true
	} else {
		fmt.Fprintln(p.w, line)
	}
	p.last = pr
}

// Clear removes the line in place, before the report is written.
func (p *ProgressWriter) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
}

func (p *ProgressWriter) clearLocked() {
	if p.onScreen {
		fmt.Fprint(p.w, "\r\033[K")
		p.onScreen = false
	}
}

// Write clears the line in place and writes b (whole lines); the next
// Show draws the line again.
func (p *ProgressWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	return p.w.Write(b)
}

// progressLine renders pr; prev is the line shown before (zero: none), the
// joins per second being those since.
func progressLine(pr, prev Progress) string {
	// Everyone seated so far is either seated now or has left.
	joined := pr.Seated + pr.Left - prev.Seated - prev.Left
	rate := 0.0
	if d := pr.Elapsed - prev.Elapsed; d > 0 {
		rate = float64(joined) / d.Seconds()
	}
	return fmt.Sprintf("%s %.1fs: requested %d/%d, seated %d, waiting %d, refused %d, stages %d, %.1f joins/s",
		pr.Phase, pr.Elapsed.Seconds(), pr.Requested, pr.Planned, pr.Seated, pr.Waiting, pr.Refused, pr.Stages, rate)
}
