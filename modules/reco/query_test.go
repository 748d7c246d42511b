package reco

import (
	"net/url"
	"testing"
)

// rawQueryCases are queries whose pairs url.ParseQuery reads in every way it can: repeats,
// escapes in keys and values, plus signs, bad escapes, semicolons, empty pairs and keys.
var rawQueryCases = []string{
	"",
	"user_id=u1&session_id=s1&k=20&x_autolog_impressions=false",
	"user_id=a&user_id=b",
	"user_id=a&user_id=%zz",
	"user_id=a;b&user_id=c",
	"user_id=a&user_id=b;c",
	"user%5Fid=escaped-key&k=3",
	"user_id=%E2%82%AC+x&k=+7",
	"k&k=&pretty",
	"pretty=&&&=x&user_id",
	"%zz=1&k=2",
	"user+id=1&user id=2",
	"user_id=%ff%fe",
	"k=1&k=2&k=3&k=%",
}

// TestRawQueryMatchesParseQuery holds rawQuery to url.ParseQuery, which echo's QueryParams
// used: the last value of each parameter and whether it is present at all.
func TestRawQueryMatchesParseQuery(t *testing.T) {
	for _, raw := range rawQueryCases {
		checkRawQuery(t, raw)
	}
}

func FuzzRawQuery(f *testing.F) {
	for _, raw := range rawQueryCases {
		f.Add(raw)
	}
	f.Fuzz(checkRawQuery)
}

func checkRawQuery(t *testing.T, raw string) {
	want, _ := url.ParseQuery(raw) // like echo: the pairs that parse, errors aside
	names := []string{"user_id", "session_id", "k", "x_autolog_impressions", "pretty", "user id"}
	for k := range want {
		names = append(names, k)
	}
	for _, name := range names {
		if name == "" {
			continue // no parameter is named "", and rawQuery is never asked for one
		}
		got, ok, _ := rawQuery(raw).last(name)
		vs, wantOK := want[name]
		if ok != wantOK {
			t.Fatalf("%q: %q present %v, url.ParseQuery %v", raw, name, ok, wantOK)
		}
		if ok && got != vs[len(vs)-1] {
			t.Fatalf("%q: %q = %q, url.ParseQuery's last %q", raw, name, got, vs[len(vs)-1])
		}
	}
}

// TestRawQueryDoesNotAllocate: the point of reading the query in place.
func TestRawQueryDoesNotAllocate(t *testing.T) {
	q := rawQuery("user_id=load-user-1&session_id=session-2&k=20&x_autolog_impressions=false")
	if n := testing.AllocsPerRun(100, func() {
		_, _ = parseReco(q)
	}); n != 0 {
		t.Fatalf("parseReco allocated %v times per query", n)
	}
}
