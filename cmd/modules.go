package cmd

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"recsys/pkg/module"
)

func newModulesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "modules",
		Short: "List the registered modules: role flag, dependencies, the clients they need",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "MODULE\tROLE\tDEPENDS ON\tNEEDS\tSUMMARY")
			for _, i := range module.Default().All() {
				role := "-"
				if i.Role {
					role = "yes"
				}
				deps := strings.Join(i.DependsOn, ",")
				if deps == "" {
					deps = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", i.Name, role, deps, i.Needs, i.Summary)
			}
			return w.Flush()
		},
	}
}
