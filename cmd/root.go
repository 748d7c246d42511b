// Package cmd holds the cobra commands of the recsys binary. Commands are thin: they parse
// configuration and call into pkg/ and the module runner.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"recsys/pkg/flagenv"
	"recsys/pkg/logging"
)

// logConfig holds the log.* flags shared by every command.
type logConfig struct {
	Level  string
	Format string
}

func (c *logConfig) registerFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Level, "log.level", "info", "log level: debug, info, warn or error (also the Python names LOG_LEVEL took in the original service: WARNING, CRITICAL, FATAL, NOTSET)")
	fs.StringVar(&c.Format, "log.format", "auto", "log format: json, text, or auto (text on a terminal, json otherwise)")
	flagenv.Alias(fs, "log.level", "LOG_LEVEL")
	flagenv.Alias(fs, "log.format", "LOG_FORMAT")
}

func (c *logConfig) logger(w io.Writer) (*slog.Logger, error) {
	lvl, err := logging.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("--log.level (RECSYS_LOG_LEVEL or LOG_LEVEL): %w", err)
	}
	format := c.Format
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	l, err := logging.New(w, format, lvl)
	if err != nil {
		return nil, fmt.Errorf("--log.format (RECSYS_LOG_FORMAT or LOG_FORMAT): %w", err)
	}
	return l, nil
}

// warnUnreadAnnotation marks the commands that run services or deploy jobs: they warn about
// set variables that configure nothing, since a typo or an original-service name recsys
// dropped would otherwise be ignored silently. Probes and tools stay quiet.
const warnUnreadAnnotation = "recsys.warn-unread-env"

func warnUnread(cmd *cobra.Command, lc *logConfig) error {
	if cmd.Annotations[warnUnreadAnnotation] == "" {
		return nil
	}
	elsewhere := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				for _, n := range flagenv.EnvNames(f) {
					elsewhere[n] = true
				}
			})
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(cmd.Root())
	unread := flagenv.Unread(cmd.Flags(), elsewhere, os.Environ())
	if len(unread) == 0 {
		return nil
	}
	log, err := lc.logger(os.Stderr)
	if err != nil {
		return err
	}
	log.Warn("environment variables that configure nothing in `"+cmd.CommandPath()+"`", "unread", unread)
	return nil
}

// exitError carries a specific exit code (e.g. 2 for load's error threshold).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// NewRootCmd builds the command tree.
func NewRootCmd() *cobra.Command {
	var lc logConfig
	root := &cobra.Command{
		Use:   "recsys",
		Short: "Real-time recommendation engine: ingest events, relay them to Kafka, keep live features, serve ranked lists",
		Long: `recsys is one binary with every role of the recommendation engine.

Roles (run together with "recsys all", or one per process):
  api       HTTP API: event ingestion (/log/*), recommendations (/reco), health and metrics
  relay     moves the transactional outbox to Kafka
  consumer  applies Kafka events to the feature store (PostgreSQL + Redis)

Every flag can also be set from the environment as RECSYS_<FLAG> (dots and dashes become
underscores, e.g. --pg.dsn -> RECSYS_PG_DSN); the original service's names such as
DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS and ONLINE_CACHE_REDIS_URL work too.
Precedence: flag, then RECSYS_ variable, then legacy variable, then default.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := flagenv.Bind(cmd.Flags(), nil); err != nil {
				return fmt.Errorf("invalid environment:\n%w", err)
			}
			return warnUnread(cmd, &lc)
		},
	}
	lc.registerFlags(root.PersistentFlags())
	consume := newRolePresetCmd(&lc, "consume", "Run the feature consumer role (Kafka -> features)", []string{"consumer"})
	consume.AddCommand(newReplayDLQCmd(&lc))
	relay := newRolePresetCmd(&lc, "relay", "Run the outbox relay role (event_outbox -> Kafka)", []string{"relay"})
	relay.AddCommand(newRelayReplayCmd(&lc))
	root.AddCommand(
		newServeCmd(&lc),
		newRolePresetCmd(&lc, "all", "Run every role in one process (api, relay, consumer)", []string{"all"}),
		relay,
		consume,
		newDevCmd(&lc),
		newMigrateCmd(&lc),
		newModulesCmd(),
		newVersionCmd(),
		newHealthcheckCmd(),
		newConfigDocCmd(),
		newFeaturesCmd(&lc),
		newUsersCmd(&lc),
		newItemsCmd(&lc),
		newEvalCmd(),
		newSmokeCmd(),
		newLoadCmd(),
		newGuardrailsCmd(),
	)
	return root
}

// shutdownSignals start the graceful shutdown. SIGHUP is one of them: its default action ends
// the process on the spot, and a closed terminal or dropped SSH session sends it to `recsys
// dev` (`make run`), whose throwaway PostgreSQL (a server of its own session, which the signal
// does not reach) and folder would then stay behind. Not when SIGHUP is ignored (nohup):
// handling it would undo that.
func shutdownSignals() []os.Signal {
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !signal.Ignored(syscall.SIGHUP) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	return sigs
}

// Execute runs the root command and returns the process exit code.
func Execute() int {
	root := NewRootCmd()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, shutdownSignals()...)
	defer signal.Stop(sigs)
	// The first signal starts the graceful shutdown (bounded by --shutdown.timeout); a second
	// one, as an operator's second Ctrl-C, takes the default action and ends the process at
	// once instead of being swallowed by a shutdown that is waiting out its delay or drain.
	// The default action is restored before the shutdown starts, so nothing the shutdown
	// shows (readiness 503, the drain's log line) can come before it: with NotifyContext the
	// restoring goroutine ran after the cancellation, and a second signal sent as soon as
	// /readyz answered 503 was sometimes swallowed.
	go func() {
		<-sigs
		signal.Stop(sigs)
		cancel()
	}()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "recsys:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
