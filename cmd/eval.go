package cmd

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"recsys/pkg/eval"
)

func newEvalCmd() *cobra.Command {
	cfg := eval.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "eval",
		Short: "Measure recommendation quality offline on MovieLens ratings, through the product's feature and ranking code",
		Long: `Replay a MovieLens ratings file (ml-100k/u.data or ml-latest-small/ratings.csv; each
rating is a watch) through the same feature update (features.Apply) and ranking code as the
consumer and /reco, in process, and through baselines (most popular so far, the original
service's rule, item-kNN, BPR matrix factorisation as Gorse trains it). Protocols:
prequential (test then learn, in timestamp order) and leave-last-out. Prints a table;
--output-json and --output-svg write the report and a plot. The datasets are for evaluation
only: read them in place, never copy them into the repository. See docs/evaluation.md.`,
		Example: `  recsys eval --data ../shared/datasets/ml-latest-small/ratings.csv --output-json eval.json --output-svg eval.svg`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("invalid configuration:\n%w", err)
			}
			rep, err := eval.Run(cmd.Context(), cfg, os.Stderr)
			if err != nil {
				return fmt.Errorf("eval: %w", err)
			}
			return rep.WriteTable(cmd.OutOrStdout())
		},
	}
	cfg.RegisterFlags(cmd.Flags())
	return cmd
}
