package flagenv_test

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

func TestUnreadNamesTyposAndDroppedNames(t *testing.T) {
	fs := pflag.NewFlagSet("relay", pflag.ContinueOnError)
	fs.String("pg.dsn", "", "")
	fs.Int("relay.batch-size", 1, "")
	elsewhere := map[string]bool{"RECSYS_REDIS_URL": true, "RECSYS_PG_DSN": true}
	tests := []struct {
		name    string
		environ []string
		want    []string
	}{
		{"own settings and unrelated variables", []string{"RECSYS_PG_DSN=x", "RECSYS_RELAY_BATCH_SIZE=5", "HOME=/root", "DATABASE_URL=x"}, nil},
		{"typo", []string{"RECSYS_RELAY_BACTH_SIZE=5"}, []string{"RECSYS_RELAY_BACTH_SIZE: no such setting"}},
		// The roles share one configuration (a ConfigMap): a relay pod holds the API's settings.
		{"another command's setting", []string{"RECSYS_REDIS_URL=redis://r"}, nil},
		{"dropped legacy names", []string{"METRICS_PORT=9108", "ONLINE_CACHE_BACKEND=redis"}, []string{"METRICS_PORT: not read by recsys; instead: --http.addr", "ONLINE_CACHE_BACKEND: not read by recsys"}},
		{"test and script variables", []string{"RECSYS_INTEGRATION=1", "RECSYS_TEST_PG_DSN=x", "RECSYS_PG_PORT=5432", "RECSYS_REDIS_START_TIMEOUT=20", "RECSYS_RELAY_TEST_CHILD=1"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := flagenv.Unread(fs, elsewhere, tc.environ)
			if len(got) != len(tc.want) {
				t.Fatalf("Unread = %q, want %d entries like %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("Unread[%d] = %q, want it to start with %q", i, got[i], w)
				}
			}
		})
	}
}
