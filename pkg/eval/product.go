package eval

import (
	"fmt"
	"slices"
	"strconv"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// ProductOptions configures the product under evaluation.
type ProductOptions struct {
	Features features.Config
	Ranking  ranking.Config
	// RatingAsPercent maps a rating r (of 5) to percent_watched = 20·r, so watch quality
	// follows the rating; off, every rating is a watch with no depth information.
	RatingAsPercent bool
	// EASE, when set, adds the learned component: an EASE item-item model trained on the
	// interactions the product has observed so far, retrained every RetrainEvery events
	// (as a trainer module would from the durable events), served through Snapshot.Similar.
	EASE         *ranking.EASEOptions
	RetrainEvery int
}

// Product is recsys itself: every rating becomes a features.Interaction applied with
// features.MemoryStore (features.Apply inside), and recommendations come from the store's
// Snapshot ranked by the ranking code /reco runs.
type Product struct {
	opts   ProductOptions
	store  *features.MemoryStore
	ranker ranking.Ranker
	snap   ranking.SnapshotOptions
	name   string
	n      int

	users   map[string][]string // distinct items per user, for training
	seen    map[string]map[string]bool
	pending int
	Trains  int
	// lastTs is the latest event time applied: the store's decayed popularity is forward-decayed
	// from landmarks at or before it and cannot be read at an earlier time.
	lastTs int64
}

// NewProduct returns the product with its options; they must have passed Validate.
func NewProduct(name string, o ProductOptions) *Product {
	p := &Product{
		opts:   o,
		store:  features.NewMemoryStore(o.Features),
		ranker: ranking.NewWeighted(o.Ranking),
		snap:   o.Ranking.SnapshotOptions(),
		name:   name,
	}
	if o.EASE != nil {
		p.users = map[string][]string{}
		p.seen = map[string]map[string]bool{}
	}
	return p
}

// Train retrains the learned model on every interaction observed so far (no-op without EASE).
func (p *Product) Train() {
	if p.opts.EASE == nil {
		return
	}
	p.pending = 0
	ids := make([]string, 0, len(p.users))
	for u := range p.users {
		ids = append(ids, u)
	}
	slices.Sort(ids)
	rows := make([][]string, 0, len(ids))
	for _, u := range ids {
		rows = append(rows, p.users[u])
	}
	m, err := ranking.TrainEASE(rows, *p.opts.EASE)
	if err != nil {
		panic(fmt.Sprintf("eval: EASE options were validated: %v", err))
	}
	p.store.SetItemModel(m)
	p.Trains++
}

func (p *Product) Name() string { return p.name }

// Store exposes the feature store (for tests).
func (p *Product) Store() *features.MemoryStore { return p.store }

func (p *Product) Recommend(user string, nowMs int64, k int) []string {
	return p.rank(user, nowMs, k).Items
}

// rank asks at nowMs, or at the latest applied event if that is later. Leave-last-out asks at
// each user's held-out time after applying every other event, years later in
// ml-latest-small: read back that far, the trending score (24 h half-life) of the store's
// items is 2^(years·365), +Inf, and every candidate's score was NaN (Inf/Inf), so the top k
// was in arbitrary order. A store that has seen events up to lastTs is asked at lastTs, as a
// batch model is used after its fit; in the prequential replay nowMs is never earlier.
func (p *Product) rank(user string, nowMs int64, k int) ranking.Result {
	s := p.store.Snapshot(user, max(nowMs, p.lastTs), p.snap)
	return p.ranker.Rank(&s, k)
}

func (p *Product) Observe(r Rating) {
	p.n++
	p.lastTs = max(p.lastTs, r.TsMs)
	ev := features.Interaction{
		Kind:    features.KindWatch,
		EventID: strconv.Itoa(r.Line),
		UserID:  r.User,
		TsMs:    r.TsMs,
		ItemID:  r.Item,
	}
	if p.opts.RatingAsPercent {
		pct := min(max(r.Value*20, 0), 100)
		ev.PercentWatched = &pct
	}
	p.store.Apply(ev)
	if p.opts.EASE != nil {
		s := p.seen[r.User]
		if s == nil {
			s = map[string]bool{}
			p.seen[r.User] = s
		}
		if !s[r.Item] {
			s[r.Item] = true
			p.users[r.User] = append(p.users[r.User], r.Item)
		}
		p.pending++
		if p.opts.RetrainEvery > 0 && p.pending >= p.opts.RetrainEvery {
			p.Train()
		}
	}
}
