package loadgen

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // blue
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // red
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, // green
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, // orange
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, // purple
}

// series is one named line.
type series struct {
	name string
	pts  plotter.XYs
}

// cdf returns the empirical CDF of sorted (at most about 2,000 points),
// with x values below floor raised to it (log axes need positive values).
func cdf(sorted []float64, floor float64) plotter.XYs {
	n := len(sorted)
	if n == 0 {
		return nil
	}
	m := min(n, 2000)
	pts := make(plotter.XYs, 0, m+1)
	for k := 0; k <= m; k++ {
		i := k * (n - 1) / m
		pts = append(pts, plotter.XY{X: math.Max(sorted[i], floor), Y: float64(i+1) / float64(n)})
	}
	return pts
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Add(plotter.NewGrid())
	return p
}

func addLines(p *plot.Plot, ss []series) error {
	for i, s := range ss {
		if len(s.pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(s.pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.name, err)
		}
		l.Color = palette[i%len(palette)]
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(s.name, l)
	}
	return nil
}

// cdfAxes sets up a CDF plot: the legend bottom right, where a CDF leaves
// room, and the x axis on a log scale when the values span more than a
// decade (a narrower log axis would show no tick labels).
func cdfAxes(p *plot.Plot, ss []series) {
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.XOffs, p.Legend.YOffs = -vg.Points(10), vg.Points(10)
	p.Y.Min, p.Y.Max = 0, 1
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, pt := range s.pts {
			lo, hi = math.Min(lo, pt.X), math.Max(hi, pt.X)
		}
	}
	if lo > 0 && hi/lo > 10 {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		p.X.Label.Text += " (log scale)"
	}
}

func save(p *plot.Plot, path string) error {
	if err := p.Save(9*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	return nil
}

// WritePlots writes PREFIX-latency.png (CDFs of end-to-end and scheduling
// latency), PREFIX-slowdown.png (CDFs of the per-invocation and
// per-function slowdown) and PREFIX-timeline.png (planned, sent and
// answered requests, errors and cold starts per second), and returns their
// paths.
func WritePlots(prefix string, r *Result, s *Summary) ([]string, error) {
	var files []string
	msOf := func(d time.Duration) float64 { return float64(d) / 1e6 }
	var e2e, sched []float64
	for i := range r.Records {
		rec := &r.Records[i]
		if rec.Warmup || !rec.OK() {
			continue
		}
		e2e = append(e2e, msOf(rec.Latency))
		if rec.ExecKnown {
			sched = append(sched, msOf(rec.Scheduling()))
		}
	}
	slices.Sort(e2e)
	slices.Sort(sched)
	lat := []series{{"end to end", cdf(e2e, 1e-3)}}
	if len(sched) > 0 {
		lat = append(lat, series{"scheduling (end to end - execution)", cdf(sched, 1e-3)})
	}
	p := newPlot("Latency CDF: "+r.Title, "latency (ms)", "fraction of invocations")
	if err := addLines(p, lat); err != nil {
		return nil, err
	}
	cdfAxes(p, lat)
	path := prefix + "-latency.png"
	if err := save(p, path); err != nil {
		return nil, err
	}
	files = append(files, path)

	perInv := Slowdowns(r.Records)
	perFn := make([]float64, len(s.Slowdown))
	for i, f := range s.Slowdown {
		perFn[i] = f.GeoMean
	}
	slices.Sort(perFn)
	sl := []series{{"per invocation", cdf(perInv, 1e-3)}, {"per function (geometric mean)", cdf(perFn, 1e-3)}}
	p = newPlot("Slowdown CDF: "+r.Title, "slowdown = end to end / execution time", "fraction")
	if err := addLines(p, sl); err != nil {
		return nil, err
	}
	cdfAxes(p, sl)
	path = prefix + "-slowdown.png"
	if err := save(p, path); err != nil {
		return nil, err
	}
	files = append(files, path)

	var planned, issued, ok, errs, cold plotter.XYs
	top := 0
	for i, x := range s.Seconds {
		t := float64(i) + 0.5 // the count covers [i, i+1)
		top = max(top, x.Planned, x.Issued, x.OK, x.Errors, x.Cold)
		planned = append(planned, plotter.XY{X: t, Y: float64(x.Planned)})
		issued = append(issued, plotter.XY{X: t, Y: float64(x.Issued)})
		ok = append(ok, plotter.XY{X: t, Y: float64(x.OK)})
		errs = append(errs, plotter.XY{X: t, Y: float64(x.Errors)})
		cold = append(cold, plotter.XY{X: t, Y: float64(x.Cold)})
	}
	tl := []series{{"answered OK", ok}, {"errors", errs}, {"cold starts", cold}, {"sent", issued}}
	if r.OpenLoop {
		tl = append(tl, series{"planned", planned})
	}
	p = newPlot("Throughput and cold starts: "+r.Title, "time since start (s)", "per second")
	p.Legend.Top = true
	p.Y.Min, p.Y.Max = 0, math.Max(float64(top)*1.35, 1) // room for the legend above the lines
	if err := addLines(p, tl); err != nil {
		return nil, err
	}
	path = prefix + "-timeline.png"
	if err := save(p, path); err != nil {
		return nil, err
	}
	files = append(files, path)
	return files, nil
}
