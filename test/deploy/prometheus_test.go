package deploy_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

var promParser = parser.NewParser(parser.Options{})

// loadRules parses deploy/prometheus/alerts.yml with Prometheus' own loader (what
// `promtool check rules` and the server run): unknown fields, bad durations, invalid
// expressions, invalid label names and unparsable annotation templates are errors.
func loadRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	path := filepath.Join(repoRoot(t), "deploy", "prometheus", "alerts.yml")
	groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return groups
}

// exprMetrics returns the metric names an expression selects.
func exprMetrics(t *testing.T, expr string) ([]string, parser.Expr) {
	t.Helper()
	e, err := promParser.ParseExpr(expr)
	if err != nil {
		t.Fatalf("%q: %v", expr, err)
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names, e
}

// quantileProblems reports histogram_quantile calls given an aggregation that drops the le
// label: their result would silently be empty.
func quantileProblems(e parser.Expr) []string {
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		call, ok := n.(*parser.Call)
		if !ok || call.Func.Name != "histogram_quantile" {
			return nil
		}
		inner := call.Args[1]
		for {
			if p, ok := inner.(*parser.ParenExpr); ok {
				inner = p.Expr
				continue
			}
			break
		}
		agg, ok := inner.(*parser.AggregateExpr)
		if !ok || agg.Without || !slices.Contains(agg.Grouping, "le") {
			out = append(out, "histogram_quantile needs `sum by (..., le)` of a _bucket rate: "+call.String())
		}
		return nil
	})
	return out
}

func checkQuantiles(t *testing.T, where string, e parser.Expr) {
	t.Helper()
	for _, p := range quantileProblems(e) {
		t.Errorf("%s: %s", where, p)
	}
}

func TestAlertRules(t *testing.T) {
	groups := loadRules(t)
	recorded := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	runbook := headingAnchors(t, "docs/runbook.md")
	alerts := map[string]bool{}
	used := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			names, e := exprMetrics(t, r.Expr)
			checkQuantiles(t, name, e)
			for _, n := range names {
				base, ok := metricSeries(n)
				switch {
				case ok:
					used[base] = true
				case recorded[n] || (externalMetrics[n] && r.Alert != ""):
				default:
					t.Errorf("%s: %s is neither a recsys metric (test/deploy catalog) nor a recording rule of this file", name, n)
				}
			}
			if r.Record != "" {
				// level:metric:operations (Prometheus naming practice) keeps recorded series apart.
				if strings.Count(r.Record, ":") != 2 || !strings.HasPrefix(r.Record, "recsys:") {
					t.Errorf("recording rule %s: want recsys:<metric>:<operation>", r.Record)
				}
				continue
			}
			if alerts[r.Alert] {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts[r.Alert] = true
			if sev := r.Labels["severity"]; sev != "page" && sev != "ticket" {
				t.Errorf("%s: severity %q, want page or ticket", r.Alert, sev)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: annotation %s missing", r.Alert, a)
				}
			}
			want := "docs/runbook.md#" + strings.ToLower(r.Alert)
			if r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !runbook[strings.ToLower(r.Alert)] {
				t.Errorf("%s: docs/runbook.md has no section titled %s", r.Alert, r.Alert)
			}
		}
	}
	// The brief's list: SLA burn, outbox backlog age, dead rows, consumer lag, DLQ growth,
	// readiness.
	for _, m := range []string{"reco_api_requests_total", "reco_api_latency_ms", "reco_outbox_backlog_oldest_lag_ms",
		"reco_outbox_backlog_events", "reco_feature_consumer_partition_lag", "reco_feature_consumer_dlq_events_total"} {
		if !used[m] {
			t.Errorf("no rule uses %s", m)
		}
	}
	for _, a := range []string{"RecsysAPINotReady", "RecsysPodNotReady"} {
		if !alerts[a] {
			t.Errorf("readiness alert %s missing", a)
		}
	}
	// Every alert section of the runbook belongs to an alert that exists.
	for anchor := range runbook {
		if looksLikeAlert(anchor) && !alerts[alertByAnchor(alerts, anchor)] {
			t.Errorf("docs/runbook.md section #%s has no alert in deploy/prometheus/alerts.yml", anchor)
		}
	}
}

var alertSection = regexp.MustCompile(`^(reco|outbox|relay|feature|recsys|ingest)[a-z0-9]+$`)

func looksLikeAlert(anchor string) bool { return alertSection.MatchString(anchor) }

func alertByAnchor(alerts map[string]bool, anchor string) string {
	for a := range alerts {
		if strings.ToLower(a) == anchor {
			return a
		}
	}
	return ""
}

// headingAnchors returns the GitHub anchors of a Markdown file's headings.
func headingAnchors(t *testing.T, rel string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	strip := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(string(readFile(t, rel)), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		h = strip.ReplaceAllString(h, "")
		out[strings.ReplaceAll(h, " ", "-")] = true
	}
	return out
}

// Grafana variables are replaced by values that keep the query valid PromQL.
var grafanaVars = regexp.MustCompile(`\$(__rate_interval|__interval|__range)\b|\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

func expandGrafana(expr string, defined map[string]bool) (string, []string) {
	var undefined []string
	out := grafanaVars.ReplaceAllStringFunc(expr, func(v string) string {
		m := grafanaVars.FindStringSubmatch(v)
		if m[1] != "" {
			return "5m"
		}
		if !defined[m[2]] {
			undefined = append(undefined, m[2])
		}
		return ".*"
	})
	return out, undefined
}

type dashPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource json.RawMessage          `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		RefID      string          `json:"refId"`
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashPanel `json:"panels"`
}

func TestGrafanaDashboard(t *testing.T) {
	var d dashboard
	if err := json.Unmarshal(readFile(t, "deploy/grafana/dashboard.json"), &d); err != nil {
		t.Fatalf("deploy/grafana/dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title (stable links, provisioning)")
	}
	defined := map[string]bool{}
	for _, v := range d.Templating.List {
		defined[v.Name] = true
	}
	if !defined["datasource"] {
		t.Error("no datasource variable: the dashboard would be bound to one Prometheus")
	}
	var all []dashPanel
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)

	ids := map[int]bool{}
	used := map[string]bool{}
	queries := 0
	for _, p := range all {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("%s: id missing or not unique", where)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%s: gridPos %+v", where, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		if !strings.Contains(string(p.Datasource), "${datasource}") {
			t.Errorf("%s: datasource %s, want ${datasource}", where, p.Datasource)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if refs[tg.RefID] || tg.RefID == "" {
				t.Errorf("%s: refId %q missing or repeated", where, tg.RefID)
			}
			refs[tg.RefID] = true
			expr, undefined := expandGrafana(tg.Expr, defined)
			if len(undefined) > 0 {
				t.Errorf("%s: undefined variables %v", where, undefined)
			}
			names, e := exprMetrics(t, expr)
			checkQuantiles(t, where, e)
			if len(names) == 0 {
				t.Errorf("%s: query %q selects no metric", where, tg.Expr)
			}
			for _, n := range names {
				base, ok := metricSeries(n)
				if !ok {
					t.Errorf("%s: %s is not a series recsys exports (test/deploy catalog)", where, n)
				}
				used[base] = true
			}
			queries++
		}
	}
	// What the dashboard must show (request rate, latency, errors, outbox, lag, freshness, DLQ).
	for _, m := range []string{"recsys_http_requests_total", "recsys_http_request_duration_seconds", "reco_api_latency_ms",
		"reco_api_requests_total", "reco_outbox_backlog_events", "reco_outbox_backlog_oldest_lag_ms",
		"reco_feature_consumer_partition_lag", "reco_watch_event_to_feature_latency_ms", "reco_feature_consumer_dlq_backlog"} {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
	if queries < 10 {
		t.Errorf("only %d queries checked", queries)
	}
	var unused []string
	for m := range recsysMetrics {
		if !used[m] {
			unused = append(unused, m)
		}
	}
	sort.Strings(unused)
	t.Logf("catalog metrics not on the dashboard (alerts or reserve): %v", unused)
}

func TestLintersCatchMistakes(t *testing.T) {
	// The PromQL checks above must be able to fail.
	_, e := exprMetrics(t, `histogram_quantile(0.99, sum(rate(reco_api_latency_ms_bucket[5m])))`)
	if len(quantileProblems(e)) != 1 {
		t.Error("histogram_quantile without le was not reported")
	}
	if _, ok := metricSeries("reco_api_latency_ms"); ok {
		t.Error("a histogram's bare name was accepted as a series")
	}
	if _, ok := metricSeries("reco_outbox_backlog_events_bucket"); ok {
		t.Error("a gauge's _bucket was accepted")
	}
	if _, errs := rulefmt.Parse([]byte("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up ==\n    fore: 5m\n"), false,
		model.UTF8Validation, promParser, slog.New(slog.DiscardHandler)); len(errs) == 0 {
		t.Error("a rule with a bad expression and an unknown field was accepted")
	}
	if got, undef := expandGrafana(`rate(x{namespace=~"$namespace"}[$__rate_interval])`, map[string]bool{}); got != `rate(x{namespace=~".*"}[5m])` || !slices.Equal(undef, []string{"namespace"}) {
		t.Errorf("expandGrafana = %q %v", got, undef)
	}
}
