package consumer_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"recsys/modules/consumer"
)

// lockedBuffer is a log sink the consumer's goroutines and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The consumer warns at start when Redis keeps neighbour lists as listpacks, and says nothing
// with the setting the services script (and compose) start Redis with.
func TestConsumerWarnsAboutRedisListpacks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		value string
		warn  bool
	}{{"128", true}, {"16", false}} {
		t.Run(tc.value, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			if err := e.rd.Do(ctx, e.rd.B().ConfigSet().ParameterValue().ParameterValue("zset-max-listpack-entries", tc.value).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			var logs lockedBuffer
			d := e.deps(t, metrics.NewSet())
			d.Log = slog.New(slog.NewJSONHandler(&logs, nil))
			m, err := consumer.New(e.config(), d)
			if err != nil {
				t.Fatal(err)
			}
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- m.Run(runCtx) }()
			waitFor(t, "consumer started", 30*time.Second, func() bool { return strings.Contains(logs.String(), "feature consumer started") })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			got := strings.Contains(logs.String(), `"level":"WARN","msg":"redis zset-max-listpack-entries is 128`)
			if got != tc.warn {
				t.Fatalf("warning logged: %v, want %v; logs:\n%s", got, tc.warn, logs.String())
			}
			if strings.Contains(logs.String(), "redis settings not checked") {
				t.Fatalf("settings not read:\n%s", logs.String())
			}
		})
	}
}
