package ingest

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"recsys/modules/relay"
)

// TestMaxEventBytesMustFitTheRelay: with the relay's flags in the process, an event limit the
// relay could not publish is a configuration error.
func TestMaxEventBytesMustFitTheRelay(t *testing.T) {
	for _, tc := range []struct {
		name      string
		relayArgs []string // nil: no relay flags in the process
		maxEvent  int
		wantErr   bool
	}{
		{"default with the relay's default", []string{}, 0, false},
		{"no relay flags", nil, 2 << 20, false},
		{"above the relay's default", []string{}, 1 << 20, true},
		{"within a larger relay setting", []string{"--relay.max-batch-bytes=8388608"}, 2 << 20, false},
		{"above a smaller relay setting", []string{"--relay.max-batch-bytes=131072"}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewConfig()
			if tc.relayArgs != nil {
				fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
				relay.NewConfig().RegisterFlags(fs)
				c.RegisterFlags(fs)
				if err := fs.Parse(tc.relayArgs); err != nil {
					t.Fatal(err)
				}
			}
			if tc.maxEvent != 0 {
				c.MaxEventBytes = tc.maxEvent
			}
			err := c.Validate()
			if (err != nil) != tc.wantErr || (err != nil && !strings.Contains(err.Error(), "--relay.max-batch-bytes")) {
				t.Errorf("Validate() = %v, want error %t", err, tc.wantErr)
			}
		})
	}
}
