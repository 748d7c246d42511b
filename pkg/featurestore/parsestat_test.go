package featurestore

import (
	"testing"

	"recsys/pkg/ranking"
)

// strconv reads "nan" and "inf" as NaN and ±Inf: a hash field holding one (written by hand,
// corrupted) made the popularity NaN, which ranking cannot order, or an integer statistic
// whatever Go's conversion from NaN gives on the platform. It counts as 0; other text that is
// not a number stays an error.
func TestNonFiniteStoredStatisticsAreZero(t *testing.T) {
	for _, s := range []string{"nan", "NaN", "inf", "-Inf", "+infinity", "1e400"} {
		if v, err := ParseStat(s); err != nil || v != 0 {
			t.Errorf("ParseStat(%q) = %v, %v; want 0", s, v, err)
		}
	}
	if v, err := ParseStat("12.5"); err != nil || v != 12.5 {
		t.Errorf("ParseStat(12.5) = %v, %v", v, err)
	}
	if _, err := ParseStat("abc"); err == nil {
		t.Error("ParseStat(abc): no error")
	}
	// impressions, watches, sum_percent, percent_count, ended, watch_time, first_seen, pop_s, pop_l
	st, ok, err := statsFromStrings([]string{"3", "1", "nan", "1", "0", "inf", "1700000000000", "NaN", "-inf"})
	want := ranking.ItemStats{Impressions: 3, Watches: 1, PercentCount: 1, FirstSeenMs: 1700000000000}
	if err != nil || !ok || st.s != want || st.ps != 0 || st.pl != 0 {
		t.Errorf("statsFromStrings = %+v %v %v %v, %v; want %+v and zero popularity", st.s, st.ps, st.pl, ok, err, want)
	}
}
