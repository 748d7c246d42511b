package ingest

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestMissingEventIDSetting: --ingest.missing-event-id (RECSYS_INGEST_MISSING_EVENT_ID)
// takes "content" (the default) or "random", which reach the decoders' limits; anything
// else is refused at start with the flag and its values named.
func TestMissingEventIDSetting(t *testing.T) {
	cases := []struct {
		args       []string
		wantRandom bool
		wantErr    string
	}{
		{nil, false, ""},
		{[]string{"--ingest.missing-event-id=content"}, false, ""},
		{[]string{"--ingest.missing-event-id=random"}, true, ""},
		{[]string{"--ingest.missing-event-id=uuid"}, false, `--ingest.missing-event-id must be "content" or "random", got "uuid"`},
		{[]string{"--ingest.missing-event-id="}, false, `--ingest.missing-event-id must be "content" or "random", got ""`},
	}
	for _, tc := range cases {
		c := NewConfig()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		c.RegisterFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := c.Validate()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: error %v, want %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if got := c.limits().RandomMissingIDs; got != tc.wantRandom {
			t.Errorf("%v: RandomMissingIDs = %v, want %v", tc.args, got, tc.wantRandom)
		}
	}
}
