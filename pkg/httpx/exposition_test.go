package httpx

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"
)

// The exposition types every family once (api-contract §9.1 gives the types; a second
// # TYPE line for a name fails a strict parser), keeps each family's samples together across
// the modules' sets, and writes the contract's reco_* bucket bounds as the original's Python
// client did (le="10.0").
func TestExpositionTypesEachFamilyOnceWithContractBuckets(t *testing.T) {
	a, b := metrics.NewSet(), metrics.NewSet()
	metrics.RegisterSet(a)
	metrics.RegisterSet(b)
	defer metrics.UnregisterSet(a, true)
	defer metrics.UnregisterSet(b, true)
	a.NewPrometheusHistogramExt("reco_api_latency_ms", []float64{10, 25, 2500, 300000}).Update(12)
	a.NewCounter(`reco_api_requests_total{status_family="2xx"}`).Inc()
	a.NewCounter(`zz_shared_total{writer="ingest"}`).Inc()
	b.NewCounter(`zz_shared_total{writer="reco"}`).Add(2)
	b.NewPrometheusHistogramExt("recsys_zz_seconds", []float64{0.5, 1}).Update(0.7)

	rec := httptest.NewRecorder()
	if err := MetricsHandler(echo.New().NewContext(httptest.NewRequest(http.MethodGet, "/metrics/prometheus", nil), rec)); err != nil {
		t.Fatal(err)
	}
	body := rec.Body.String()
	for _, want := range []string{
		"# TYPE reco_api_latency_ms histogram\nreco_api_latency_ms_bucket{le=\"10.0\"} 0\nreco_api_latency_ms_bucket{le=\"25.0\"} 1\n" +
			"reco_api_latency_ms_bucket{le=\"2500.0\"} 1\nreco_api_latency_ms_bucket{le=\"300000.0\"} 1\nreco_api_latency_ms_bucket{le=\"+Inf\"} 1\n",
		"# TYPE reco_api_requests_total counter\nreco_api_requests_total{status_family=\"2xx\"} 1\n",
		"# TYPE zz_shared_total counter\nzz_shared_total{writer=\"ingest\"} 1\nzz_shared_total{writer=\"reco\"} 2\n",
		`recsys_zz_seconds_bucket{le="0.5"} 0` + "\n" + `recsys_zz_seconds_bucket{le="1"} 1` + "\n", // ours keep the library's format
		"# TYPE go_goroutines gauge\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("exposition lacks\n%s", want)
		}
	}
	seen := map[string]bool{}
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "# TYPE ") || strings.HasPrefix(l, "# HELP ") {
			if seen[l[:6]+strings.Fields(l)[2]] {
				t.Errorf("second %s", l)
			}
			seen[l[:6]+strings.Fields(l)[2]] = true
		}
	}
}

func TestPythonFloat(t *testing.T) {
	for v, want := range map[float64]string{
		0: "0.0", 10: "10.0", 2.5: "2.5", 0.005: "0.005", 120000: "120000.0", 300000: "300000.0",
		1e6: "1e+06", 1.25e7: "1.25e+07", 1e-5: "1e-05",
	} {
		if got := pythonFloat(v); got != want {
			t.Errorf("pythonFloat(%v) = %q, want %q", v, got, want)
		}
	}
}
