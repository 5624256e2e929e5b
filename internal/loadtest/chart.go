package loadtest

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Legend labels of the chart's series.
const (
	labelSeated   = "viewers seated"
	labelPlanned  = "planned arrivals (cumulative)"
	labelWaiting  = "viewers waiting"
	labelSeats    = "seat capacity (stages × capacity)"
	labelCeiling  = "MAX_STAGES × capacity"
	labelRefusals = "refusals (cumulative)"
	labelStages   = "stages"
)

// series is one line of the chart.
type series struct {
	label string
	xys   plotter.XYs
	color color.Color
	// step draws whole-number counts that jump (stages, seats) as steps,
	// not slopes.
	step plotter.StepKind
	// dashes mark what the run was asked to do or allowed to reach, as
	// against what it measured.
	dashes []vg.Length
}

// WriteChart draws the run over time as an SVG, in three panels over one
// time axis: viewers against the seats the stages offer, so that a plateau
// shows its cause (the plan, seats not made in time, MAX_STAGES); the
// refusals; and the stages, since a few dozen stages would be a flat line
// on the scale of thousands of viewers.
func (rep *Report) WriteChart(w io.Writer) error {
	canvas := vgsvg.New(9*vg.Inch, 8*vg.Inch)
	if err := rep.drawChart(draw.New(canvas)); err != nil {
		return err
	}
	if _, err := canvas.WriteTo(w); err != nil {
		return fmt.Errorf("writing the chart: %w", err)
	}
	return nil
}

func (rep *Report) drawChart(c draw.Canvas) error {
	n := len(rep.Series)
	seated, planned, waiting, seats := make(plotter.XYs, n), make(plotter.XYs, n), make(plotter.XYs, n), make(plotter.XYs, n)
	refusals, stages := make(plotter.XYs, n), make(plotter.XYs, n)
	capacity := rep.Settings.Capacity
	for i, s := range rep.Series {
		seated[i] = plotter.XY{X: s.Seconds, Y: float64(s.Seated)}
		planned[i] = plotter.XY{X: s.Seconds, Y: float64(s.PlannedArrivals)}
		waiting[i] = plotter.XY{X: s.Seconds, Y: float64(s.Waiting)}
		seats[i] = plotter.XY{X: s.Seconds, Y: float64(s.Stages * capacity)}
		refusals[i] = plotter.XY{X: s.Seconds, Y: float64(s.Refused)}
		stages[i] = plotter.XY{X: s.Seconds, Y: float64(s.Stages)}
	}
	end := max(1, rep.DurationSeconds)
	dashed := []vg.Length{vg.Points(4), vg.Points(3)}
	viewers := []series{
		{label: labelPlanned, xys: planned, color: color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}, dashes: dashed},
		{label: labelSeats, xys: seats, color: color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, step: plotter.PostStep},
		{label: labelSeated, xys: seated, color: color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}},
		{label: labelWaiting, xys: waiting, color: color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}},
	}
	if rep.Settings.MaxStages > 0 && capacity > 0 && n > 0 {
		// MAX_STAGES is per broadcast; the series counts them all.
		ceiling := float64(rep.Settings.MaxStages * capacity * max(1, rep.Settings.Broadcasts))
		viewers = append(viewers, series{label: labelCeiling, xys: plotter.XYs{{X: 0, Y: ceiling}, {X: end, Y: ceiling}},
			color: color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, dashes: dashed})
	}
	top, err := panel("viewers and seats", viewers...)
	if err != nil {
		return err
	}
	top.Title.Text = fmt.Sprintf("stagefleet loadtest: %s, %d viewers at %g/s, capacity %d", rep.Scenario, rep.Settings.Viewers, rep.Settings.Rate, capacity)
	middle, err := panel(labelRefusals, series{label: labelRefusals, xys: refusals, color: color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, step: plotter.PostStep})
	if err != nil {
		return err
	}
	bottom, err := panel(labelStages, series{label: labelStages, xys: stages, color: color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, step: plotter.PostStep})
	if err != nil {
		return err
	}
	bottom.X.Label.Text = "seconds since the start of the run"
	// The panels span the same time, so that they line up.
	plots := []*plot.Plot{top, middle, bottom}
	for _, p := range plots {
		p.X.Min, p.X.Max = 0, end
		p.Y.Min = 0
		p.Y.Tick.Marker = integerTicks{}
	}
	// Room above the lines for the legend, in the top left corner.
	top.Y.Max = max(1, top.Y.Max) * (1 + 0.16*float64(len(viewers)))

	tiles := plot.Align([][]*plot.Plot{{top}, {middle}, {bottom}},
		draw.Tiles{Rows: 3, Cols: 1, PadY: vg.Points(8), PadTop: vg.Points(8), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(12)}, c)
	for i, p := range plots {
		p.Draw(tiles[i][0])
	}
	return nil
}

// panel is one plot of the chart; several lines are named in a legend, a
// single one by the axis.
func panel(yLabel string, lines ...series) (*plot.Plot, error) {
	p := plot.New()
	p.Y.Label.Text = yLabel
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	for _, s := range lines {
		if len(s.xys) == 0 {
			continue
		}
		l, err := plotter.NewLine(s.xys)
		if err != nil {
			return nil, fmt.Errorf("chart %s: %w", s.label, err)
		}
		l.Color = s.color
		l.Width = vg.Points(1.5)
		l.StepStyle = s.step
		l.Dashes = s.dashes
		p.Add(l)
		if len(lines) > 1 {
			p.Legend.Add(s.label, l)
		}
	}
	return p, nil
}

// integerTicks are the default ticks at whole numbers, labelled as such:
// counts of viewers and stages have no fractions.
type integerTicks struct{}

func (integerTicks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for _, t := range (plot.DefaultTicks{}).Ticks(lo, hi) {
		if t.Value != math.Trunc(t.Value) {
			continue
		}
		if t.Label != "" {
			t.Label = strconv.FormatFloat(t.Value, 'f', 0, 64)
		}
		out = append(out, t)
	}
	return out
}
