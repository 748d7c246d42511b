// Package module is the registry of recsys modules. A module is one deployable piece of the
// process (a role such as "api", "relay" or "consumer", or a helper a role pulls in). Modules
// register themselves from init() in modules/<name>/module.go, the Caddy/CoreDNS form; the
// runner in pkg/app resolves the selected roles into an ordered list and runs them.
package module

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/labstack/echo/v4"
	"github.com/spf13/pflag"

	"recsys/pkg/infra"
	"recsys/pkg/openapi"
)

// Module is a running part of the process. Run blocks until ctx is cancelled, then drains and
// returns nil; any other error stops the whole process with exit code 1.
type Module interface {
	Run(ctx context.Context) error
}

// Readier is implemented by modules whose readiness is more than "Run has started".
type Readier interface {
	Ready(ctx context.Context) error
}

// RouteRegistrar is implemented by modules that serve HTTP routes on the process' server.
type RouteRegistrar interface {
	RegisterRoutes(e *echo.Echo)
}

// APIDescriber is implemented by route registrars that describe their routes in the
// process' OpenAPI document (GET /openapi.json), with the limits they were configured with.
// modules/all's TestOpenAPIDescribesEveryRoute fails on a route registered and not described.
type APIDescriber interface {
	DescribeAPI(d *openapi.Document)
}

// HealthReporter is implemented by modules that add top-level fields to /healthz and /readyz
// (for example the outbox snapshot under "event_backbone").
type HealthReporter interface {
	HealthDetails(ctx context.Context) map[string]any
}

// Config is a module's typed configuration. Flags are named "<module>.<kebab-name>".
type Config interface {
	RegisterFlags(fs *pflag.FlagSet)
	Validate() error
}

// Info describes a module to the registry.
type Info struct {
	Name      string   // ^[a-z][a-z0-9-]*$; also the log and metric scope
	Summary   string   // one line, shown by `recsys modules`
	Role      bool     // selectable with --roles and part of "all"
	DependsOn []string // started before and stopped after this module
	// Before orders without pulling in: when these modules run in the same process, this
	// one starts before and stops after them (a drainer outliving the producers that flush
	// into it at shutdown). Selecting this module does not select them.
	Before []string
	Needs  infra.Need
	// Optional lists needs the module can serve without (degraded mode): their outage shows
	// in /readyz as "degraded" instead of making the process unready.
	Optional  infra.Need
	NewConfig func() Config
	New       func(cfg Config, d infra.Deps) (Module, error) // wiring only: no goroutines, no I/O
}

// Typed adapts a constructor over a concrete config type so modules never type-assert.
func Typed[C Config](newCfg func() C, build func(C, infra.Deps) (Module, error)) (func() Config, func(Config, infra.Deps) (Module, error)) {
	return func() Config { return newCfg() }, func(c Config, d infra.Deps) (Module, error) {
		tc, ok := c.(C)
		if !ok {
			return nil, fmt.Errorf("config type %T, want %T", c, *new(C))
		}
		return build(tc, d)
	}
}

var validName = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// Registry holds registered modules. The package-level functions use a default registry;
// tests build their own.
type Registry struct {
	mu   sync.RWMutex
	mods map[string]Info
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{mods: map[string]Info{}} }

// Register adds a module. It panics on programmer errors, as Caddy's RegisterModule does,
// because a bad registration must fail the first test run, never production.
func (r *Registry) Register(i Info) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case !validName.MatchString(i.Name):
		panic(fmt.Sprintf("module: invalid name %q", i.Name))
	case i.Name == "all":
		panic(`module: "all" is reserved`)
	case i.NewConfig == nil || i.New == nil:
		panic(fmt.Sprintf("module %s: NewConfig and New are required", i.Name))
	}
	if _, dup := r.mods[i.Name]; dup {
		panic(fmt.Sprintf("module %s: registered twice", i.Name))
	}
	r.mods[i.Name] = i
}

// All returns every registered module sorted by name.
func (r *Registry) All() []Info {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Info, 0, len(r.mods))
	for _, i := range r.mods {
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

// Roles returns the names of the selectable modules, sorted.
func (r *Registry) Roles() []string {
	var out []string
	for _, i := range r.All() {
		if i.Role {
			out = append(out, i.Name)
		}
	}
	return out
}

// Resolve expands "all" to every role, adds the dependency closure and returns the modules in
// start order (dependencies first, ties by name). Unknown names, non-role selections and cycles
// are errors.
func (r *Registry) Resolve(names []string) ([]Info, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	want := map[string]bool{}
	var stack []string
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if n == "all" {
			for name, i := range r.mods {
				if i.Role {
					stack = append(stack, name)
				}
			}
			continue
		}
		i, ok := r.mods[n]
		if !ok {
			return nil, fmt.Errorf("unknown role %q (roles: %s, or all)", n, strings.Join(r.rolesLocked(), ", "))
		}
		if !i.Role {
			return nil, fmt.Errorf("module %q is not a role (roles: %s, or all)", n, strings.Join(r.rolesLocked(), ", "))
		}
		stack = append(stack, n)
	}
	if len(stack) == 0 {
		return nil, fmt.Errorf("no roles selected (roles: %s, or all)", strings.Join(r.rolesLocked(), ", "))
	}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if want[n] {
			continue
		}
		i, ok := r.mods[n]
		if !ok {
			return nil, fmt.Errorf("unknown module %q", n)
		}
		want[n] = true
		stack = append(stack, i.DependsOn...)
	}
	// Kahn's algorithm; the ready set is kept sorted so the order is deterministic.
	indeg := map[string]int{}
	users := map[string][]string{}
	for n := range want {
		for _, d := range r.mods[n].DependsOn {
			indeg[n]++
			users[d] = append(users[d], n)
		}
		for _, b := range r.mods[n].Before {
			if _, ok := r.mods[b]; !ok {
				return nil, fmt.Errorf("module %q: unknown module %q in Before", n, b)
			}
			if want[b] {
				indeg[b]++
				users[n] = append(users[n], b)
			}
		}
	}
	var ready, order []string
	for n := range want {
		if indeg[n] == 0 {
			ready = append(ready, n)
		}
	}
	for len(ready) > 0 {
		sort.Strings(ready)
		n := ready[0]
		ready = ready[1:]
		order = append(order, n)
		for _, u := range users[n] {
			if indeg[u]--; indeg[u] == 0 {
				ready = append(ready, u)
			}
		}
	}
	if len(order) != len(want) {
		var cyc []string
		for n := range want {
			if indeg[n] > 0 {
				cyc = append(cyc, n)
			}
		}
		sort.Strings(cyc)
		return nil, fmt.Errorf("dependency cycle among modules: %s", strings.Join(cyc, ", "))
	}
	out := make([]Info, len(order))
	for k, n := range order {
		out[k] = r.mods[n]
	}
	return out, nil
}

func (r *Registry) rolesLocked() []string {
	var out []string
	for n, i := range r.mods {
		if i.Role {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

var std = NewRegistry()

// Register adds a module to the default registry; call it from init().
func Register(i Info) { std.Register(i) }

// Default returns the process-wide registry that modules register into.
func Default() *Registry { return std }
