package loadgen

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"sort"
	"strings"
)

// WriteHTML writes a self-contained page (no script, no external file): the summary, the
// per-endpoint table, latency over time (p50/p95/p99 per second, errors marked) and the
// latency-by-percentile plot on the usual 1/(1-q) axis, both as inline SVG.
func (r *Report) WriteHTML(w io.Writer) error {
	data := struct {
		R         *Report
		Headline  string
		Timeline  template.HTML
		Percentle template.HTML
		Endpoints []endpointRow
	}{R: r, Headline: r.Headline(), Timeline: template.HTML(timelineSVG(r.Timeline)), Percentle: template.HTML(percentileSVG(r.Percentiles))}
	names := make([]string, 0, len(r.Endpoints))
	for n := range r.Endpoints {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range append(names, "all") {
		s := r.Summary
		if n != "all" {
			s = r.Endpoints[n]
		}
		data.Endpoints = append(data.Endpoints, endpointRow{Name: n, S: s, P50: fmtMs(s.LatencyMs.P50), P90: fmtMs(s.LatencyMs.P90),
			P95: fmtMs(s.LatencyMs.P95), P99: fmtMs(s.LatencyMs.P99), P999: fmtMs(s.LatencyMs.P999), Max: fmtMs(s.LatencyMs.Max), Mean: fmtMs(s.LatencyMs.Mean)})
	}
	if err := pageTmpl.Execute(w, data); err != nil {
		return fmt.Errorf("render load report: %w", err)
	}
	return nil
}

type endpointRow struct {
	Name                                string
	S                                   Summary
	P50, P90, P95, P99, P999, Max, Mean string
}

func fmtMs(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *v)
}

var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>recsys load report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#17803d;font-weight:bold}.fail{color:#c0262d;font-weight:bold}
svg{background:#fff;border:1px solid #ddd;margin-bottom:16px}
</style></head><body>
<h1>recsys load report</h1>
<p class="{{.R.Verdict}}">{{.Headline}}</p>
<p>{{.R.Config.Description}} · base URL {{.R.Config.BaseURL}} · {{.R.Config.Mode}}{{if gt .R.Config.Rate 0.0}} at {{.R.Config.Rate}} op/s{{end}} · concurrency {{.R.Config.Concurrency}} · max send delay {{.R.MaxSendDelayMs}} ms</p>
<h2>Requests and latency (ms, HDR histogram, 3 significant digits)</h2>
<table><tr><th>endpoint</th><th>requests</th><th>failed</th><th>error %</th><th>req/s</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>
{{range .Endpoints}}<tr><td>{{.Name}}</td><td>{{.S.RequestsTotal}}</td><td>{{.S.RequestsFailed}}</td><td>{{.S.ErrorRatePct}}</td><td>{{.S.RPS}}</td><td>{{.P50}}</td><td>{{.P90}}</td><td>{{.P95}}</td><td>{{.P99}}</td><td>{{.P999}}</td><td>{{.Max}}</td><td>{{.Mean}}</td></tr>
{{end}}</table>
{{if .R.Summary.Errors}}<h2>Errors</h2><table><tr><th>error</th><th>count</th></tr>{{range $k, $v := .R.Summary.Errors}}<tr><td>{{$k}}</td><td>{{$v}}</td></tr>{{end}}</table>{{end}}
<h2>Latency over time</h2>
{{.Timeline}}
<h2>Latency by percentile</h2>
{{.Percentle}}
</body></html>
`))

const (
	plotW, plotH = 860, 320
	padL, padR   = 64, 150
	padT, padB   = 16, 40
)

var seriesColors = []string{"#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b"}

// niceMax rounds v up to 1, 2 or 5 times a power of ten, for readable axes.
func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

type line struct {
	name string
	xs   []float64
	ys   []float64
}

func svgPlot(b *strings.Builder, title, xLabel string, lines []line, xMax float64, xTicks []float64, xTickLabel func(float64) string, errMarks []float64) {
	yMax := 0.0
	for _, l := range lines {
		for _, y := range l.ys {
			yMax = math.Max(yMax, y)
		}
	}
	yMax = niceMax(yMax)
	if xMax <= 0 {
		xMax = 1
	}
	iw, ih := float64(plotW-padL-padR), float64(plotH-padT-padB)
	px := func(x float64) float64 { return float64(padL) + x/xMax*iw }
	py := func(y float64) float64 { return float64(padT) + ih - y/yMax*ih }
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s">`, plotW, plotH, plotW, plotH, template.HTMLEscapeString(title))
	fmt.Fprintf(b, `<g font-size="11" fill="#555">`)
	for i := 0; i <= 5; i++ {
		y := yMax * float64(i) / 5
		fmt.Fprintf(b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`,
			padL, float64(padL)+iw, py(y), py(y), padL-6, py(y)+4, trimFloat(y))
	}
	for _, x := range xTicks {
		fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#eee"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`,
			px(x), px(x), padT, float64(padT)+ih, px(x), float64(padT)+ih+16, xTickLabel(x))
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`, float64(padL)+iw/2, plotH-4, template.HTMLEscapeString(xLabel))
	fmt.Fprintf(b, `<text x="14" y="%.1f" transform="rotate(-90 14 %.1f)" text-anchor="middle">latency (ms)</text></g>`, float64(padT)+ih/2, float64(padT)+ih/2)
	for _, x := range errMarks {
		fmt.Fprintf(b, `<rect x="%.1f" y="%d" width="3" height="%.1f" fill="#c0262d" opacity="0.25"><title>errors</title></rect>`, px(x)-1.5, padT, ih)
	}
	for i, l := range lines {
		color := seriesColors[i%len(seriesColors)]
		var pts []string
		for j := range l.xs {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(l.xs[j]), py(l.ys[j])))
		}
		fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.8" points="%s"><title>%s</title></polyline>`, color, strings.Join(pts, " "), template.HTMLEscapeString(l.name))
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="12" height="3" fill="%s"/><text x="%d" y="%d" font-size="12">%s</text>`,
			plotW-padR+12, padT+10+i*18, color, plotW-padR+30, padT+15+i*18, template.HTMLEscapeString(l.name))
	}
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#999"/></svg>`, padL, padT, iw, ih)
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.3f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

func timelineSVG(tl []TimelinePoint) string {
	var b strings.Builder
	if len(tl) == 0 {
		return "<p>No requests were recorded.</p>"
	}
	p50, p95, p99 := line{name: "p50"}, line{name: "p95"}, line{name: "p99"}
	var errs []float64
	for _, t := range tl {
		if t.Requests == 0 {
			continue
		}
		x := float64(t.Second) + 0.5
		p50.xs, p50.ys = append(p50.xs, x), append(p50.ys, t.P50Ms)
		p95.xs, p95.ys = append(p95.xs, x), append(p95.ys, t.P95Ms)
		p99.xs, p99.ys = append(p99.xs, x), append(p99.ys, t.P99Ms)
		if t.Errors > 0 {
			errs = append(errs, x)
		}
	}
	xMax := float64(len(tl))
	step := niceMax(xMax / 8)
	var ticks []float64
	for x := 0.0; x <= xMax; x += step {
		ticks = append(ticks, x)
	}
	svgPlot(&b, "latency over time", "seconds since start (red bands: seconds with errors)", []line{p50, p95, p99}, xMax, ticks, trimFloat, errs)
	return b.String()
}

// percentileSVG plots latency against -log10(1-q): 0 = p0, 1 = p90, 2 = p99, 3 = p99.9.
func percentileSVG(curves map[string][]PercentilePoint) string {
	var b strings.Builder
	names := make([]string, 0, len(curves))
	for n := range curves {
		names = append(names, n)
	}
	sort.Strings(names)
	var lines []line
	xMax := 1.0
	for _, n := range names {
		l := line{name: n}
		for _, p := range curves[n] {
			q := p.Percentile / 100
			if q >= 1 {
				// The max has no finite position; draw it one decade past the last point.
				if len(l.xs) > 0 {
					l.xs, l.ys = append(l.xs, l.xs[len(l.xs)-1]+0.3), append(l.ys, p.LatencyMs)
				}
				continue
			}
			l.xs, l.ys = append(l.xs, -math.Log10(1-q)), append(l.ys, p.LatencyMs)
		}
		for _, x := range l.xs {
			xMax = math.Max(xMax, x)
		}
		if len(l.xs) > 0 {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "<p>No requests were recorded.</p>"
	}
	xMax = math.Ceil(xMax)
	var ticks []float64
	for x := 0.0; x <= xMax; x++ {
		ticks = append(ticks, x)
	}
	label := func(x float64) string {
		if x == 0 {
			return "0%"
		}
		return trimFloat(100*(1-math.Pow(10, -x))) + "%"
	}
	svgPlot(&b, "latency by percentile", "percentile (log scale of 1/(1-q))", lines, xMax, ticks, label, nil)
	return b.String()
}
