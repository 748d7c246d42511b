package events

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
)

// TestEncodeMatchesJSON: the hand-written encoder must write exactly what encoding/json
// writes, for fixed edge cases and for random events.
func TestEncodeMatchesJSON(t *testing.T) {
	strs := []string{"", "plain", "with space", `quote"`, `back\slash`, "<b>&amp;</b>", "tab\tnl\ncr\r", "\x00\x1f\x7f",
		"é ü 日本", "\u2028\u2029", "bad \xff utf8", "emoji 🎬"}
	floats := []float64{0, math.Copysign(0, -1), 1, 42.5, 0.1, 1e-6, 9.99e-7, 1e-7, 123456789.125, 1e20, 1e21, 1.5e300, -3.25, 100, 80, -7, 1<<53 - 1, 1 << 53, -(1<<53 - 1)}
	r := rand.New(rand.NewPCG(1, 2))
	str := func() string { return strs[r.IntN(len(strs))] }
	optStr := func() *string {
		if r.IntN(3) == 0 {
			return nil
		}
		s := str()
		return &s
	}
	optFloat := func() *float64 {
		if r.IntN(3) == 0 {
			return nil
		}
		f := floats[r.IntN(len(floats))]
		return &f
	}
	ctx := func() *Context {
		if r.IntN(3) == 0 {
			return nil
		}
		return &Context{Device: optStr(), Platform: optStr(), AppVersion: optStr(), Locale: optStr(), Country: optStr(),
			Timezone: optStr(), Referrer: optStr(), UserAgent: optStr()}
	}
	common := func() Common {
		return Common{EventID: str(), UserID: str(), SessionID: str(), RequestID: str(), TsMs: r.Int64N(2e12) - 1e11,
			ServerReceivedTsMs: []int64{0, 1732845000123, -5}[r.IntN(3)], Context: ctx()}
	}
	var evs []Any
	evs = append(evs, &Impression{Common: common(), EventType: "impression"}, &Impression{Common: common(), Items: []ImpressionItem{}},
		&Watch{WatchTimeSec: math.NaN()}, &Watch{WatchTimeSec: math.Inf(1)}, &Legacy{})
	for range 3000 {
		switch r.IntN(3) {
		case 0:
			e := &Impression{Common: common(), EventType: str()}
			for range r.IntN(4) {
				e.Items = append(e.Items, ImpressionItem{ItemID: str(), Position: r.Int64N(100) - 3, FeedID: optStr(), Slot: optStr()})
			}
			evs = append(evs, e)
		case 1:
			e := &Watch{Common: common(), EventType: str(), ItemID: str(), WatchTimeSec: floats[r.IntN(len(floats))],
				PercentWatched: optFloat(), PlaybackSpeed: optFloat()}
			if r.IntN(2) == 0 {
				v := r.IntN(2) == 0
				e.Ended = &v
			}
			if r.IntN(2) == 0 {
				v := r.Int64N(10) - 2
				e.RebufferCount = &v
			}
			evs = append(evs, e)
		default:
			evs = append(evs, &Legacy{EventID: str(), UserID: str(), ItemID: str(), EventType: str(), Ts: r.Int64N(2e12)})
		}
	}
	for i, ev := range evs {
		want, wantErr := json.Marshal(ev)
		got, err := Encode(ev)
		if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("event %d: Encode = %s, %v\nencoding/json = %s, %v", i, got, err, want, wantErr)
		}
		// AppendEncode keeps what the buffer held, including on the encoding/json fallback.
		prefix := []byte("prefix")
		if got, err := AppendEncode(prefix, ev); (err != nil) != (wantErr != nil) || (err == nil && !bytes.Equal(got, append([]byte("prefix"), want...))) {
			t.Fatalf("event %d: AppendEncode = %s, %v, want prefix%s, %v", i, got, err, want, wantErr)
		}
		var c *Context
		switch e := ev.(type) {
		case *Impression:
			c = e.Context
		case *Watch:
			c = e.Context
		}
		if c != nil {
			want, _ := json.Marshal(c)
			if got, err := EncodeContext(c); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("event %d: EncodeContext = %s, %v, want %s", i, got, err, want)
			}
		}
	}
}

func BenchmarkEncodeWatch(b *testing.B) {
	pct, dev := 80.0, "tv"
	ended := true
	ev := &Watch{Common: Common{EventID: "bench-w-000000001", UserID: "user-42", SessionID: "sess-1", RequestID: "req-1", TsMs: 1732845000123,
		ServerReceivedTsMs: 1732845000200, Context: &Context{Device: &dev}}, EventType: "watch", ItemID: "item-7", WatchTimeSec: 42.5, PercentWatched: &pct, Ended: &ended}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(ev); err != nil {
			b.Fatal(err)
		}
	}
}
