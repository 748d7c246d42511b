// Package deploy_test validates the packaging and operations files offline, with the same
// loaders the tools use: compose.yaml with the compose-spec loader, deploy/k8s with kustomize
// and strict decoding into the Kubernetes API types, the Prometheus rules with Prometheus'
// own rule parser, the Grafana dashboard's queries with the PromQL parser. The environment
// every container gets is checked against the recsys binary's own flag set, and the metric
// names against the code, so the files cannot drift from the program.
package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	"recsys/cmd"
	"recsys/pkg/flagenv"

	_ "recsys/modules/all" // the role commands list the registered modules' flags
)

// repoRoot is the repository root, found from this file's location so the tests run from any
// working directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test file")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func readFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runtimeEnv are variables read by the Go runtime, not by recsys' flags.
var runtimeEnv = map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true, "GOGC": true, "TZ": true}

// envCheck is the result of binding a container's environment to the flags of its command.
type envCheck struct {
	known   map[string]bool // every variable the command reads
	unknown []string        // variables in env the command does not read (sorted)
	err     error           // a value that does not parse, as recsys would report it at start
}

// checkCommandEnv resolves `recsys args...` in the real command tree and binds env to its
// flags exactly as the binary does at start (flagenv.Bind: RECSYS_<FLAG>, then legacy
// aliases), reporting the variables it does not know and the values it rejects.
func checkCommandEnv(t testing.TB, args []string, env map[string]string) envCheck {
	t.Helper()
	root := cmd.NewRootCmd()
	c, rest, err := root.Find(args)
	if err != nil || c == root {
		t.Fatalf("recsys %s: not a recsys command (%v)", strings.Join(args, " "), err)
	}
	if err := c.ParseFlags(rest); err != nil {
		t.Fatalf("recsys %s: %v", strings.Join(args, " "), err)
	}
	if extra := c.Flags().Args(); len(extra) > 0 && c.Args != nil {
		if err := c.Args(c, extra); err != nil {
			t.Fatalf("recsys %s: %v", strings.Join(args, " "), err)
		}
	}
	fs := c.Flags()
	res := envCheck{known: map[string]bool{}}
	// Bind asks the lookup for every name it accepts; a lookup that finds nothing lists them.
	if err := flagenv.Bind(fs, func(name string) (string, bool) { res.known[name] = true; return "", false }); err != nil {
		t.Fatal(err)
	}
	for k := range env {
		if !res.known[k] && !runtimeEnv[k] {
			res.unknown = append(res.unknown, k)
		}
	}
	sort.Strings(res.unknown)
	res.err = flagenv.Bind(fs, func(name string) (string, bool) { v, ok := env[name]; return v, ok })
	return res
}

// metricKind is how a metric is exported; histograms expose _bucket, _sum and _count.
type metricKind int

const (
	counter metricKind = iota
	gauge
	histogram
)

// recsysMetrics is every metric the dashboard and the alert rules may use: contract names
// (api-contract §9.1, kept verbatim) and recsys' own. TestMetricCatalogMatchesCode keeps it
// honest against the code.
var recsysMetrics = map[string]metricKind{
	// pkg/httpx: every route of every process.
	"recsys_http_requests_total":           counter,
	"recsys_http_request_duration_seconds": histogram,
	// pkg/httpx's admission limit (label limiter).
	"recsys_http_shed_total":                counter,
	"recsys_http_admitted_after_wait_total": counter,
	"recsys_http_in_flight":                 gauge,
	"recsys_http_queued":                    gauge,
	"recsys_http_max_in_flight":             gauge,
	// pkg/httpx's connection cap (--http.max-connections).
	"recsys_http_connections":                  gauge,
	"recsys_http_connection_waits_total":       counter,
	"recsys_http_connection_idle_closed_total": counter,
	// pkg/httpx's API keys with --http.rate-limit-scope=cluster.
	"recsys_http_rate_limit_fallback_total": counter,
	// reco (contract).
	"reco_api_requests_total": counter,
	"reco_api_latency_ms":     histogram,
	"reco_stage_latency_ms":   histogram,
	// reco (recsys).
	"recsys_reco_served_total":            counter,
	"recsys_reco_unavailable_total":       counter,
	"recsys_reco_breaker_open":            gauge,
	"recsys_reco_autolog_dropped_total":   counter,
	"recsys_reco_autolog_queue_depth":     gauge,
	"recsys_reco_user_read_through_total": counter,
	// ingest.
	"recsys_ingest_commit_duration_seconds": histogram,
	"recsys_ingest_commit_errors_total":     counter,
	"recsys_ingest_retention_errors_total":  counter,
	// relay (contract).
	"reco_outbox_relay_published_total": counter,
	"reco_outbox_relay_failed_total":    counter,
	"reco_outbox_relay_errors_total":    counter,
	"reco_outbox_relay_event_lag_ms":    histogram,
	"reco_outbox_backlog_events":        gauge,
	"reco_outbox_backlog_oldest_lag_ms": gauge,
	// relay (recsys).
	"recsys_relay_commit_to_ack_seconds": histogram,
	"recsys_relay_dead_total":            counter,
	"recsys_relay_kafka_unreachable":     gauge,
	// consumer (contract).
	"reco_feature_consumer_processed_total":       counter,
	"reco_feature_consumer_errors_total":          counter,
	"reco_feature_consumer_partition_lag":         gauge,
	"reco_feature_consumer_dlq_events_total":      counter,
	"reco_feature_consumer_dlq_backlog":           gauge,
	"reco_feature_consumer_dlq_oldest_pending_ms": gauge,
	"reco_watch_event_to_feature_latency_ms":      histogram,
	// consumer (recsys).
	"recsys_consumer_accepted_to_visible_seconds": histogram,
	"recsys_consumer_redis_write_failures_total":  counter,
}

// externalMetrics may appear in alert rules only: Prometheus' own scrape health and
// kube-state-metrics' pod readiness, which see a process that cannot report on itself.
var externalMetrics = map[string]bool{"up": true, "kube_pod_status_ready": true, "kube_pod_status_phase": true}

// metricSeries resolves an exported series name to its metric: a histogram's _bucket, _sum
// and _count belong to it; a histogram's bare name is no series.
func metricSeries(name string) (string, bool) {
	if k, ok := recsysMetrics[name]; ok {
		return name, k != histogram
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suf)
		if k, ok := recsysMetrics[base]; found && ok && k == histogram {
			return base, true
		}
	}
	return "", false
}

var (
	codeOnce sync.Once
	codeText string
)

// goSource is the text of every non-test Go file of the program (modules/, pkg/, cmd/).
func goSource(t testing.TB) string {
	t.Helper()
	codeOnce.Do(func() {
		var b strings.Builder
		for _, dir := range []string{"modules", "pkg", "cmd"} {
			_ = filepath.WalkDir(filepath.Join(repoRoot(t), dir), func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
					return err
				}
				src, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				// Doc comments list metric names too; only code counts.
				for _, line := range strings.Split(string(src), "\n") {
					if !strings.HasPrefix(strings.TrimSpace(line), "//") {
						b.WriteString(line)
						b.WriteByte('\n')
					}
				}
				return nil
			})
		}
		codeText = b.String()
	})
	return codeText
}

func TestMetricCatalogMatchesCode(t *testing.T) {
	src := goSource(t)
	for name := range recsysMetrics {
		// The name must appear in code as a whole word (followed by a quote or a label set),
		// so "reco_api_latency_ms" is not satisfied by "reco_api_latency_ms_total".
		re := regexp.MustCompile(`\b` + regexp.QuoteMeta(name) + "(\"|`|\\{|\\s*\\+)")
		if !re.MatchString(src) {
			t.Errorf("metric %s is used by deploy/ but no code under modules/, pkg/ or cmd/ exports it", name)
		}
	}
}

func TestCheckCommandEnvCatchesMistakes(t *testing.T) {
	// The checks below are only worth something if they fail on a typo and a bad value.
	res := checkCommandEnv(t, []string{"relay"}, map[string]string{
		"RECSYS_SHUTDOWN_TIMOUT": "25s", // typo
		"DATABASE_URL":           "postgres://x@y/z",
		"GOMEMLIMIT":             "200MiB",
	})
	if len(res.unknown) != 1 || res.unknown[0] != "RECSYS_SHUTDOWN_TIMOUT" {
		t.Fatalf("unknown = %v, want [RECSYS_SHUTDOWN_TIMOUT]", res.unknown)
	}
	if res.err != nil {
		t.Fatalf("valid values rejected: %v", res.err)
	}
	res = checkCommandEnv(t, []string{"serve", "--roles", "api"}, map[string]string{"RECSYS_SHUTDOWN_DELAY": "five seconds"})
	if res.err == nil || !strings.Contains(res.err.Error(), "RECSYS_SHUTDOWN_DELAY") {
		t.Fatalf("err = %v, want a parse error naming RECSYS_SHUTDOWN_DELAY", res.err)
	}
	if !res.known["DATABASE_URL"] || !res.known["RECSYS_PG_DSN"] {
		t.Fatal("serve --roles api should read DATABASE_URL and RECSYS_PG_DSN")
	}
}
