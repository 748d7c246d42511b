// Package features is THE feature logic of recsys: how one interaction (a watch, an impression
// list or a legacy view/click/purchase) changes a user's state and the global item statistics.
//
// Apply is pure and deterministic: it takes the user's state and one event and returns the new
// user state plus a Delta of global increments. Stores only add Deltas up:
//   - the consumer applies them to PostgreSQL (durable) and Redis (serving);
//   - MemoryStore applies them in process for the evaluation harness and tests.
//
// Time decay uses forward decay with a moving landmark (see Decay), so no store ever sweeps its
// keys to age them: an increment of weight w at time t is stored as w·2^((t−L)/h), and a reader
// multiplies the stored sum by 2^(−(now−L)/h).
package features

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/ranking"
)

// HistoryEntry and ImpressionStat are shared with pkg/ranking (ranking cannot import features).
type (
	HistoryEntry   = ranking.HistoryEntry
	ImpressionStat = ranking.ImpressionStat
)

// Config holds the feature parameters. Stores and Apply must use the same values; changing
// them only affects events applied afterwards (a rebuild from events recomputes everything).
type Config struct {
	// HistorySize is the number of distinct recent items kept per user (N).
	HistorySize int
	// WatchedCap bounds the per-user watched set used for exclusion (oldest evicted first).
	WatchedCap int
	// ImpressionMemory bounds the per-user impression counters (least recently shown evicted).
	ImpressionMemory int
	// CovisWindow (W): a watch forms co-visitation pairs with the user's last W history items,
	// not only the previous one.
	CovisWindow int
	// CovisDistanceDecay multiplies a pair's weight per position of distance in the history
	// (the previous item has distance 1 and factor 1).
	CovisDistanceDecay float64
	// CovisBackwardWeight scales the later → earlier direction of a pair (1 = symmetric).
	CovisBackwardWeight float64
	// CovisGapHalfLife halves a pair's weight per this much time between the two watches.
	CovisGapHalfLife time.Duration
	// CovisHalfLife is the forward-decay half-life of co-visitation strengths.
	CovisHalfLife time.Duration
	// NeighboursPerItem (M) is the number of neighbours kept per item, strongest first.
	NeighboursPerItem int
	// PopShortHalfLife and PopLongHalfLife are the popularity half-lives (trending / popular).
	PopShortHalfLife time.Duration
	PopLongHalfLife  time.Duration
	// TopListSize is the length of the trending and popular top lists a store maintains.
	TopListSize int
	// FreshSize is the number of most recently first-seen items a store keeps for exploration.
	FreshSize int

	prefix string
}

// DefaultConfig returns the tuned defaults (see docs/evaluation.md).
func DefaultConfig() Config {
	return Config{
		HistorySize:         50,
		WatchedCap:          500,
		ImpressionMemory:    300,
		CovisWindow:         20,
		CovisDistanceDecay:  0.8,
		CovisBackwardWeight: 0.5,
		CovisGapHalfLife:    7 * 24 * time.Hour,
		CovisHalfLife:       2 * 365 * 24 * time.Hour,
		NeighboursPerItem:   100,
		PopShortHalfLife:    24 * time.Hour,
		PopLongHalfLife:     30 * 24 * time.Hour,
		TopListSize:         500,
		FreshSize:           500,
	}
}

// RegisterFlags adds the feature flags named prefix+"<kebab>"; pass "features." (the empty
// prefix means "features." too).
func (c *Config) RegisterFlags(fs *pflag.FlagSet, prefix string) {
	if prefix == "" {
		prefix = "features."
	}
	c.prefix = prefix
	p := prefix
	fs.IntVar(&c.HistorySize, p+"history-size", c.HistorySize, "distinct recent items kept per user")
	fs.IntVar(&c.WatchedCap, p+"watched-cap", c.WatchedCap, "watched items remembered per user for exclusion (oldest evicted)")
	fs.IntVar(&c.ImpressionMemory, p+"impression-memory", c.ImpressionMemory, "items with impression counters kept per user (least recently shown evicted)")
	fs.IntVar(&c.CovisWindow, p+"covis-window", c.CovisWindow, "a watch is paired with the user's last W history items")
	fs.Float64Var(&c.CovisDistanceDecay, p+"covis-distance-decay", c.CovisDistanceDecay, "pair weight multiplier per position of distance in the history (0,1]")
	fs.Float64Var(&c.CovisBackwardWeight, p+"covis-backward-weight", c.CovisBackwardWeight, "weight of the later → earlier direction of a co-visitation pair relative to earlier → later [0,1]")
	fs.DurationVar(&c.CovisGapHalfLife, p+"covis-gap-half-life", c.CovisGapHalfLife, "pair weight halves per this much time between the two watches")
	fs.DurationVar(&c.CovisHalfLife, p+"covis-half-life", c.CovisHalfLife, "forward-decay half-life of co-visitation strengths")
	fs.IntVar(&c.NeighboursPerItem, p+"neighbours-per-item", c.NeighboursPerItem, "co-visitation neighbours kept per item (top M)")
	fs.DurationVar(&c.PopShortHalfLife, p+"pop-short-half-life", c.PopShortHalfLife, "half-life of the trending (short-term) popularity")
	fs.DurationVar(&c.PopLongHalfLife, p+"pop-long-half-life", c.PopLongHalfLife, "half-life of the long-term popularity")
	fs.IntVar(&c.TopListSize, p+"top-list-size", c.TopListSize, "length of the trending and popular top lists")
	fs.IntVar(&c.FreshSize, p+"fresh-size", c.FreshSize, "most recently first-seen items kept for exploration")
}

// FlagPrefix is the prefix of the flags RegisterFlags added ("features." by default).
func (c Config) FlagPrefix() string {
	if c.prefix == "" {
		return "features."
	}
	return c.prefix
}

// Validate reports every invalid setting, naming the flag.
func (c Config) Validate() error {
	p := c.FlagPrefix()
	var errs []error
	bad := func(flag, want string, got any) {
		errs = append(errs, fmt.Errorf("--%s%s must be %s, got %v", p, flag, want, got))
	}
	if c.HistorySize < 1 || c.HistorySize > 1000 {
		bad("history-size", "between 1 and 1000", c.HistorySize)
	}
	if c.WatchedCap < 1 || c.WatchedCap > 100000 {
		bad("watched-cap", "between 1 and 100000", c.WatchedCap)
	}
	if c.WatchedCap < c.HistorySize {
		bad("watched-cap", fmt.Sprintf(">= --%shistory-size (%d)", p, c.HistorySize), c.WatchedCap)
	}
	if c.ImpressionMemory < 0 || c.ImpressionMemory > 100000 {
		bad("impression-memory", "between 0 and 100000", c.ImpressionMemory)
	}
	if c.CovisWindow < 0 || c.CovisWindow > c.HistorySize {
		bad("covis-window", fmt.Sprintf("between 0 and --%shistory-size (%d)", p, c.HistorySize), c.CovisWindow)
	}
	if !(c.CovisDistanceDecay > 0 && c.CovisDistanceDecay <= 1) {
		bad("covis-distance-decay", "in (0,1]", c.CovisDistanceDecay)
	}
	if !(c.CovisBackwardWeight >= 0 && c.CovisBackwardWeight <= 1) {
		bad("covis-backward-weight", "between 0 and 1", c.CovisBackwardWeight)
	}
	if c.CovisGapHalfLife <= 0 {
		bad("covis-gap-half-life", "> 0", c.CovisGapHalfLife)
	}
	if c.CovisHalfLife < time.Minute {
		bad("covis-half-life", ">= 1m", c.CovisHalfLife)
	}
	if c.NeighboursPerItem < 1 || c.NeighboursPerItem > 10000 {
		bad("neighbours-per-item", "between 1 and 10000", c.NeighboursPerItem)
	}
	if c.PopShortHalfLife < time.Minute {
		bad("pop-short-half-life", ">= 1m", c.PopShortHalfLife)
	}
	if c.PopLongHalfLife < c.PopShortHalfLife {
		bad("pop-long-half-life", fmt.Sprintf(">= --%spop-short-half-life (%s)", p, c.PopShortHalfLife), c.PopLongHalfLife)
	}
	if c.TopListSize < 1 || c.TopListSize > 100000 {
		bad("top-list-size", "between 1 and 100000", c.TopListSize)
	}
	if c.FreshSize < 0 || c.FreshSize > 100000 {
		bad("fresh-size", "between 0 and 100000", c.FreshSize)
	}
	return errors.Join(errs...)
}

// Kind is the type of an Interaction.
type Kind uint8

// Interaction kinds.
const (
	KindWatch Kind = iota + 1
	KindImpression
	// KindLegacy is a legacy /event view, click or purchase (LegacyType).
	KindLegacy
)

// String names the kind as on the wire.
func (k Kind) String() string {
	switch k {
	case KindWatch:
		return "watch"
	case KindImpression:
		return "impression"
	case KindLegacy:
		return "legacy"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Interaction is one event, decoded and validated by the caller.
type Interaction struct {
	Kind    Kind
	EventID string
	UserID  string
	// TsMs is the event time (client timestamp), Unix milliseconds. Old events are applied
	// like any other (forward decay weighs them by their own time).
	TsMs int64
	// ItemID is the watched item (KindWatch, KindLegacy).
	ItemID string
	// Items are the shown items in position order (KindImpression).
	Items        []string
	WatchTimeSec float64
	// PercentWatched is 0–100 when reported.
	PercentWatched *float64
	Ended          *bool
	// LegacyType is "view", "click" or "purchase" (KindLegacy).
	LegacyType string
}

// Quality is the weight of one watch in (0, 1]: how strongly it says the user liked the item.
//   - percent_watched p known: 0.2 + 0.8·p/100;
//   - else watch_time_sec t > 0: 0.2 + 0.8·min(1, t/ReferenceWatchSec);
//   - else 0.5 (a watch with no evidence of depth);
//   - ended=true raises it to 1 (the user finished it);
//   - legacy events: the original weights view 1, click 3, purchase 10 divided by 10
//     (0.1, 0.3, 1), unknown legacy types 0.1.
//
// Impressions are not watches: 0.
func Quality(i Interaction) float64 {
	switch i.Kind {
	case KindWatch:
		q := 0.5
		switch {
		case i.PercentWatched != nil:
			q = 0.2 + 0.8*clamp01(*i.PercentWatched/100)
		case i.WatchTimeSec > 0:
			q = 0.2 + 0.8*clamp01(i.WatchTimeSec/ReferenceWatchSec)
		}
		if i.Ended != nil && *i.Ended {
			q = 1
		}
		return q
	case KindLegacy:
		switch i.LegacyType {
		case "click":
			return 0.3
		case "purchase":
			return 1
		}
		return 0.1
	}
	return 0
}

// ReferenceWatchSec is the watch time that counts as a full watch when percent_watched is
// missing.
const ReferenceWatchSec = 120.0

// MaxWatchTimeSec caps one watch's watch_time_sec in the item statistics (about 116 days;
// the contract sets no upper bound). Item sums stay finite and inside float8, which
// PostgreSQL refuses to overflow: without the cap two watches of 1e308 s would make every
// transaction holding the second one fail, in the stream and in a rebuild alike.
const MaxWatchTimeSec = 1e7

func clampWatchTime(t float64) float64 {
	if !(t > 0) { // also NaN
		return 0
	}
	return min(t, MaxWatchTimeSec)
}

func clamp01(x float64) float64 {
	if !(x > 0) { // also NaN
		return 0
	}
	if x > 1 {
		return 1
	}
	return x
}
