// Package consumer is the "consumer" role: it applies Kafka events to the feature store.
package consumer

import (
	"context"

	"github.com/spf13/pflag"

	"recsys/pkg/infra"
	"recsys/pkg/module"
)

func init() {
	newCfg, build := module.Typed(func() *Config { return &Config{} }, New)
	module.Register(module.Info{
		Name:      "consumer",
		Summary:   "applies Kafka events to the feature store",
		Role:      true,
		Needs:     infra.Postgres | infra.Redis | infra.Kafka,
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
