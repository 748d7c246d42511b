package cmd

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"recsys/pkg/loadgen"
)

func newLoadCmd() *cobra.Command {
	cfg := loadgen.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Load-test the API (GET /reco, ingest or mixed traffic); exit 2 above the error threshold",
		Long: `Send bounded load to a running API and report throughput, errors and latency (HDR
histogram, 3 significant digits).

Modes: closed loop (default; --concurrency workers send back to back) or open loop (--rate N:
operations are due every 1/N s and latency counts from the due time, so server queueing is
measured, not hidden); the --warmup operations before the run keep the same mode and rate.
Scenarios: reco, ingest (--ingest-mode watch|batch) and mixed (GET /reco, then watches of
shown items and of catalog items, like real clients).
The run stops after --requests operations or --duration, whichever comes first, and targets
loopback addresses only unless --allow-non-loopback is given.

The JSON report keeps the original load_reco fields (config, benchmark_elapsed_sec, summary,
sla, contract, reco_metrics_snapshot) and adds per-endpoint summaries, percentiles and a
per-second timeline; --output-html draws latency over time and by percentile.
Exit 0, or 2 when the error rate is above --max-error-rate-pct (SLA misses never fail the run:
that is the guardrails gate's job).`,
		Example: `  recsys load --requests 5000 --concurrency 32 --output-json load.json
  recsys load --scenario mixed --rate 100 --duration 20s --requests 100000 --autolog-impressions --output-html load.html`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.ApplyLegacyFlags(cmd.Flags())
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("invalid configuration:\n%w", err)
			}
			var progress io.Writer
			stderr := cmd.ErrOrStderr()
			if f, ok := stderr.(*os.File); (cfg.Progress == "auto" && ok && term.IsTerminal(int(f.Fd()))) || cfg.Progress == "always" {
				progress = stderr
			}
			r, err := loadgen.Run(cmd.Context(), cfg, progress)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := r.WriteJSON(&buf); err != nil {
				return err
			}
			if _, err := cmd.OutOrStdout().Write(buf.Bytes()); err != nil {
				return err
			}
			if cfg.OutputJSON != "" {
				if err := os.WriteFile(cfg.OutputJSON, buf.Bytes(), 0o644); err != nil {
					return fmt.Errorf("--output-json: %w", err)
				}
			}
			if cfg.OutputHTML != "" {
				f, err := os.Create(cfg.OutputHTML)
				if err != nil {
					return fmt.Errorf("--output-html: %w", err)
				}
				werr := r.WriteHTML(f)
				if cerr := f.Close(); werr == nil {
					werr = cerr
				}
				if werr != nil {
					return fmt.Errorf("--output-html: %w", werr)
				}
			}
			fmt.Fprintln(stderr, r.Headline())
			if r.Failed() {
				return &exitError{code: 2, err: fmt.Errorf("error rate %.3f%% is above --max-error-rate-pct %g", r.Summary.ErrorRatePct, cfg.MaxErrorRatePct)}
			}
			return nil
		},
	}
	cfg.RegisterFlags(cmd.Flags())
	return cmd
}
