// Package logging builds the process logger: log/slog, JSON by default, text for terminals,
// and every record made with a context carries that context's request and correlation IDs.
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

// ParseLevel accepts slog level names in any case, plus the Python names the original
// service's operators use (WARNING, CRITICAL).
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "DEBUG":
		return slog.LevelDebug, nil
	case "INFO", "":
		return slog.LevelInfo, nil
	case "WARN", "WARNING":
		return slog.LevelWarn, nil
	case "ERROR", "CRITICAL":
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
		h = slog.NewJSONHandler(w, opts)
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("unknown log format %q (want json or text)", format)
	}
	return slog.New(idHandler{h}), nil
}

// idHandler adds the context's IDs to each record, so call sites only pass ctx.
type idHandler struct{ slog.Handler }

func (h idHandler) Handle(ctx context.Context, r slog.Record) error {
	if ids, ok := IDsFrom(ctx); ok {
		r.AddAttrs(slog.String("request_id", ids.RequestID), slog.String("correlation_id", ids.CorrelationID))
	}
	return h.Handler.Handle(ctx, r)
}

func (h idHandler) WithAttrs(as []slog.Attr) slog.Handler { return idHandler{h.Handler.WithAttrs(as)} }
func (h idHandler) WithGroup(n string) slog.Handler       { return idHandler{h.Handler.WithGroup(n)} }
