// Package ingest is the event ingestion module of the api role: POST /log/impression,
// /log/watch, /log/batch and /event, and GET /contract (api-contract §2.6–2.9, §2.12).
//
// Every accepted event is stored with its event_outbox frame in one PostgreSQL transaction by
// the group-commit writer of pkg/ingest before the request is answered; the relay publishes
// the outbox to Kafka and the consumer applies features from there. /event (legacy
// view/click/purchase) takes the same path — stored raw, then a frame with event_type
// "legacy" in a watches topic outbox row — so the consumer is the only writer of features. The
// module also deletes old raw events and dedup keys in bounded batches (--ingest.raw-retention,
// --ingest.dedup-retention), and keeps those tables' BRIN summaries narrow (retention.go).
//
// Each group commit writes one outbox row per (topic, lane) carrying its new events as frames
// (pkg/outbox batch rows); --ingest.outbox-lanes (shared with the /reco autolog's writer, so
// in pkg/infra's config) sets the lane count.
//
// Responses keep the contract's fields; outbox_enqueued is true (or counts) only when the
// event's outbox frame was really written, and inserted_events counts events that were new. Errors:
// 422 with a pydantic-style detail list (every bad field, with its loc, cut after 1000 entries
// or once their inputs would echo more than the body's size, 64 KiB at least; an event encoding to
// more than --ingest.max-event-bytes is one "event_too_large" entry located at the field that
// makes it so, or at the event), 413 over the body
// limit, 415 for a non-JSON content type or a compressed body (Content-Encoding other than
// identity), 408 for a body not received within --http.read-timeout (retry it), 503 "failed to persist ... event: database
// unavailable" when PostgreSQL is down or slower than --ingest.write-timeout (a 503 means nothing
// of the request was stored: a request a writer has taken waits for its transaction's outcome),
// 503 "... service is shutting down" after the writer closed.
//
// Metrics:
//
//	recsys_ingest_events_total{endpoint,kind,outcome}   counter: events answered, outcome accepted | duplicate
//	recsys_ingest_rejected_total{endpoint,reason}       counter: requests refused; reason validation |
//	                                                     malformed_json | body_too_large | event_too_large |
//	                                                     read_timeout | unsupported_media_type | unavailable | shutdown |
//	                                                     outcome_unknown | error (body_too_large counts bodies sent
//	                                                     without Content-Length; a larger declared length is
//	                                                     refused before routing, in recsys_http_requests_total)
//	recsys_ingest_batch_events                          histogram: events per /log/batch request
//	recsys_ingest_persist_duration_seconds{endpoint}    histogram: time to durably store a request's events
//	recsys_ingest_retention_deleted_total{table}        counter: rows removed by retention
//	recsys_ingest_retention_errors_total                counter: failed retention passes
//	reco_outbox_backlog_events{status}, reco_outbox_backlog_oldest_lag_ms
//	                                                    gauges (contract): the outbox snapshot of the health
//	                                                    endpoints, at most once a second (shared with a
//	                                                    relay of the same process)
//	recsys_ingest_group_commit_events{writer}, recsys_ingest_group_commit_requests{writer},
//	recsys_ingest_commit_duration_seconds{writer}, recsys_ingest_write_duration_seconds{writer},
//	recsys_ingest_commit_errors_total{writer}, recsys_ingest_group_fallbacks_total{writer},
//	recsys_ingest_copy_conflicts_total{writer},
//	recsys_ingest_unconfirmed_commits_total{writer,outcome} from pkg/ingest's writer (writer="ingest")
//
// Readiness: the module adds no check of its own. PostgreSQL is an optional need: while it is
// unreachable the endpoints answer 503 within --ingest.write-timeout and /readyz names it
// "degraded" without failing, because every api pod shares the database and taking them all
// out of rotation would also stop /reco, which serves from Redis. A schema at another version
// than this binary's still fails /readyz. (With the relay or consumer role in the same
// process PostgreSQL stays a hard need: they cannot work without it.)
package ingest

import (
	"context"
	"sync"
	"time"

	"recsys/pkg/infra"
	writer "recsys/pkg/ingest"
	"recsys/pkg/module"
	"recsys/pkg/outbox"
	"recsys/pkg/postgres"
)

func init() {
	newCfg, build := module.Typed(NewConfig, New)
	module.Register(module.Info{
		Name:      "ingest",
		Summary:   "event ingestion: /log/impression, /log/watch, /log/batch, /event, /contract",
		Needs:     infra.Postgres,
		Optional:  infra.Postgres,
		NewConfig: newCfg,
		New:       build,
	})
}

// Ingest serves the ingestion endpoints.
type Ingest struct {
	cfg  *Config
	deps infra.Deps
	w    *writer.Writer
	m    *moduleMetrics
	// watchBodies are the four possible /log/watch answers (status × outbox_enqueued),
	// encoded once as c.JSON would encode them.
	watchBodies map[watchResponse][]byte

	// brin retries the BRIN ranges retention could not desummarize (retention.go).
	brin postgres.BRINDesummarizer

	// The last outbox snapshot of the health endpoints (see backlog).
	snapMu  sync.Mutex
	snapAt  time.Time
	snapOut any
}

var (
	_ module.Module         = (*Ingest)(nil)
	_ module.RouteRegistrar = (*Ingest)(nil)
	_ module.HealthReporter = (*Ingest)(nil)
)

// HealthDetails adds the outbox snapshot the contract's /healthz carries and sets the
// contract's reco_outbox_backlog_* gauges from it (shared with a relay of the same process,
// see outbox.ExportBacklog), so an api pod deployed without a relay still reports the
// backlog; its probes keep them fresh. The query is bounded by the partial indexes (never a
// full scan) and runs at most once per snapshotEvery, however often health is asked.
func (m *Ingest) HealthDetails(ctx context.Context) map[string]any {
	return map[string]any{"event_backbone": map[string]any{"mode": "transactional_outbox", "outbox": m.backlog(ctx)}}
}

// snapshotEvery bounds how often the health endpoints query the outbox backlog.
const snapshotEvery = time.Second

func (m *Ingest) backlog(ctx context.Context) any {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	if m.snapOut != nil && time.Since(m.snapAt) < snapshotEvery {
		return m.snapOut
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	b, err := outbox.Snapshot(ctx, m.deps.PG)
	if err != nil {
		m.snapOut = map[string]string{"error": err.Error()}
	} else {
		outbox.ExportBacklog(b)
		m.snapOut = b
	}
	m.snapAt = time.Now()
	return m.snapOut
}

// New wires the module: no goroutines, no I/O.
func New(cfg *Config, d infra.Deps) (module.Module, error) {
	wc := writer.Config{
		TopicImpressions: d.Config.Kafka.TopicImpressions,
		TopicWatches:     d.Config.Kafka.TopicWatches,
		MaxAttempts:      cfg.OutboxMaxAttempts,
		OutboxLanes:      d.Config.OutboxLanes,
		MaxEventBytes:    cfg.MaxEventBytes,
		MaxWait:          cfg.GroupCommitMaxWait,
		MaxEvents:        cfg.GroupCommitMaxEvents,
		CopyMinEvents:    cfg.GroupCommitCopyMinEvents,
		Workers:          cfg.GroupCommitWorkers,
		QueueSize:        cfg.QueueSize,
		Timeout:          cfg.WriteTimeout,
		AcquireTimeout:   d.Config.PG.AcquireTimeout,
		Name:             "ingest",
		Metrics:          d.Metrics,
		Log:              d.Log,
	}
	return &Ingest{cfg: cfg, deps: d, w: writer.New(d.PG, wc), m: newModuleMetrics(d.Metrics), watchBodies: watchBodies(cfg)}, nil
}

// Run starts the writer and the retention loop; on shutdown it commits what is queued. The
// HTTP server has drained before modules are stopped, so no request is cut off.
func (m *Ingest) Run(ctx context.Context) error {
	m.w.Start()
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.retentionLoop(ctx)
	}()
	<-ctx.Done()
	m.w.Close()
	<-done
	return nil
}
