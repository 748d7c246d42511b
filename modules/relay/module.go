// Package relay is the "relay" role: it moves event_outbox rows to Kafka.
package relay

import (
	"context"

	"github.com/spf13/pflag"

	"recsys/pkg/infra"
	"recsys/pkg/module"
)

func init() {
	newCfg, build := module.Typed(func() *Config { return &Config{} }, New)
	module.Register(module.Info{
		Name:      "relay",
		Summary:   "moves event_outbox rows to Kafka",
		Role:      true,
		Needs:     infra.Postgres | infra.Kafka,
		NewConfig: newCfg,
		New:       build,
	})
}

// Config of the role.
type Config struct{}

// RegisterFlags adds the role's flags.
func (c *Config) RegisterFlags(*pflag.FlagSet) {}

// Validate checks the config.
func (c *Config) Validate() error { return nil }

type worker struct{}

// New wires the role.
func New(*Config, infra.Deps) (module.Module, error) { return worker{}, nil }

func (worker) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}
