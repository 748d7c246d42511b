// Package kpi holds the contract's product and service targets (api-contract §9.3), which
// GET /contract and GET /analytics/baseline both serve and `recsys guardrails` reads back.
package kpi

import "encoding/json"

// Targets are the KPI targets in the contract's wording and order.
type Targets struct {
	CTRAt20             string `json:"ctr_at_20"`
	AvgWatchTimeSec     string `json:"avg_watch_time_sec"`
	CatalogCoverageAt20 string `json:"catalog_coverage_at_20"`
}

// SLA are the service-level targets.
type SLA struct {
	RecoP95Ms       int         `json:"reco_p95_ms"`
	RecoP99Ms       int         `json:"reco_p99_ms"`
	APIErrorRatePct json.Number `json:"api_error_rate_pct"` // 1.0, not 1: the original prints a float
}

// ContractTargets and ContractSLA are the contract's values.
var (
	ContractTargets = Targets{CTRAt20: ">= 8%", AvgWatchTimeSec: ">= 35", CatalogCoverageAt20: ">= 60%"}
	ContractSLA     = SLA{RecoP95Ms: 120, RecoP99Ms: 200, APIErrorRatePct: "1.0"}
)
