package cmd

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"recsys/pkg/smoke"
)

func newSmokeCmd() *cobra.Command {
	cfg := smoke.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "smoke",
		Short: "Probe a running stack end to end (JSON report; exit 1 if any check fails)",
		Long: `Probe a running stack: readyz, seed_events (POST /event), reco_traffic and
watch_traffic (GET /reco then a watch of the first item), watch_idempotency (the same watch
twice), consumer_applied (a watched item leaves the user's /reco list and its co-visitation
neighbour enters it: the consumer really applied the events), outbox_settled (/healthz
outbox snapshot drained, no dead row) and reco_metrics_samples (/metrics/reco has samples).

Prints the JSON report (checks are "pass" or "fail"; "details" says why) and exits 1 if any
check failed. Connection errors and timeouts are failed checks in the report, never a crash.`,
		Example: `  recsys smoke --base-url http://127.0.0.1:8080 --output-json smoke.json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := smoke.Run(cmd.Context(), cfg)
			var buf bytes.Buffer
			if err := r.WriteJSON(&buf); err != nil {
				return fmt.Errorf("encode smoke report: %w", err)
			}
			if _, err := cmd.OutOrStdout().Write(buf.Bytes()); err != nil {
				return err
			}
			if cfg.OutputJSON != "" {
				if err := os.WriteFile(cfg.OutputJSON, buf.Bytes(), 0o644); err != nil {
					return fmt.Errorf("--output-json: %w", err)
				}
			}
			if !r.OK() {
				return &exitError{code: 1, err: errors.New("smoke: a check failed (see details in the report)")}
			}
			return nil
		},
	}
	cfg.RegisterFlags(cmd.Flags())
	return cmd
}
