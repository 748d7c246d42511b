package featurestore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// CheckFeatureConfig reports the decay half-lives of the configuration that differ from those
// the stored features are relative to (feature_meta), one message per half-life, each naming
// the fix. The stored ones win, in every consumer and reader: popularity and co-visitation
// values are sums forward-decayed with them, which another half-life would misread. So a
// changed flag takes no effect, silently, until the features are rebuilt from the events
// (`recsys features rebuild --from-events`, which records the flags' values). Nothing to
// report before the first event.
func (s *Store) CheckFeatureConfig(ctx context.Context) ([]string, error) {
	m, err := loadMeta(ctx, s.pg)
	if errors.Is(err, errNoMeta) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, h := range []struct {
		flag     string
		conf     time.Duration
		storedMs float64
	}{
		{"pop-short-half-life", s.cfg.PopShortHalfLife, m.Short.HalfLifeMs},
		{"pop-long-half-life", s.cfg.PopLongHalfLife, m.Long.HalfLifeMs},
		{"covis-half-life", s.cfg.CovisHalfLife, m.Covis.HalfLifeMs},
	} {
		if float64(h.conf.Milliseconds()) == h.storedMs {
			continue
		}
		stored := time.Duration(h.storedMs * float64(time.Millisecond))
		out = append(out, fmt.Sprintf("--%s%s is %s but the stored features decay with %s (feature_meta, recorded when the first event was applied): "+
			"the flag takes no effect; set it back to %s, or apply it with `recsys features rebuild --from-events` "+
			"(docs/runbook.md \"Settings every pod must agree on\")", s.cfg.FlagPrefix(), h.flag, h.conf, stored, stored))
	}
	return out, nil
}
