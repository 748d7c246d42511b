package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"

	"recsys/cmd"
	"recsys/pkg/logging"
)

// operatorDocs are the documents whose `recsys ...` commands operators copy and run.
var operatorDocs = []string{"README.md", "docs/architecture.md", "docs/runbook.md", "docs/rollback.md", "docs/scaling.md",
	"docs/operator-tools.md", "docs/evaluation.md", "deploy/k8s/README.md"}

var (
	fence      = regexp.MustCompile("(?s)```[a-z]*\n(.*?)```")
	inlineCode = regexp.MustCompile("`([^`\n]+)`")
	recsysCall = regexp.MustCompile(`(?:^|[\s(])recsys ([a-z][^\n|;&#)'"]*)`)
	oneoffArgs = regexp.MustCompile(`ARGS='("[a-z][^']*)'`)
)

// docCommands returns every `recsys ...` invocation in the code blocks and code spans of a
// Markdown text.
func docCommands(text string) []string {
	var code []string
	for _, m := range fence.FindAllStringSubmatch(text, -1) {
		code = append(code, strings.Split(m[1], "\n")...)
	}
	for _, m := range inlineCode.FindAllStringSubmatch(fence.ReplaceAllString(text, ""), -1) {
		code = append(code, m[1])
	}
	var out []string
	for _, c := range code {
		// The one-off Job's ARGS='"relay","replay",...' (docs/rollback.md) are a recsys command too.
		for _, m := range oneoffArgs.FindAllStringSubmatch(c, -1) {
			out = append(out, strings.Join(strings.Split(strings.ReplaceAll(m[1], `"`, ""), ","), " "))
		}
		for _, m := range recsysCall.FindAllStringSubmatchIndex(c, -1) {
			// `kubectl -n recsys ...`: the namespace, not the binary.
			if before := strings.TrimSpace(c[:m[0]+1]); strings.HasSuffix(before, "-n") || strings.HasSuffix(before, "--namespace") {
				continue
			}
			out = append(out, strings.TrimSpace(c[m[2]:m[3]]))
		}
	}
	return out
}

// checkInvocation resolves a command line against the real command tree and reports a
// missing command or flag.
func checkInvocation(line string) string {
	var args []string
	for _, a := range strings.Fields(line) {
		// `recsys items block\|unblock` (a table's escaped alternatives), `recsys migrate ...`.
		if a = strings.TrimSuffix(a, `\`); a != "..." && a != "" {
			args = append(args, a)
		}
	}
	root := cmd.NewRootCmd()
	c, rest, err := root.Find(args)
	if err != nil || c == root {
		return "no such command"
	}
	c.InitDefaultHelpFlag()
	// A group such as `features` runs nothing: cobra hands a misspelt subcommand to it as an
	// argument instead of failing to find it.
	if c.HasSubCommands() && !c.Runnable() && slices.ContainsFunc(rest, func(a string) bool { return !strings.HasPrefix(a, "-") }) {
		return "no such command"
	}
	for _, a := range rest {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if c.Flags().Lookup(name) == nil && c.InheritedFlags().Lookup(name) == nil {
			return "recsys " + c.CommandPath() + " has no flag --" + name
		}
	}
	return ""
}

func TestDocumentedCommandsExist(t *testing.T) {
	total := 0
	for _, doc := range operatorDocs {
		for _, line := range docCommands(string(readFile(t, doc))) {
			total++
			if problem := checkInvocation(line); problem != "" {
				t.Errorf("%s: `recsys %s`: %s", doc, line, problem)
			}
		}
	}
	if total < 20 {
		t.Errorf("only %d documented recsys commands found; the extraction is broken", total)
	}
}

func TestDocCommandCheckCatchesMistakes(t *testing.T) {
	text := "Run `recsys relay replay --status dead --dry-run`.\n```sh\nrecsys migrate down 1 # revert\nkubectl exec x -- recsys consume replay-dlq --limt 5\nrecsys rebuild\nkubectl -n recsys rollout undo x\nrecsys features rebuilt\n```\n" +
		"As a Job: `ARGS='\"relay\",\"replay\",\"--stauts\",\"dead\"' oneoff`.\n"
	got := docCommands(text)
	want := []string{"migrate down 1", "consume replay-dlq --limt 5", "rebuild", "features rebuilt", "relay replay --status dead --dry-run",
		"relay replay --stauts dead"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("docCommands = %q, want %q", got, want)
	}
	for line, bad := range map[string]bool{got[0]: false, got[1]: true, got[2]: true, got[3]: true, got[4]: false, got[5]: true} {
		if p := checkInvocation(line); (p != "") != bad {
			t.Errorf("checkInvocation(%q) = %q, want a problem: %t", line, p, bad)
		}
	}
}

// docMetric is a metric name in an operator document's code: a word starting reco_ or
// recsys_ (not a recording rule's recsys:...:... part, not a wildcard such as reco_*).
var docMetric = regexp.MustCompile(`(^|[^:A-Za-z0-9_])((?:reco|recsys)_[a-z0-9_]*[a-z0-9])([^*:A-Za-z0-9_<]|$)`)

var scratchDatabase = regexp.MustCompile(`_[0-9]+$`)

// docMetrics returns the metric names in the code blocks and code spans of a Markdown text.
func docMetrics(text string) []string {
	var code []string
	for _, m := range fence.FindAllStringSubmatch(text, -1) {
		code = append(code, m[1])
	}
	for _, m := range inlineCode.FindAllStringSubmatch(fence.ReplaceAllString(text, ""), -1) {
		code = append(code, m[1])
	}
	var out []string
	for _, c := range code {
		for _, m := range docMetric.FindAllStringSubmatch(c, -1) {
			// recsys_bench_analytics_10000000: a scratch database, not a metric.
			if !scratchDatabase.MatchString(m[2]) {
				out = append(out, m[2])
			}
		}
	}
	return out
}

// exportedByCode reports whether the program exports name (a histogram's series by its
// _bucket, _sum or _count name).
func exportedByCode(src, name string) bool {
	for _, n := range []string{name, strings.TrimSuffix(name, "_bucket"), strings.TrimSuffix(name, "_sum"), strings.TrimSuffix(name, "_count")} {
		if regexp.MustCompile(`\b` + regexp.QuoteMeta(n) + "(\"|`|\\{|\\s*\\+)").MatchString(src) {
			return true
		}
	}
	return false
}

// The metrics the runbook and the other operator documents tell operators to query exist:
// a query for a renamed metric returns nothing, which reads as "no problem" mid-incident.
func TestDocumentedMetricsExist(t *testing.T) {
	src := goSource(t)
	total := 0
	for _, doc := range operatorDocs {
		for _, name := range docMetrics(string(readFile(t, doc))) {
			total++
			if !exportedByCode(src, name) {
				t.Errorf("%s: metric %s is exported by no code under modules/, pkg/ or cmd/", doc, name)
			}
		}
	}
	if total < 20 {
		t.Errorf("only %d documented metric names found; the extraction is broken", total)
	}
}

func TestDocMetricCheckCatchesMistakes(t *testing.T) {
	text := "Query `sum by (pod) (rate(reco_api_requests_total{status_family=\"5xx\"}[5m]))`, " +
		"`recsys:reco_error_ratio:rate5m`, the `reco_*` family, `recsys_<module>_*` and\n```promql\n" +
		"histogram_quantile(0.99, sum by (le) (rate(reco_api_latency_ms_bucket[5m])))\nrate(recsys_relay_publishd_total[5m])\n```\n" +
		"The database `recsys_bench_analytics_10000000`.\n"
	got := docMetrics(text)
	want := []string{"reco_api_latency_ms_bucket", "recsys_relay_publishd_total", "reco_api_requests_total"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("docMetrics = %q, want %q", got, want)
	}
	src := goSource(t)
	for name, ok := range map[string]bool{got[0]: true, got[1]: false, got[2]: true} {
		if exportedByCode(src, name) != ok {
			t.Errorf("exportedByCode(%q) = %t, want %t", name, !ok, ok)
		}
	}
}

// docLevel is a jq filter on a log line's level in an operator document.
var docLevel = regexp.MustCompile(`\.level\s*[!=]=\s*"([^"]*)"`)

// The level names the documents filter log lines by are the ones recsys writes (Python's, as
// the original's lines, see pkg/logging): a filter on "WARN" matches no line at all, and the
// query looks like a clean bill of health.
func TestDocumentedLogLevelsExist(t *testing.T) {
	written := map[string]bool{}
	var b bytes.Buffer
	log, err := logging.New(&b, "json", slog.LevelDebug)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		b.Reset()
		log.Log(context.Background(), l, "x")
		var line struct{ Level string }
		if err := json.Unmarshal(b.Bytes(), &line); err != nil {
			t.Fatal(err)
		}
		written[line.Level] = true
	}
	total := 0
	for _, doc := range operatorDocs {
		for _, m := range docLevel.FindAllStringSubmatch(string(readFile(t, doc)), -1) {
			total++
			if !written[m[1]] {
				t.Errorf("%s: %s: recsys writes no level %q (it writes %v)", doc, m[0], m[1], slices.Sorted(maps.Keys(written)))
			}
		}
	}
	if total == 0 {
		t.Error("no level filter found in the operator documents; the extraction is broken")
	}
}

var (
	// logFilter is the jq program a document pipes log lines into (`... logs ... | jq -c '...'`).
	logFilter = regexp.MustCompile(`\blogs\b.*\|\s*jq(?:\s+-\w+)*\s+'([^']*)'`)
	// jqField is a top-level field a jq program reads (.level, .message; not .a.b's b).
	jqField = regexp.MustCompile(`(?:^|[^\w\].])\.([a-z_]+)`)
)

// The fields the documents' jq filters read from log lines are ones recsys writes: a filter
// on .msg (slog's default name; recsys writes the contract's "message") fails on every line
// with "null cannot be matched", and the operator sees an error instead of the warnings.
func TestDocumentedLogFieldsExist(t *testing.T) {
	var b bytes.Buffer
	log, err := logging.New(&b, "json", slog.LevelDebug)
	if err != nil {
		t.Fatal(err)
	}
	log.Warn("x", "err", "e", "module", "m")
	var line map[string]any
	if err := json.Unmarshal(b.Bytes(), &line); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, doc := range operatorDocs {
		for _, l := range codeLines(string(readFile(t, doc))) {
			for _, m := range logFilter.FindAllStringSubmatch(l, -1) {
				for _, f := range jqField.FindAllStringSubmatch(m[1], -1) {
					total++
					if _, ok := line[f[1]]; !ok {
						t.Errorf("%s: %s: recsys writes no field %q in its log lines (it writes %v)", doc, m[0], f[1], slices.Sorted(maps.Keys(line)))
					}
				}
			}
		}
	}
	if total == 0 {
		t.Error("no jq filter of log lines found in the operator documents; the extraction is broken")
	}
}
