package cmd_test

import (
	"os"
	"testing"

	"recsys/cmd"
	_ "recsys/modules/all"
)

func TestConfigurationDocIsCurrent(t *testing.T) {
	want := cmd.ConfigDoc()
	got, err := os.ReadFile("../docs/configuration.md")
	if err != nil || string(got) != want {
		t.Fatal("docs/configuration.md is stale: run `make docs` (recsys config-doc > docs/configuration.md) and commit it")
	}
}
