package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

func runFeatures(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"features"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// `recsys features verify` fails on a copy that is not complete, and passes once `recsys
// features rebuild` made it; both print the JSON report. (TestVerify in pkg/featurestore
// covers the comparisons.)
func TestFeaturesVerifyCommand(t *testing.T) {
	conn := []string{"--pg.dsn", testutil.MigratedDatabase(t), "--redis.url", testutil.StartPrivate(t, "redis").URL, "--redis.key-prefix", "fv:"}
	report := func(out string) featurestore.VerifyReport {
		t.Helper()
		var r featurestore.VerifyReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("output is not the JSON report: %v\n%s", err, out)
		}
		return r
	}
	out, err := runFeatures(t, append([]string{"verify", "--grace", "0s"}, conn...)...)
	if err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("verify of an empty copy: %v", err)
	}
	if r := report(out); r.Ready {
		t.Fatalf("an empty copy reported ready: %+v", r)
	}
	if _, err := runFeatures(t, append([]string{"rebuild"}, conn...)...); err != nil {
		t.Fatal(err)
	}
	out, err = runFeatures(t, append([]string{"verify", "--sample", "10"}, conn...)...)
	if err != nil {
		t.Fatalf("verify after a rebuild: %v\n%s", err, out)
	}
	if r := report(out); !r.OK() {
		t.Fatalf("report after a rebuild: %+v", r)
	}
	if _, err := runFeatures(t, append([]string{"verify", "--sample", "0"}, conn...)...); err == nil || !strings.Contains(err.Error(), "--sample") {
		t.Fatalf("--sample 0: %v", err)
	}
}

// --batch-size below 1 is refused naming the flag, before anything is opened (it used to
// become 5000 silently).
func TestFeaturesRebuildRefusesBatchSize(t *testing.T) {
	for _, size := range []string{"0", "-5"} {
		_, err := runFeatures(t, "rebuild", "--from-events", "--batch-size", size, "--pg.dsn", "postgres://nowhere.invalid/x")
		if err == nil || !strings.Contains(err.Error(), "--batch-size") {
			t.Fatalf("--batch-size %s: %v", size, err)
		}
	}
}
