package cmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/spf13/cobra"

	"recsys/pkg/flagenv"
	"recsys/pkg/guardrails"
)

func newGuardrailsCmd() *cobra.Command {
	var (
		baselineJSON, contractJSON, recoJSON string
		baseURL, targetsFile, out, saveDir   string
		apiKey                               string
		days, minSamples                     int
	)
	cmd := &cobra.Command{
		Use:   "guardrails",
		Short: "Gate a deploy on KPI and SLA guardrails (exit 1 if any check fails or is unknown)",
		Long: `Compare the KPI snapshot (/analytics/baseline), the targets (/contract) and the /reco
latency window (/metrics/reco) and print one line per check:
  [PASS|FAIL|UNKNOWN|SKIPPED] name: observed=… <cmp> target=… (unit)[; message]
then "[SUMMARY] passed=… failed=… unknown=… skipped=…".

Inputs come from the three JSON files (--baseline-json, --contract-json, --reco-metrics-json),
or, with --base-url, straight from a running API (--days sets the KPI window).
--targets replaces the contract's targets by check name with those of a file such as
config/guardrails.ci.json (targets for synthetic CI traffic; the contract's KPI targets are
product goals real users must reach, which synthetic traffic cannot). The latency checks are
skipped when /metrics/reco has fewer than --min-sla-samples samples.
Exit 0 when every check passes or is skipped, 1 otherwise (an unknown value fails the gate).`,
		Example: `  recsys guardrails --base-url http://localhost:8080 --days 1 --targets config/guardrails.ci.json --output-json guardrails.json
  recsys guardrails --baseline-json baseline-kpi.json --contract-json contract.json --reco-metrics-json reco-metrics.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var t *guardrails.Targets
			if targetsFile != "" {
				b, err := os.ReadFile(targetsFile)
				if err != nil {
					return fmt.Errorf("--targets: %w", err)
				}
				tt, err := guardrails.ParseTargets(b)
				if err != nil {
					return fmt.Errorf("--targets %s: %w", targetsFile, err)
				}
				t = &tt
				if !cmd.Flags().Changed("min-sla-samples") && tt.MinSLASamples != nil {
					minSamples = *tt.MinSLASamples
				}
			}
			var (
				in  guardrails.Inputs
				src map[string]string
				err error
			)
			if baseURL != "" {
				if days < 1 || days > 30 {
					return fmt.Errorf("--days must be between 1 and 30, got %d", days)
				}
				if saveDir != "" {
					if err := os.MkdirAll(saveDir, 0o755); err != nil {
						return fmt.Errorf("--save-dir: %w", err)
					}
				}
				in, src, err = guardrails.Fetch(cmd.Context(), http.DefaultClient, baseURL, apiKey, days, saveDir)
			} else {
				in, src, err = guardrails.ReadFiles(baselineJSON, contractJSON, recoJSON)
			}
			if err != nil {
				return fmt.Errorf("read guardrail inputs:\n%w", err)
			}
			r := guardrails.Evaluate(in, t, minSamples)
			r.Sources = src
			if targetsFile != "" {
				r.Sources["targets"] = targetsFile
			}
			r.Print(cmd.OutOrStdout())
			if out != "" {
				var buf bytes.Buffer
				enc := json.NewEncoder(&buf)
				enc.SetEscapeHTML(false) // ">=" as the original tool writes it, not "\u003e="
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return fmt.Errorf("encode guardrails report: %w", err)
				}
				if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
					return fmt.Errorf("--output-json: %w", err)
				}
			}
			if !r.OK() {
				return &exitError{code: 1, err: errors.New("guardrails: a check failed or is unknown")}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&baselineJSON, "baseline-json", "baseline-kpi.json", "KPI snapshot file (GET /analytics/baseline)")
	f.StringVar(&contractJSON, "contract-json", "contract.json", "targets file (GET /contract)")
	f.StringVar(&recoJSON, "reco-metrics-json", "reco-metrics.json", "latency window file (GET /metrics/reco)")
	f.StringVar(&baseURL, "base-url", "", "fetch the three inputs from this API instead of reading files")
	f.IntVar(&days, "days", 7, "KPI window in days (1-30) when fetching with --base-url")
	f.StringVar(&saveDir, "save-dir", "", "with --base-url, also save the fetched inputs in this folder (baseline-kpi.json, contract.json, reco-metrics.json)")
	f.StringVar(&targetsFile, "targets", "", "JSON file of targets that replace the contract's, by check name (e.g. config/guardrails.ci.json)")
	f.IntVar(&minSamples, "min-sla-samples", guardrails.DefaultMinSLASamples, "fewest /metrics/reco samples for the latency checks (negative counts as 0; default from --targets when it sets one)")
	f.StringVar(&out, "output-json", "", "also write the report to this file")
	f.StringVar(&apiKey, "api-key", "", "with --base-url, API key sent as Authorization: Bearer on every request, needed when the server runs with --http.api-keys-file; "+
		"guardrails needs the ops scope (/analytics/baseline, /contract, /metrics/reco). "+
		"Prefer the environment variable RECSYS_API_KEY to the flag: flags show in process listings")
	flagenv.Secret(f, "api-key")
	return cmd
}
