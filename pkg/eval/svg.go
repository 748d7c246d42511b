package eval

import (
	"fmt"
	"html"
	"math"
	"strings"
)

var palette = []string{"#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"}

// PlotSVG draws each method's Curve (HR per equal slice of the replay) as a line chart, with
// a dashed line where the held-out part starts (holdoutFrom in [0,1]; outside: none). It is
// hand-written SVG so the binary needs no plotting dependency.
func PlotSVG(title string, holdoutFrom float64, results []MethodResult) string {
	const (
		w, h                     = 940.0, 460.0
		left, right, top, bottom = 64.0, 290.0, 40.0, 50.0
	)
	pw, ph := w-left-right, h-top-bottom
	ymax := 0.0
	points := 0
	for _, r := range results {
		for _, v := range r.Curve {
			ymax = math.Max(ymax, v)
		}
		points = max(points, len(r.Curve))
	}
	// Round the axis up to a tidy step.
	step := 0.05
	if ymax > 0.5 {
		step = 0.1
	}
	ymax = math.Max(step, math.Ceil(ymax/step)*step)
	x := func(i int) float64 {
		if points <= 1 {
			return left
		}
		return left + pw*(float64(i)+0.5)/float64(points)
	}
	y := func(v float64) float64 { return top + ph*(1-v/ymax) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(title))
	for v := 0.0; v <= ymax+1e-9; v += step {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), left+pw, y(v))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%.2f</text>`+"\n", left-6, y(v)+4, v)
	}
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 1} {
		px := left + pw*f
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.0f%%</text>`+"\n", px, top+ph+18, f*100)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">position in the replay (events)</text>`+"\n", left+pw/2, h-10)
	fmt.Fprintf(&b, `<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle">HR@k per slice</text>`+"\n", top+ph/2)
	fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)
	if holdoutFrom > 0 && holdoutFrom < 1 {
		hx := left + pw*holdoutFrom
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#555" stroke-dasharray="5,4"/>`+"\n", hx, top, hx, top+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#555">held-out →</text>`+"\n", hx+4, top+14)
	}
	for i, r := range results {
		col := palette[i%len(palette)]
		var pts []string
		for j, v := range r.Curve {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(j), y(v)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		ly := top + 10 + float64(i)*20
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", left+pw+12, ly, left+pw+32, ly, col)
		label := r.Method
		if r.Holdout != nil {
			label = fmt.Sprintf("%s (held-out %.3f)", r.Method, r.Holdout.HR)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", left+pw+38, ly+4, html.EscapeString(label))
	}
	b.WriteString("</svg>\n")
	return b.String()
}
