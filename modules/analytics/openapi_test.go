package analytics

import (
	"fmt"
	"testing"

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
