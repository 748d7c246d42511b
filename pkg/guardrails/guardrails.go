// Package guardrails is the logic behind `recsys guardrails`: it compares a KPI snapshot
// (/analytics/baseline), the service's targets (/contract) and the /reco latency window
// (/metrics/reco) and gives each check a status. The report, the console lines and the exit
// rule are those of the original check_guardrails tool, so pipelines that parse them keep
// working.
//
// One thing is added on purpose: a targets file (config/guardrails.ci.json) may replace the
// contract's targets. The contract's KPI targets are product goals for real users; synthetic
// CI traffic cannot meet them, which made the original gate either always red or ignored. A
// targets file states what a healthy build must reach under the traffic CI actually sends, and
// every check records where its target came from.
package guardrails

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// Statuses of a check.
const (
	StatusPass    = "pass"
	StatusFail    = "fail"
	StatusUnknown = "unknown"
	StatusSkipped = "skipped"
)

// DefaultMinSLASamples is the contract's default for --min-sla-samples.
const DefaultMinSLASamples = 100

// Check is one evaluated guardrail.
type Check struct {
	Name       string   `json:"name"`
	Status     string   `json:"status"`
	Observed   *float64 `json:"observed"`
	Target     *float64 `json:"target"`
	Comparator string   `json:"comparator"`
	Unit       string   `json:"unit"`
	Message    string   `json:"message,omitempty"`
	// TargetSource says where the target came from: "contract" or "targets file".
	TargetSource string `json:"target_source,omitempty"`
}

// Summary counts the statuses.
type Summary struct {
	Passed        int `json:"passed"`
	Failed        int `json:"failed"`
	Unknown       int `json:"unknown"`
	Skipped       int `json:"skipped"`
	MinSLASamples int `json:"min_sla_samples"`
}

// Report is the tool's JSON report.
type Report struct {
	Checks  []Check `json:"checks"`
	Summary Summary `json:"summary"`
	// Sources names the inputs (files or URLs), for whoever reads an archived report.
	Sources map[string]string `json:"sources,omitempty"`
}

// OK reports whether the gate passes: no check failed and none is unknown (an unknown value
// must never let a deploy through).
func (r Report) OK() bool { return r.Summary.Failed == 0 && r.Summary.Unknown == 0 }

// Inputs are the three JSON documents; each must be a JSON object.
type Inputs struct {
	Baseline    map[string]any
	Contract    map[string]any
	RecoMetrics map[string]any
}

// Targets replace contract targets by check name (see the package doc).
type Targets struct {
	Description   string             `json:"description,omitempty"`
	MinSLASamples *int               `json:"min_sla_samples,omitempty"`
	Targets       map[string]float64 `json:"targets"`
	Notes         map[string]string  `json:"notes,omitempty"`
}

// CheckNames lists every check the tool knows, in report order (reco_latency_checks stands in
// for the two latency checks when the sample is too small).
var CheckNames = []string{"ctr_at_20_pct", "avg_watch_time_sec", "catalog_coverage_at_20_pct", "reco_p95_ms", "reco_p99_ms", "api_error_rate_pct"}

// ParseTargets decodes a targets file and rejects names that are not checks, so a typo does not
// silently leave the contract's target in force.
func ParseTargets(b []byte) (Targets, error) {
	var t Targets
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return Targets{}, fmt.Errorf("decode targets: %w", err)
	}
	for name, v := range t.Targets {
		known := false
		for _, n := range CheckNames {
			known = known || n == name
		}
		if !known {
			return Targets{}, fmt.Errorf("targets: unknown check %q (known: %s)", name, strings.Join(CheckNames, ", "))
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return Targets{}, fmt.Errorf("targets: %s is not a finite number", name)
		}
	}
	if t.MinSLASamples != nil && *t.MinSLASamples < 0 {
		return Targets{}, fmt.Errorf("targets: min_sla_samples must be >= 0, got %d", *t.MinSLASamples)
	}
	return t, nil
}

var numberRe = regexp.MustCompile(`[-+]?\d+(?:\.\d+)?`)

// Number extracts a number the way the original tool does: numbers as they are, null as
// missing, anything else as text whose first signed decimal number is used (">= 8%" -> 8).
func Number(v any) *float64 {
	switch x := v.(type) {
	case nil:
		return nil
	case float64:
		return &x
	case int:
		f := float64(x)
		return &f
	case int64:
		f := float64(x)
		return &f
	case json.Number:
		if f, err := x.Float64(); err == nil {
			return &f
		}
		return Number(string(x))
	case bool:
		return nil
	case string:
		m := numberRe.FindString(x)
		if m == "" {
			return nil
		}
		f, err := strconv.ParseFloat(m, 64)
		if err != nil {
			return nil
		}
		return &f
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return nil
		}
		return Number(string(b))
	}
}

func obj(m map[string]any, key string) map[string]any {
	v, _ := m[key].(map[string]any)
	return v
}

// Evaluate runs every check. minSamples below 0 counts as 0, as in the original.
func Evaluate(in Inputs, t *Targets, minSamples int) Report {
	if minSamples < 0 {
		minSamples = 0
	}
	metrics := in.Baseline
	if m := obj(in.Baseline, "metrics"); m != nil {
		metrics = m
	} else if _, present := in.Baseline["metrics"]; present {
		metrics = nil // "metrics": null or not an object: every KPI is missing
	}
	kpi := obj(in.Contract, "kpi_targets")
	sla := obj(in.Contract, "sla_targets")
	reco := in.RecoMetrics
	lat := obj(reco, "latency_ms")

	target := func(name string, fromContract any) (*float64, string) {
		if t != nil {
			if v, ok := t.Targets[name]; ok {
				return &v, "targets file"
			}
		}
		return Number(fromContract), "contract"
	}
	var r Report
	add := func(name string, observed any, contractTarget any, cmp, unit string) {
		tv, src := target(name, contractTarget)
		c := Check{Name: name, Observed: Number(observed), Target: tv, Comparator: cmp, Unit: unit, TargetSource: src}
		c.Status = compare(c.Observed, c.Target, cmp)
		if c.Status == StatusUnknown {
			c.Message = "missing observed value or target"
		}
		r.Checks = append(r.Checks, c)
	}
	add("ctr_at_20_pct", metrics["ctr_at_20_pct"], kpi["ctr_at_20"], ">=", "pct")
	add("avg_watch_time_sec", metrics["avg_watch_time_sec"], kpi["avg_watch_time_sec"], ">=", "sec")
	add("catalog_coverage_at_20_pct", metrics["catalog_coverage_at_20_pct"], kpi["catalog_coverage_at_20"], ">=", "pct")
	samples := Number(reco["sample_size"])
	if samples != nil && *samples >= float64(minSamples) {
		add("reco_p95_ms", lat["p95"], sla["reco_p95_ms"], "<=", "ms")
		add("reco_p99_ms", lat["p99"], sla["reco_p99_ms"], "<=", "ms")
	} else {
		ms := float64(minSamples)
		msg := fmt.Sprintf("sample_size is below min_sla_samples=%d; latency checks skipped", minSamples)
		if samples == nil {
			msg = fmt.Sprintf("sample_size is missing; latency checks need at least %d samples", minSamples)
		}
		r.Checks = append(r.Checks, Check{Name: "reco_latency_checks", Status: StatusSkipped, Observed: samples,
			Target: &ms, Comparator: ">=", Unit: "samples", Message: msg})
	}
	add("api_error_rate_pct", reco["error_rate_pct"], sla["api_error_rate_pct"], "<=", "pct")

	r.Summary.MinSLASamples = minSamples
	for _, c := range r.Checks {
		switch c.Status {
		case StatusPass:
			r.Summary.Passed++
		case StatusFail:
			r.Summary.Failed++
		case StatusUnknown:
			r.Summary.Unknown++
		case StatusSkipped:
			r.Summary.Skipped++
		}
	}
	return r
}

func compare(observed, target *float64, cmp string) string {
	if observed == nil || target == nil {
		return StatusUnknown
	}
	ok := false
	switch cmp {
	case ">=":
		ok = *observed >= *target
	case "<=":
		ok = *observed <= *target
	}
	if ok {
		return StatusPass
	}
	return StatusFail
}

// pyFloat prints a number as Python prints a float (8.0, 0.125) and a missing one as None, so
// console lines read as the original tool's did.
func pyFloat(v *float64) string {
	if v == nil {
		return "None"
	}
	s := strconv.FormatFloat(*v, 'f', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return s
}

// Line is the console line of one check:
// "[STATUS] name: observed=… <cmp> target=… (unit)[; message]".
func (c Check) Line() string {
	s := fmt.Sprintf("[%s] %s: observed=%s %s target=%s (%s)", strings.ToUpper(c.Status), c.Name, pyFloat(c.Observed), c.Comparator, pyFloat(c.Target), c.Unit)
	if c.Message != "" {
		s += "; " + c.Message
	}
	return s
}

// Print writes one line per check and the summary line.
func (r Report) Print(w io.Writer) {
	for _, c := range r.Checks {
		fmt.Fprintln(w, c.Line())
	}
	fmt.Fprintf(w, "[SUMMARY] passed=%d failed=%d unknown=%d skipped=%d\n", r.Summary.Passed, r.Summary.Failed, r.Summary.Unknown, r.Summary.Skipped)
}
