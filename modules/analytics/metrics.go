package analytics

import "github.com/VictoriaMetrics/metrics"

type analyticsMetrics struct {
	baselineDuration *metrics.PrometheusHistogram
	baselineErrors   *metrics.Counter
	foldDuration     *metrics.PrometheusHistogram
	foldedRows       *metrics.Counter
	foldErrors       *metrics.Counter
	rebuilds         *metrics.Counter
	otherDefs        *metrics.Counter
}

func newMetrics(set *metrics.Set) *analyticsMetrics {
	return &analyticsMetrics{
		baselineDuration: set.NewPrometheusHistogram("recsys_analytics_baseline_duration_seconds"),
		baselineErrors:   set.NewCounter("recsys_analytics_baseline_errors_total"),
		foldDuration:     set.NewPrometheusHistogram("recsys_analytics_rollup_fold_duration_seconds"),
		foldedRows:       set.NewCounter("recsys_analytics_rollup_rows_total"),
		foldErrors:       set.NewCounter("recsys_analytics_rollup_errors_total"),
		rebuilds:         set.NewCounter("recsys_analytics_rollup_rebuilds_total"),
		otherDefs:        set.NewCounter("recsys_analytics_rollup_other_definitions_total"),
	}
}
