package deploy_test

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	promhistogram "github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
)

// This file does what `promtool test rules` does, in Go: it evaluates the alert expressions
// of deploy/prometheus/alerts.yml with Prometheus' own PromQL engine over synthetic series
// (a healthy system, then one fault per scenario) and checks which alerts fire, honouring
// each alert's `for`.

const (
	scrape  = 15 * time.Second
	history = 3 * time.Hour
)

type sample struct {
	t int64
	f float64
}

func (s sample) T() int64                          { return s.t }
func (s sample) ST() int64                         { return 0 }
func (s sample) F() float64                        { return s.f }
func (s sample) H() *promhistogram.Histogram       { return nil }
func (s sample) FH() *promhistogram.FloatHistogram { return nil }
func (s sample) Type() chunkenc.ValueType          { return chunkenc.ValFloat }
func (s sample) Copy() chunks.Sample               { return s }

type seriesList struct {
	s []storage.Series
	i int
}

func (l *seriesList) Next() bool                        { l.i++; return l.i <= len(l.s) }
func (l *seriesList) At() storage.Series                { return l.s[l.i-1] }
func (l *seriesList) Err() error                        { return nil }
func (l *seriesList) Warnings() annotations.Annotations { return nil }

// world is a set of series, each a function of the time since the start (seconds).
type world map[string]struct {
	lset labels.Labels
	f    func(t float64) float64
}

func (w world) set(f func(t float64) float64, kv ...string) {
	l := labels.FromStrings(kv...)
	w[l.String()] = struct {
		lset labels.Labels
		f    func(t float64) float64
	}{l, f}
}

func (w world) del(kv ...string) { delete(w, labels.FromStrings(kv...).String()) }

func (w world) queryable() storage.Queryable {
	var all []storage.Series
	for _, s := range w {
		var samples []chunks.Sample
		for t := time.Duration(0); t <= history; t += scrape {
			samples = append(samples, sample{t: t.Milliseconds(), f: s.f(t.Seconds())})
		}
		all = append(all, storage.NewListSeries(s.lset, samples))
	}
	sort.Slice(all, func(i, j int) bool { return labels.Compare(all[i].Labels(), all[j].Labels()) < 0 })
	return &storage.MockQueryable{MockQuerier: &storage.MockQuerier{
		SelectMockFunction: func(_ bool, _ *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
			var out []storage.Series
		next:
			for _, s := range all {
				for _, m := range ms {
					if !m.Matches(s.Labels().Get(m.Name)) {
						continue next
					}
				}
				out = append(out, s)
			}
			return &seriesList{s: out}
		},
	}}
}

const ns = "recsys"

func constant(v float64) func(float64) float64 { return func(float64) float64 { return v } }

// grows is a counter increasing at rate per second.
func grows(rate float64) func(float64) float64 { return func(t float64) float64 { return rate * t } }

// after switches from one function to another at time since (seconds from the start).
func after(since float64, before, then func(float64) float64) func(float64) float64 {
	return func(t float64) float64 {
		if t >= since {
			return then(t)
		}
		return before(t)
	}
}

// histogramSeries adds the _bucket/_sum/_count series of a histogram observed rate times per
// second, every observation falling in the bucket whose upper bound is hi (so quantiles are
// interpolated within that bucket, as Prometheus does).
func (w world) histogramSeries(name string, bounds []float64, rate, hi float64, kv ...string) {
	for _, le := range append(slices.Clone(bounds), math.Inf(1)) {
		frac := 0.0
		if le >= hi {
			frac = 1
		}
		leStr := "+Inf"
		if !math.IsInf(le, 1) {
			leStr = fmt.Sprint(le)
		}
		w.set(grows(rate*frac), append([]string{"__name__", name + "_bucket", "le", leStr}, kv...)...)
	}
	w.set(grows(rate*hi), append([]string{"__name__", name + "_sum"}, kv...)...)
	w.set(grows(rate), append([]string{"__name__", name + "_count"}, kv...)...)
}

var (
	msBuckets      = []float64{10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000}
	secondsBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
)

// healthy is a busy, healthy system: every series an alert reads exists, nothing fires.
func healthy() world {
	w := world{}
	w.set(grows(100), "__name__", "reco_api_requests_total", "namespace", ns, "status_family", "2xx")
	w.set(grows(1), "__name__", "reco_api_requests_total", "namespace", ns, "status_family", "4xx")
	w.set(grows(0), "__name__", "reco_api_requests_total", "namespace", ns, "status_family", "5xx")
	w.histogramSeries("reco_api_latency_ms", msBuckets, 100, 50, "namespace", ns)
	w.set(grows(100), "__name__", "recsys_reco_served_total", "namespace", ns, "source", "redis")
	w.set(grows(0), "__name__", "recsys_reco_served_total", "namespace", ns, "source", "pg_fallback")
	w.set(grows(0), "__name__", "recsys_reco_served_total", "namespace", ns, "source", "global_snapshot")
	w.set(grows(2), "__name__", "recsys_reco_user_read_through_total", "namespace", ns, "result", "found")
	w.set(grows(1), "__name__", "recsys_reco_user_read_through_total", "namespace", ns, "result", "absent")
	w.set(grows(0), "__name__", "recsys_reco_user_read_through_total", "namespace", ns, "result", "error")
	for _, route := range []string{"/log/watch", "/log/batch"} {
		w.set(grows(50), "__name__", "recsys_http_requests_total", "namespace", ns, "route", route, "method", "POST", "code", "200")
		w.set(grows(0), "__name__", "recsys_http_requests_total", "namespace", ns, "route", route, "method", "POST", "code", "503")
	}
	w.set(grows(100), "__name__", "recsys_http_requests_total", "namespace", ns, "route", "/reco", "method", "GET", "code", "200")
	w.set(grows(0), "__name__", "recsys_http_shed_total", "namespace", ns, "limiter", "reco")
	w.set(constant(15), "__name__", "reco_outbox_backlog_oldest_lag_ms", "namespace", ns, "pod", "recsys-relay-1")
	for status, v := range map[string]float64{"pending": 3, "publishing": 2, "dead": 0} {
		w.set(constant(v), "__name__", "reco_outbox_backlog_events", "namespace", ns, "pod", "recsys-relay-1", "status", status)
	}
	for _, topic := range []string{"recsys.impressions.v1", "recsys.watches.v1"} {
		w.set(grows(100), "__name__", "reco_outbox_relay_published_total", "namespace", ns, "topic", topic)
		w.set(grows(0), "__name__", "reco_outbox_relay_failed_total", "namespace", ns, "topic", topic)
		for p := range 3 {
			w.set(constant(5), "__name__", "reco_feature_consumer_partition_lag", "namespace", ns, "pod", "recsys-consumer-1", "topic", topic, "partition", fmt.Sprint(p))
		}
	}
	w.set(constant(0), "__name__", "recsys_relay_kafka_unreachable", "namespace", ns, "pod", "recsys-relay-5c4b-a")
	w.histogramSeries("recsys_consumer_accepted_to_visible_seconds", secondsBuckets, 100, 0.025, "namespace", ns)
	w.set(grows(0), "__name__", "reco_feature_consumer_dlq_events_total", "namespace", ns, "outcome", "stored")
	w.set(grows(0), "__name__", "recsys_http_rate_limit_fallback_total", "namespace", ns, "pod", "recsys-api-7d9f-a")
	w.set(constant(0), "__name__", "reco_feature_consumer_dlq_oldest_pending_ms", "namespace", ns)
	for _, pod := range []string{"recsys-api-7d9f-a", "recsys-api-7d9f-b", "recsys-relay-5c4b-a", "recsys-consumer-6f8d-a"} {
		w.set(constant(1), "__name__", "kube_pod_status_ready", "namespace", ns, "pod", pod, "condition", "true")
		w.set(constant(0), "__name__", "kube_pod_status_ready", "namespace", ns, "pod", pod, "condition", "false")
		component := strings.Split(pod, "-")[1]
		w.set(constant(1), "__name__", "up", "namespace", ns, "pod", pod, "app_kubernetes_io_name", "recsys", "app_kubernetes_io_component", component)
		w.set(constant(1), "__name__", "kube_pod_status_phase", "namespace", ns, "pod", pod, "phase", "Running")
	}
	return w
}

// firing evaluates every alert at the end of the history and returns those that fire.
func firing(t *testing.T, groups *rulefmt.RuleGroups, w world) []string {
	t.Helper()
	records := map[string]string{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				records[r.Record] = r.Expr
			}
		}
	}
	recordRef := regexp.MustCompile(`recsys:[a-z0-9_]+:[a-z0-9_]+`)
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 50_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	q := w.queryable()
	end := time.Unix(0, 0).Add(history)
	const evalInterval = 30 * time.Second
	var out []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			// Recording rules are evaluated inline: the recorded series is the rule's expression.
			expr := recordRef.ReplaceAllStringFunc(r.Expr, func(name string) string {
				if e, ok := records[name]; ok {
					return "(" + e + ")"
				}
				return name
			})
			// An alert fires once its expression has returned the same series at every
			// evaluation over its `for` duration.
			hold := time.Duration(r.For)
			qry, err := engine.NewRangeQuery(context.Background(), q, nil, expr, end.Add(-hold), end, evalInterval)
			if err != nil {
				t.Fatalf("%s: %v", r.Alert, err)
			}
			res := qry.Exec(context.Background())
			if res.Err != nil {
				t.Fatalf("%s: %v", r.Alert, res.Err)
			}
			m, err := res.Matrix()
			if err != nil {
				t.Fatalf("%s: %v", r.Alert, err)
			}
			steps := int(hold/evalInterval) + 1
			for _, s := range m {
				if len(s.Floats) >= steps {
					out = append(out, r.Alert)
					break
				}
			}
			qry.Close()
		}
	}
	sort.Strings(out)
	return out
}

func TestAlertsFireOnTheirFaultOnly(t *testing.T) {
	groups := loadRules(t)
	end := history.Seconds()
	lastMinutes := func(m float64) float64 { return end - m*60 }
	tests := []struct {
		name  string
		fault func(w world)
		want  []string
	}{
		{name: "healthy", fault: func(world) {}},
		{name: "reco answers 5xx to 20%", want: []string{"RecoErrorBudgetBurnFast", "RecoErrorBudgetBurnSlow"},
			fault: func(w world) {
				w.set(grows(25), "__name__", "reco_api_requests_total", "namespace", ns, "status_family", "5xx")
			}},
		{name: "reco 4xx are the client's", fault: func(w world) {
			w.set(grows(50), "__name__", "reco_api_requests_total", "namespace", ns, "status_family", "4xx")
		}},
		{name: "reco slow", want: []string{"RecoLatencyP95High", "RecoLatencyP99High"},
			fault: func(w world) { w.histogramSeries("reco_api_latency_ms", msBuckets, 100, 250, "namespace", ns) }},
		{name: "reco sheds 5% as overloaded", want: []string{"RecoShedding"},
			fault: func(w world) {
				w.set(grows(5), "__name__", "recsys_http_shed_total", "namespace", ns, "limiter", "reco")
			}},
		{name: "a rare shed in a burst", fault: func(w world) {
			w.set(grows(0.1), "__name__", "recsys_http_shed_total", "namespace", ns, "limiter", "reco")
		}},
		{name: "reco served from fallbacks", want: []string{"RecoServingDegraded"},
			fault: func(w world) {
				w.set(grows(20), "__name__", "recsys_reco_served_total", "namespace", ns, "source", "pg_fallback")
			}},
		{name: "expired users not read back", want: []string{"RecoUserReadThroughFailing"},
			fault: func(w world) {
				w.set(grows(3), "__name__", "recsys_reco_user_read_through_total", "namespace", ns, "result", "error")
			}},
		{name: "a rare failed read-through", fault: func(w world) {
			w.set(grows(0.01), "__name__", "recsys_reco_user_read_through_total", "namespace", ns, "result", "error")
		}},
		{name: "shared rate limits fall back to per-pod counts", want: []string{"RateLimitSharingDegraded"},
			fault: func(w world) {
				w.set(grows(40), "__name__", "recsys_http_rate_limit_fallback_total", "namespace", ns, "pod", "recsys-api-7d9f-a")
			}},
		{name: "a rate limit fallback shorter than for", fault: func(w world) {
			w.set(after(lastMinutes(4), constant(0), func(t float64) float64 { return 40 * (t - lastMinutes(4)) }),
				"__name__", "recsys_http_rate_limit_fallback_total", "namespace", ns, "pod", "recsys-api-7d9f-a")
		}},
		{name: "ingest refuses events", want: []string{"IngestErrors"},
			fault: func(w world) {
				w.set(grows(5), "__name__", "recsys_http_requests_total", "namespace", ns, "route", "/log/watch", "method", "POST", "code", "503")
			}},
		{name: "outbox stuck for 20 minutes", want: []string{"OutboxBacklogStale"},
			fault: func(w world) {
				w.set(after(lastMinutes(20), constant(15), constant(120000)), "__name__", "reco_outbox_backlog_oldest_lag_ms", "namespace", ns, "pod", "recsys-relay-1")
			}},
		{name: "outbox stuck for 2 minutes (shorter than for)", fault: func(w world) {
			w.set(after(lastMinutes(2), constant(15), constant(120000)), "__name__", "reco_outbox_backlog_oldest_lag_ms", "namespace", ns, "pod", "recsys-relay-1")
		}},
		{name: "ingest retention fails every pass", want: []string{"RetentionFailing"},
			fault: func(w world) {
				w.set(grows(1.0/60), "__name__", "recsys_ingest_retention_errors_total", "namespace", ns, "pod", "recsys-api-7d9f-a")
			}},
		{name: "consumer purge fails every pass", want: []string{"RetentionFailing"},
			fault: func(w world) {
				w.set(grows(2.0/30), "__name__", "reco_feature_consumer_errors_total", "namespace", ns, "pod", "recsys-consumer-1", "stage", "retention")
			}},
		{name: "consumer item retention fails every pass", want: []string{"RetentionFailing"},
			fault: func(w world) {
				w.set(grows(2.0/30), "__name__", "reco_feature_consumer_errors_total", "namespace", ns, "pod", "recsys-consumer-1", "stage", "item_retention")
			}},
		{name: "consumer user retention fails every pass", want: []string{"RetentionFailing"},
			fault: func(w world) {
				w.set(grows(2.0/30), "__name__", "reco_feature_consumer_errors_total", "namespace", ns, "pod", "recsys-consumer-1", "stage", "user_retention")
			}},
		{name: "a retention blip", fault: func(w world) {
			w.set(after(lastMinutes(90), constant(0), constant(5)), "__name__", "recsys_ingest_retention_errors_total", "namespace", ns, "pod", "recsys-api-7d9f-a")
			w.set(after(lastMinutes(90), constant(0), constant(5)), "__name__", "reco_outbox_relay_errors_total", "namespace", ns, "pod", "recsys-relay-1", "stage", "retention")
		}},
		{name: "dead outbox rows", want: []string{"OutboxDeadRows"},
			fault: func(w world) {
				w.set(constant(4), "__name__", "reco_outbox_backlog_events", "namespace", ns, "pod", "recsys-relay-1", "status", "dead")
			}},
		{name: "every publish fails", want: []string{"RelayPublishFailing"},
			fault: func(w world) {
				for _, topic := range []string{"recsys.impressions.v1", "recsys.watches.v1"} {
					w.set(after(lastMinutes(30), grows(100), constant(100*lastMinutes(30))), "__name__", "reco_outbox_relay_published_total", "namespace", ns, "topic", topic)
					w.set(after(lastMinutes(30), constant(0), func(t float64) float64 { return 10 * (t - lastMinutes(30)) }), "__name__", "reco_outbox_relay_failed_total", "namespace", ns, "topic", topic)
				}
			}},
		// Counters start at a process' start and the published ones at its first publish: relays
		// (re)started while Kafka or a topic is unusable export no published series at all.
		{name: "relays started while every publish fails", want: []string{"RelayPublishFailing"},
			fault: func(w world) {
				for _, topic := range []string{"recsys.impressions.v1", "recsys.watches.v1"} {
					w.del("__name__", "reco_outbox_relay_published_total", "namespace", ns, "topic", topic)
					w.set(grows(10), "__name__", "reco_outbox_relay_failed_total", "namespace", ns, "topic", topic)
				}
			}},
		// Kafka stops answering: each relay fails the batch in flight, then pauses and probes
		// Kafka; nothing is published or fails after that one batch.
		{name: "kafka unreachable from every relay", want: []string{"RelayPublishFailing"},
			fault: func(w world) {
				for _, topic := range []string{"recsys.impressions.v1", "recsys.watches.v1"} {
					w.set(after(lastMinutes(30), grows(100), constant(100*lastMinutes(30))), "__name__", "reco_outbox_relay_published_total", "namespace", ns, "topic", topic)
					w.set(after(lastMinutes(30), constant(0), constant(40)), "__name__", "reco_outbox_relay_failed_total", "namespace", ns, "topic", topic)
				}
				w.set(after(lastMinutes(30), constant(0), constant(1)), "__name__", "recsys_relay_kafka_unreachable", "namespace", ns, "pod", "recsys-relay-5c4b-a")
			}},
		{name: "one relay cut off from kafka, another publishes", fault: func(w world) {
			w.set(constant(1), "__name__", "recsys_relay_kafka_unreachable", "namespace", ns, "pod", "recsys-relay-5c4b-b")
		}},
		{name: "some publishes fail, most succeed", fault: func(w world) {
			w.set(grows(1), "__name__", "reco_outbox_relay_failed_total", "namespace", ns, "topic", "recsys.watches.v1")
		}},
		{name: "consumer far behind", want: []string{"FeatureConsumerLagHigh"},
			fault: func(w world) {
				w.set(constant(150000), "__name__", "reco_feature_consumer_partition_lag", "namespace", ns, "pod", "recsys-consumer-1", "topic", "recsys.watches.v1", "partition", "1")
			}},
		{name: "stale lag of a previous partition owner is not double counted", fault: func(w world) {
			for _, pod := range []string{"recsys-consumer-1", "recsys-consumer-2"} {
				w.set(constant(60000), "__name__", "reco_feature_consumer_partition_lag", "namespace", ns, "pod", pod, "topic", "recsys.watches.v1", "partition", "1")
			}
		}},
		{name: "features stale", want: []string{"FeatureFreshnessSlow"},
			fault: func(w world) {
				w.histogramSeries("recsys_consumer_accepted_to_visible_seconds", secondsBuckets, 100, 60, "namespace", ns)
			}},
		// Redis out of memory (noeviction) or a read-only replica: every write of the consumer is
		// refused while reads go on, so /reco serves features that no longer change and the
		// freshness histogram, which observes successful writes only, sees nothing.
		{name: "redis refuses the consumer's writes", want: []string{"FeatureRedisWritesFailing"},
			fault: func(w world) {
				w.set(grows(2), "__name__", "reco_feature_consumer_errors_total", "namespace", ns, "pod", "recsys-consumer-1", "stage", "redis")
				w.set(grows(1), "__name__", "reco_feature_consumer_errors_total", "namespace", ns, "pod", "recsys-consumer-1", "stage", "heal")
			}},
		{name: "a redis write blip", fault: func(w world) {
			w.set(after(lastMinutes(90), constant(0), constant(5)), "__name__", "reco_feature_consumer_errors_total", "namespace", ns, "pod", "recsys-consumer-1", "stage", "redis")
		}},
		{name: "dead letters arriving", want: []string{"FeatureDLQGrowing"},
			fault: func(w world) {
				w.set(after(lastMinutes(10), constant(0), func(t float64) float64 { return 0.1 * (t - lastMinutes(10)) }), "__name__", "reco_feature_consumer_dlq_events_total", "namespace", ns, "outcome", "stored")
			}},
		{name: "dead letter pending for two days", want: []string{"FeatureDLQPendingOld"},
			fault: func(w world) {
				w.set(constant(2*86400000), "__name__", "reco_feature_consumer_dlq_oldest_pending_ms", "namespace", ns)
			}},
		{name: "no api pod ready", want: []string{"RecsysAPINotReady", "RecsysPodNotReady"},
			fault: func(w world) {
				for _, pod := range []string{"recsys-api-7d9f-a", "recsys-api-7d9f-b"} {
					w.set(constant(0), "__name__", "kube_pod_status_ready", "namespace", ns, "pod", pod, "condition", "true")
				}
			}},
		{name: "one api pod unready, the other serves", want: []string{"RecsysPodNotReady"},
			fault: func(w world) {
				w.set(constant(0), "__name__", "kube_pod_status_ready", "namespace", ns, "pod", "recsys-api-7d9f-a", "condition", "true")
			}},
		{name: "consumer pod not scraped", want: []string{"RecsysTargetDown"},
			fault: func(w world) {
				w.set(constant(0), "__name__", "up", "namespace", ns, "pod", "recsys-consumer-6f8d-a", "app_kubernetes_io_name", "recsys", "app_kubernetes_io_component", "consumer")
			}},
		{name: "no api pod at all", want: []string{"RecsysAPIAbsent"},
			fault: func(w world) {
				for _, pod := range []string{"recsys-api-7d9f-a", "recsys-api-7d9f-b"} {
					w.del("__name__", "kube_pod_status_ready", "namespace", ns, "pod", pod, "condition", "true")
					w.del("__name__", "kube_pod_status_ready", "namespace", ns, "pod", pod, "condition", "false")
					w.del("__name__", "up", "namespace", ns, "pod", pod, "app_kubernetes_io_name", "recsys", "app_kubernetes_io_component", "api")
					w.del("__name__", "kube_pod_status_phase", "namespace", ns, "pod", pod, "phase", "Running")
				}
			}},
		{name: "an evicted api pod beside a serving one", fault: func(w world) {
			pod := "recsys-api-7d9f-c"
			w.set(constant(0), "__name__", "kube_pod_status_ready", "namespace", ns, "pod", pod, "condition", "true")
			w.set(constant(1), "__name__", "kube_pod_status_ready", "namespace", ns, "pod", pod, "condition", "false")
			w.set(constant(1), "__name__", "kube_pod_status_phase", "namespace", ns, "pod", pod, "phase", "Failed")
		}},
	}
	fired := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := healthy()
			tt.fault(w)
			got := firing(t, groups, w)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("firing %v, want %v", got, tt.want)
			}
			for _, a := range got {
				fired[a] = true
			}
		})
	}
	// Every alert has a scenario proving it can fire.
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !fired[r.Alert] {
				t.Errorf("alert %s never fired in any scenario", r.Alert)
			}
		}
	}
}
