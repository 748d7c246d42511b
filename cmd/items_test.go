package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"

	"recsys/pkg/testutil"
)

// `recsys items block A B A` (a list through xargs may repeat an id) blocks A and B: one
// statement cannot upsert a row twice, so the ids go in once each.
func TestItemsBlockWithARepeatedID(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"items", "block", "--pg.dsn", dsn, "item-a", "item-b", "item-a"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("items block item-a item-b item-a: %v", err)
	}
	if !strings.Contains(out.String(), `"blocked": 2`) {
		t.Errorf("items block output %s, want 2 blocked", out.String())
	}
}

// Item ids are checked as the API checks them, in characters: an id of 128 multi-byte
// letters, which the API accepted, was refused as longer than 128 (bytes), so such an item
// could not be taken down.
func TestItemIDs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ids     []string
		want    []string
		wantErr bool
	}{
		{"each once, sorted", []string{"b", "a", "b"}, []string{"a", "b"}, false},
		{"128 multi-byte characters", []string{strings.Repeat("é", 128)}, []string{strings.Repeat("é", 128)}, false},
		{"128 ascii characters", []string{strings.Repeat("x", 128)}, []string{strings.Repeat("x", 128)}, false},
		{"spaces kept", []string{" a "}, []string{" a "}, false},
		{"129 characters", []string{strings.Repeat("é", 129)}, nil, true},
		{"empty", []string{"a", ""}, nil, true},
	} {
		got, err := itemIDs(tc.ids)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("%s: itemIDs = %q, %v; want %q (error %v)", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

// Blocking an item again without --reason (a takedown list re-run, a moderation script that
// blocks a batch) kept the block but wiped the reason recorded with it, the legal reference of
// the takedown. A new --reason still replaces it.
func TestItemsBlockAgainKeepsTheReason(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	run := func(args ...string) string {
		t.Helper()
		root := NewRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(io.Discard)
		root.SetArgs(append(args, "--pg.dsn", dsn))
		if err := root.ExecuteContext(context.Background()); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out.String()
	}
	reasons := func() map[string]string {
		t.Helper()
		var items []blockedItem
		if err := json.Unmarshal([]byte(run("items", "blocked")), &items); err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, it := range items {
			m[it.ItemID] = it.Reason
		}
		return m
	}
	run("items", "block", "--reason", "DMCA 2026-118", "item-a")
	run("items", "block", "item-a", "item-b")
	if got := reasons(); got["item-a"] != "DMCA 2026-118" || got["item-b"] != "" {
		t.Errorf("reasons after blocking again without --reason: %q, want item-a's kept", got)
	}
	run("items", "block", "--reason", "DMCA 2026-201", "item-a")
	if got := reasons(); got["item-a"] != "DMCA 2026-201" {
		t.Errorf("reason after blocking again with a new --reason: %q, want it replaced", got)
	}
}
