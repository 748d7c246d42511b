package cmd

import (
	"bytes"
	"context"
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
