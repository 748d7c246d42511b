package analytics

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/httpx"
	"recsys/pkg/openapi"
)

// The documented days parameter is what parseDays applies: its default when absent, and its
// bounds exactly at the documented values.
func TestDaysParameterMatchesTheParser(t *testing.T) {
	d := openapi.New("t", "v", "")
	(&Analytics{}).DescribeAPI(d)
	params := (*d.Paths["/analytics/baseline"])["get"].Parameters
	if len(params) != 1 || params[0].Name != "days" || params[0].Required {
		t.Fatalf("parameters %+v, want one optional days", params)
	}
	s := params[0].Schema
	if n, err := parseDays(nil); err != nil || n != s.Default {
		t.Errorf("days absent: %d %v, documented default %v", n, err, s.Default)
	}
	for _, c := range []struct {
		v       float64
		wantErr bool
	}{{*s.Minimum, false}, {*s.Minimum - 1, true}, {*s.Maximum, false}, {*s.Maximum + 1, true}} {
		if _, err := parseDays([]string{fmt.Sprint(c.v)}); (err != nil) != c.wantErr {
			t.Errorf("days=%v: error %v, want error %v", c.v, err, c.wantErr)
		}
	}
}

// days takes what pydantic's lax int took in the original (whitespace, a sign, underscores
// between digits, a fraction of zeros), with pydantic's error types for the rest.
func TestDaysTakesPydanticsIntegerSyntax(t *testing.T) {
	for _, c := range []struct {
		raw     string
		want    int
		errType string
	}{
		{"7", 7, ""},
		{" 7 ", 7, ""},
		{"+7", 7, ""},
		{"7.0", 7, ""},
		{"7.000", 7, ""},
		{"1_0", 10, ""},
		{"030", 30, ""},
		{"1.5", 0, "int_parsing"},
		{"abc", 0, "int_parsing"},
		{"", 0, "int_parsing"},
		{"1__0", 0, "int_parsing"},
		{"_7", 0, "int_parsing"},
		{"0", 0, "greater_than_equal"},
		{"-0.0", 0, "greater_than_equal"},
		{"31", 0, "less_than_equal"},
		{"99999999999999999999", 0, "less_than_equal"},
		{"-99999999999999999999", 0, "greater_than_equal"},
	} {
		n, err := parseDays([]string{c.raw})
		got := ""
		if err != nil {
			got = err.Type
			if err.Msg == "" || fmt.Sprint(err.Loc) != "[query days]" {
				t.Errorf("days=%q: error %+v lacks its message or location", c.raw, *err)
			}
		}
		if got != c.errType || n != c.want {
			t.Errorf("days=%q: %d, error type %q; want %d, %q", c.raw, n, got, c.want, c.errType)
		}
	}
}

// A days value the query parser cannot decode was skipped by url.ParseQuery, so the request
// silently got the 7-day default (the original refused it: Starlette kept the text, pydantic
// failed it); now it is a 422 naming days. The last pair naming days decides, as the last
// value did in the original.
func TestUndecodableDaysIsRefused(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	a := &Analytics{cfg: NewConfig(), log: log, m: newMetrics(metrics.NewSet()), now: time.Now}
	e := httpx.New(httpx.DefaultConfig(), log)
	a.RegisterRoutes(e)
	for _, c := range []struct {
		query, input string
	}{
		{"days=%zz", "%zz"},
		{"days=3%", "3%"},
		{"days=3;x", "3;x"},
		{"days=3&days=1%2", "1%2"},
		{"d%61ys=%g0", "%g0"},
		{"days=%ff%zz", "%ff%zz"},
	} {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/analytics/baseline?"+c.query, nil))
		var body struct {
			Detail []struct {
				Type  string `json:"type"`
				Loc   []any  `json:"loc"`
				Input string `json:"input"`
			} `json:"detail"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != http.StatusUnprocessableEntity || len(body.Detail) != 1 || body.Detail[0].Type != "value_error" ||
			fmt.Sprint(body.Detail[0].Loc) != "[query days]" || body.Detail[0].Input != c.input {
			t.Errorf("?%s: %d %s, want a 422 value_error at [query days] with input %q", c.query, rec.Code, rec.Body, c.input)
		}
	}
}
