package events_test

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"recsys/pkg/events"
)

func TestLaxParsers(t *testing.T) {
	ints := []struct {
		in   string
		want int64
		typ  string
	}{
		{"123", 123, ""}, {" -7 ", -7, ""}, {"+5", 5, ""}, {"1_000", 1000, ""}, {"20.0", 20, ""}, {"20.", 20, ""},
		{"007", 7, ""}, {"", 0, "int_parsing"}, {"1.5", 0, "int_parsing"}, {"1e3", 0, "int_parsing"}, {"_1", 0, "int_parsing"},
		{"1__0", 0, "int_parsing"}, {"1_", 0, "int_parsing"}, {"--1", 0, "int_parsing"}, {"0x10", 0, "int_parsing"}, {"abc", 0, "int_parsing"},
		{"99999999999999999999", 0, "int_parsing_size"},
	}
	for _, c := range ints {
		if got, typ := events.LaxInt(c.in); got != c.want || typ != c.typ {
			t.Errorf("LaxInt(%q) = %d, %q; want %d, %q", c.in, got, typ, c.want, c.typ)
		}
	}
	floats := []struct {
		in   string
		want float64
		typ  string
	}{
		{"1.5", 1.5, ""}, {" 2 ", 2, ""}, {"1e3", 1000, ""}, {"-.5", -0.5, ""}, {"inf", math.Inf(1), ""}, {"1e999", math.Inf(1), ""},
		{"1_0", 10, ""}, {"1_000.2_5", 1000.25, ""},
		{"", 0, "float_parsing"}, {"1.5s", 0, "float_parsing"}, {"0x1p-2", 0, "float_parsing"}, {"_1", 0, "float_parsing"}, {"1__0", 0, "float_parsing"}, {"1_.5", 0, "float_parsing"},
	}
	for _, c := range floats {
		if got, typ := events.LaxFloat(c.in); got != c.want || typ != c.typ {
			t.Errorf("LaxFloat(%q) = %v, %q; want %v, %q", c.in, got, typ, c.want, c.typ)
		}
	}
	for in, want := range map[string]int{"yes": 1, "True": 1, " on ": 1, "1": 1, "t": 1, "Y": 1, "no": 0, "FALSE": 0, "off": 0, "0": 0, "f": 0, "n": 0, "maybe": -1, "": -1, "2": -1} {
		b, ok := events.LaxBool(in)
		got := -1
		if ok {
			got = int(b2i(b))
		}
		if got != want {
			t.Errorf("LaxBool(%q) = %v, %v; want %d", in, b, ok, want)
		}
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// TestDecodeCoercesLikePydantic: the original service's lax mode took numeric strings for
// numbers, booleans for numbers, and 0/1 and boolean words for booleans (contract §2.1).
func TestDecodeCoercesLikePydantic(t *testing.T) {
	now := fuzzNow.UnixMilli()
	body := `{"event_id":"watch-0001","user_id":"u","session_id":"s","request_id":"r","ts_ms":" ` + itoa(now) +
		` ","item_id":"i","watch_time_sec":"1.5","percent_watched":"80","ended":"yes","playback_speed":true,"rebuffer_count":"3"}`
	w, verr := events.DecodeWatch([]byte(body), events.DefaultLimits(), fuzzNow)
	if verr != nil {
		t.Fatal(verr)
	}
	if w.TsMs != now || w.WatchTimeSec != 1.5 || *w.PercentWatched != 80 || !*w.Ended || *w.PlaybackSpeed != 1 || *w.RebufferCount != 3 {
		t.Errorf("decoded %+v", w)
	}
	for _, c := range []struct {
		ended string
		want  bool
	}{{`1`, true}, {`0`, false}, {`1.0`, true}, {`0.0`, false}, {`1e0`, true}, {`"off"`, false}} {
		w, verr := events.DecodeWatch([]byte(strings.Replace(body, `"yes"`, c.ended, 1)), events.DefaultLimits(), fuzzNow)
		if verr != nil || *w.Ended != c.want {
			t.Errorf("ended %s: %v, %v; want %v", c.ended, w, verr, c.want)
		}
	}
	imp := `{"user_id":"u","session_id":"s","request_id":"r","ts_ms":"` + itoa(now) + `","items":[{"item_id":"a","position":"2"},{"item_id":"b","position":true}]}`
	im, verr := events.DecodeImpression([]byte(imp), events.DefaultLimits(), fuzzNow)
	if verr != nil {
		t.Fatal(verr)
	}
	if im.Items[0].Position != 2 || im.Items[1].Position != 1 || im.TsMs != now {
		t.Errorf("decoded %+v", im)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
