package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"recsys/pkg/featurestore"
)

// The readiness message says why the Redis copy is not ready. It said "incomplete
// (repopulating from postgres)" also when only the check failed (Redis unreachable or slow),
// while nothing was repopulated.
func TestReadyTellsWhyTheRedisCopyIsNotReady(t *testing.T) {
	timeout := fmt.Errorf("check redis ready marker: %w", context.DeadlineExceeded)
	for _, tc := range []struct {
		name          string
		set           bool
		check, repop  error
		want, wantNot string
	}{
		{"before the first check", false, nil, nil, "not checked yet", "repopulating"},
		{"redis unreachable or slow", true, timeout, nil, "not checked (redis unreachable or slow): check redis ready marker: context deadline exceeded", "repopulating"},
		{"incomplete", true, nil, nil, "incomplete (repopulating from postgres)", ""},
		{"another process repopulates", true, nil, featurestore.ErrRepopulating, "another process is repopulating", ""},
		{"repopulation failed", true, nil, errors.New("read users: conn closed"), "repopulation from postgres failed, retried every heal interval: read users: conn closed", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Consumer{cfg: &Config{UnreadyAfter: 1}}
			if tc.set {
				c.redisNotReady(copyUnready(tc.check, tc.repop))
			}
			err := c.Ready(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Ready() = %v, want it to say %q", err, tc.want)
			}
			if tc.wantNot != "" && strings.Contains(err.Error(), tc.wantNot) {
				t.Fatalf("Ready() = %v, must not say %q", err, tc.wantNot)
			}
		})
	}
}
