// Package api is the "api" role: it groups the HTTP modules (event ingestion,
// recommendations, analytics) so `--roles api` selects all of them. It does no work itself;
// its dependencies register their routes on the process' server.
package api

import (
	"context"

	"github.com/spf13/pflag"

	"recsys/pkg/infra"
	"recsys/pkg/module"
)

func init() {
	newCfg, build := module.Typed(func() *Config { return &Config{} }, New)
	module.Register(module.Info{
		Name:      "api",
		Summary:   "HTTP API role: event ingestion, recommendations, analytics",
		Role:      true,
		DependsOn: dependsOn,
		NewConfig: newCfg,
		New:       build,
	})
}

// dependsOn lists the HTTP modules of the role; each registers its own routes.
var dependsOn = []string{"analytics", "ingest", "reco"}

// Config is empty: every setting belongs to the modules the role pulls in.
type Config struct{}

// RegisterFlags adds no flags.
func (c *Config) RegisterFlags(*pflag.FlagSet) {}

// Validate accepts the empty config.
func (c *Config) Validate() error { return nil }

// API is the role's placeholder in the run group.
type API struct{}

// New wires the role.
func New(*Config, infra.Deps) (module.Module, error) { return API{}, nil }

// Run waits for shutdown.
func (API) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}
