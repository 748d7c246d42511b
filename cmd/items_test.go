package cmd

import (
	"bytes"
	"context"
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
