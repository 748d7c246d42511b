package cmd

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	_ "recsys/modules/all"
	"recsys/pkg/flagenv"
)

// eachFlag calls fn for every flag of every visible command, as the reference lists them.
func eachFlag(fn func(c *cobra.Command, fs *pflag.FlagSet, r flagenv.Row)) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden {
			return
		}
		for _, fs := range []*pflag.FlagSet{c.LocalNonPersistentFlags(), c.PersistentFlags()} {
			for _, r := range flagenv.Rows(fs) {
				fn(c, fs, r)
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewRootCmd())
}

// A flag name several commands use with different defaults or help (--timeout, --k,
// --base-url, ...) gets one row per variant, each listing its own commands.
func TestConfigDocHasEveryCommandsOwnVariant(t *testing.T) {
	variants := configVariants()
	eachFlag(func(c *cobra.Command, _ *pflag.FlagSet, r flagenv.Row) {
		var found []variant
		for _, v := range variants {
			for _, path := range v.commands {
				if v.row.Flag == r.Flag && path == c.CommandPath() {
					found = append(found, v)
				}
			}
		}
		if len(found) != 1 {
			t.Errorf("--%s of %q is in %d rows, want 1", r.Flag, c.CommandPath(), len(found))
			return
		}
		if got := found[0].row; got.Default != r.Default || got.Usage != r.Usage || got.Aliases != r.Aliases {
			t.Errorf("--%s of %q documented as default %s %q, want default %s %q", r.Flag, c.CommandPath(), got.Default, got.Usage, r.Default, r.Usage)
		}
	})
	doc := ConfigDoc()
	for _, want := range []string{"`--k` | `RECSYS_K` |  | `10` | recsys eval |", "`--k` | `RECSYS_K` |  | `20` | recsys load |"} {
		if !strings.Contains(doc, want) {
			t.Errorf("configuration doc lacks the row %q", want)
		}
	}
}

// A name listed as not honoured must really be read by no flag, and the reference lists it.
func TestDroppedLegacyNamesAreNoAlias(t *testing.T) {
	dropped := map[string]bool{}
	for _, d := range flagenv.DroppedNames {
		dropped[d.Name] = true
	}
	eachFlag(func(c *cobra.Command, fs *pflag.FlagSet, r flagenv.Row) {
		for _, a := range strings.Split(r.Aliases, ", ") {
			name, _, _ := strings.Cut(strings.Trim(a, "`"), " ")
			if dropped[name] {
				t.Errorf("%s is listed as not honoured but is an alias of --%s (%s)", name, r.Flag, c.CommandPath())
			}
		}
	})
	doc := ConfigDoc()
	for name := range dropped {
		if !strings.Contains(doc, "| `"+name+"` |") {
			t.Errorf("configuration doc does not list %s", name)
		}
	}
}
