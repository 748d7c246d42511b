// Package logging builds the process logger: log/slog, JSON by default, text for terminals,
// and every record made with a context carries that context's request and correlation IDs.
//
// A JSON line has the keys of the original service's lines (api-contract §2.1), so log
// queries and pipelines written for it keep working: ts (UTC ISO-8601 with milliseconds and
// Z), level (Python's names: DEBUG, INFO, WARNING, ERROR), logger, message, component (api,
// outbox-relay, feature-consumer), request_id and correlation_id ("-" when there is none),
// exc_info (a recovered panic's stack, where the original put a traceback), beside the
// record's own attributes (a module's logger also carries "module"; recsys opens
// no groups, inside which these would land).
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

type ctxKey struct{}

// IDs are the request and correlation IDs of the work a context belongs to.
type IDs struct {
	RequestID     string
	CorrelationID string
}

// WithIDs returns a context whose log records carry ids.
func WithIDs(ctx context.Context, ids IDs) context.Context {
	return context.WithValue(ctx, ctxKey{}, ids)
}

// IDsFrom returns the IDs stored by WithIDs, if any.
func IDsFrom(ctx context.Context) (IDs, bool) {
	if ctx == nil {
		return IDs{}, false
	}
	ids, ok := ctx.Value(ctxKey{}).(IDs)
	return ids, ok
}

// ParseLevel accepts slog level names in any case, plus every name Python's logging takes
// for LOG_LEVEL in the original service: WARNING, CRITICAL and FATAL (error here, the
// highest level recsys logs at) and NOTSET (on the root logger: everything, so debug).
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "DEBUG", "NOTSET":
		return slog.LevelDebug, nil
	case "INFO", "":
		return slog.LevelInfo, nil
	case "WARN", "WARNING":
		return slog.LevelWarn, nil
	case "ERROR", "CRITICAL", "FATAL":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", s)
}

// New returns a logger writing to w in format "json" or "text".
func New(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(format) {
	case "json", "":
		opts.ReplaceAttr = contractKeys
		return slog.New(idHandler{Handler: slog.NewJSONHandler(w, opts), contract: true, logger: "recsys", component: "-"}), nil
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("unknown log format %q (want json or text)", format)
	}
	return slog.New(idHandler{Handler: h}), nil
}

// contractKeys renames slog's built-in keys to the contract's (see the package doc).
func contractKeys(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.TimeKey:
		if a.Value.Kind() == slog.KindTime {
			return slog.String("ts", a.Value.Time().UTC().Format("2006-01-02T15:04:05.000Z"))
		}
	case slog.MessageKey:
		a.Key = "message"
	case slog.LevelKey:
		if l, ok := a.Value.Any().(slog.Level); ok {
			a.Value = slog.StringValue(levelName(l))
		}
	}
	return a
}

// levelName is Python's name of a level, as the original's lines carry.
func levelName(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "DEBUG"
	case l < slog.LevelWarn:
		return "INFO"
	case l < slog.LevelError:
		return "WARNING"
	}
	return "ERROR"
}

// componentOf is the contract's component of a module's lines: the original ran the API, the
// outbox relay and the feature consumer as three programs.
func componentOf(module string) string {
	switch module {
	case "relay":
		return "outbox-relay"
	case "consumer":
		return "feature-consumer"
	case "ingest", "reco", "analytics", "api", "http":
		return "api"
	}
	return module
}

// idHandler adds the context's IDs to each record, so call sites only pass ctx. In the
// contract's JSON form (contract) every record also names its logger and component, from the
// "module" attribute a module's logger carries, and the IDs default to "-".
type idHandler struct {
	slog.Handler
	contract          bool
	logger, component string
}

func (h idHandler) Handle(ctx context.Context, r slog.Record) error {
	ids, ok := IDsFrom(ctx)
	if h.contract {
		if !ok {
			ids = IDs{RequestID: "-", CorrelationID: "-"}
		}
		r.AddAttrs(slog.String("logger", h.logger), slog.String("component", h.component),
			slog.String("request_id", cmpOr(ids.RequestID)), slog.String("correlation_id", cmpOr(ids.CorrelationID)))
		return h.Handler.Handle(ctx, r)
	}
	if ok {
		r.AddAttrs(slog.String("request_id", ids.RequestID), slog.String("correlation_id", ids.CorrelationID))
	}
	return h.Handler.Handle(ctx, r)
}

func cmpOr(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WithComponent returns l with the component of a module or role name (see componentOf) on
// the records of no module: a process' own lines (started, a module failed, stopped) name
// the process' component, as every line of the original's three programs did. Module loggers
// keep their own.
func WithComponent(l *slog.Logger, module string) *slog.Logger {
	h, ok := l.Handler().(idHandler)
	if !ok || !h.contract {
		return l
	}
	h.component = componentOf(module)
	return slog.New(h)
}

func (h idHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		if a.Key == "module" {
			h.logger, h.component = "recsys."+a.Value.String(), componentOf(a.Value.String())
		}
	}
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h idHandler) WithGroup(n string) slog.Handler {
	h.Handler = h.Handler.WithGroup(n)
	return h
}
