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

// WriteChart draws the viewers seated and the stages over time as an SVG:
// two panels over one time axis, since a few dozen stages would be a flat
// line on the scale of thousands of viewers.
func (rep *Report) WriteChart(w io.Writer) error {
	seated := make(plotter.XYs, len(rep.Series))
	stages := make(plotter.XYs, len(rep.Series))
	for i, s := range rep.Series {
		seated[i] = plotter.XY{X: s.Seconds, Y: float64(s.Seated)}
		stages[i] = plotter.XY{X: s.Seconds, Y: float64(s.Stages)}
	}
	top, err := panel(seated, "viewers seated", color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, plotter.NoStep)
	if err != nil {
		return err
	}
	top.Title.Text = fmt.Sprintf("stagefleet loadtest: %s, %d viewers at %g/s, capacity %d", rep.Scenario, rep.Settings.Viewers, rep.Settings.Rate, rep.Settings.Capacity)
	// Stage counts are whole numbers: a step line, not a slope.
	bottom, err := panel(stages, "stages", color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, plotter.PostStep)
	if err != nil {
		return err
	}
	bottom.X.Label.Text = "seconds since the start of the run"
	// Both panels span the same time, so that they line up.
	for _, p := range []*plot.Plot{top, bottom} {
		p.X.Min, p.X.Max = 0, max(1, rep.DurationSeconds)
		p.Y.Min = 0
	}
	top.Y.Tick.Marker = integerTicks{}
	bottom.Y.Tick.Marker = integerTicks{}

	canvas := vgsvg.New(9*vg.Inch, 6*vg.Inch)
	plots := [][]*plot.Plot{{top}, {bottom}}
	tiles := plot.Align(plots, draw.Tiles{Rows: 2, Cols: 1, PadY: vg.Points(8), PadTop: vg.Points(8), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(12)}, draw.New(canvas))
	top.Draw(tiles[0][0])
	bottom.Draw(tiles[1][0])
	if _, err := canvas.WriteTo(w); err != nil {
		return fmt.Errorf("writing the chart: %w", err)
	}
	return nil
}

func panel(xys plotter.XYs, label string, c color.Color, step plotter.StepKind) (*plot.Plot, error) {
	p := plot.New()
	p.Y.Label.Text = label
	p.Add(plotter.NewGrid())
	if len(xys) == 0 {
		return p, nil
	}
	l, err := plotter.NewLine(xys)
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", label, err)
	}
	l.Color = c
	l.Width = vg.Points(1.5)
	l.StepStyle = step
	p.Add(l)
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
