package httpx

import "testing"

// TestLastQueryParam: a later decodable pair overrides an undecodable one, as it overrode it
// as the last value in the original.
func TestLastQueryParamTakesTheLastPair(t *testing.T) {
	for _, c := range []struct {
		raw                string
		value              string
		found, undecodable bool
	}{
		{"", "", false, false},
		{"days=%zz&days=3", "3", true, false},
		{"days=3&days=%zz", "3", true, true},
		{"days=+3+", " 3 ", true, false},
		{"days", "", true, false},
		{"x=%zz&days=2", "2", true, false},
	} {
		p := LastQueryParam(c.raw, "days")
		if p.Value != c.value || p.Found != c.found || p.Undecodable != c.undecodable {
			t.Errorf("%q: %+v, want value %q found %v undecodable %v", c.raw, p, c.value, c.found, c.undecodable)
		}
	}
}
