package module_test

import (
	"context"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"recsys/pkg/infra"
	"recsys/pkg/module"
)

type cfg struct{}

func (cfg) RegisterFlags(*pflag.FlagSet) {}
func (cfg) Validate() error              { return nil }

type mod struct{}

func (mod) Run(ctx context.Context) error { <-ctx.Done(); return nil }

func info(name string, role bool, deps ...string) module.Info {
	return module.Info{Name: name, Role: role, DependsOn: deps,
		NewConfig: func() module.Config { return cfg{} },
		New:       func(module.Config, infra.Deps) (module.Module, error) { return mod{}, nil }}
}

func TestRegisterPanics(t *testing.T) {
	tests := []struct {
		name string
		reg  func(r *module.Registry)
		want string
	}{
		{"duplicate", func(r *module.Registry) { r.Register(info("a", true)); r.Register(info("a", true)) }, "registered twice"},
		{"uppercase name", func(r *module.Registry) { r.Register(info("Api", true)) }, "invalid name"},
		{"empty name", func(r *module.Registry) { r.Register(info("", true)) }, "invalid name"},
		{"reserved all", func(r *module.Registry) { r.Register(info("all", true)) }, "reserved"},
		{"nil constructor", func(r *module.Registry) { i := info("x", true); i.New = nil; r.Register(i) }, "required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				p := recover()
				if p == nil || !strings.Contains(p.(string), tc.want) {
					t.Fatalf("panic = %v, want it to contain %q", p, tc.want)
				}
			}()
			tc.reg(module.NewRegistry())
		})
	}
}

func names(is []module.Info) string {
	var s []string
	for _, i := range is {
		s = append(s, i.Name)
	}
	return strings.Join(s, ",")
}

func TestResolve(t *testing.T) {
	r := module.NewRegistry()
	r.Register(info("api", true, "ingest", "reco"))
	r.Register(info("ingest", false))
	r.Register(info("reco", false, "ingest"))
	r.Register(info("relay", true))
	r.Register(info("consumer", true))
	tests := []struct {
		roles   []string
		want    string
		wantErr string
	}{
		{roles: []string{"all"}, want: "consumer,ingest,reco,api,relay"},
		{roles: []string{"api"}, want: "ingest,reco,api"},
		{roles: []string{"relay", "api"}, want: "ingest,reco,api,relay"},
		{roles: []string{"relay", "relay"}, want: "relay"},
		{roles: []string{" relay "}, want: "relay"},
		{roles: []string{"nope"}, wantErr: `unknown role "nope"`},
		{roles: []string{"ingest"}, wantErr: "not a role"},
		{roles: nil, wantErr: "no roles selected"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.roles, "+"), func(t *testing.T) {
			got, err := r.Resolve(tc.roles)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if names(got) != tc.want {
				t.Fatalf("order = %s, want %s", names(got), tc.want)
			}
		})
	}
	if got := strings.Join(r.Roles(), ","); got != "api,consumer,relay" {
		t.Fatalf("Roles() = %s", got)
	}
}

func TestResolveCycleAndUnknownDependency(t *testing.T) {
	r := module.NewRegistry()
	r.Register(info("a", true, "b"))
	r.Register(info("b", false, "c"))
	r.Register(info("c", false, "a"))
	r.Register(info("d", true, "missing"))
	if _, err := r.Resolve([]string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle among modules: a, b, c") {
		t.Fatalf("err = %v, want a cycle naming a, b, c", err)
	}
	if _, err := r.Resolve([]string{"d"}); err == nil || !strings.Contains(err.Error(), `unknown module "missing"`) {
		t.Fatalf("err = %v, want unknown module", err)
	}
}

func TestTyped(t *testing.T) {
	type myCfg struct{ cfg }
	newCfg, build := module.Typed(func() *myCfg { return &myCfg{} }, func(c *myCfg, _ infra.Deps) (module.Module, error) { return mod{}, nil })
	if _, err := build(newCfg(), infra.Deps{}); err != nil {
		t.Fatal(err)
	}
	if _, err := build(cfg{}, infra.Deps{}); err == nil {
		t.Fatal("wrong config type accepted")
	}
}

// Before orders modules that run together without selecting the others: a drainer listed
// Before its producers starts first and stops last.
func TestResolveBeforeOrdersWithoutPullingIn(t *testing.T) {
	r := module.NewRegistry()
	r.Register(info("api", true, "ingest"))
	r.Register(info("ingest", false))
	relay := info("relay", true)
	relay.Before = []string{"ingest"}
	r.Register(relay)
	typo := info("typo", true)
	typo.Before = []string{"ingset"}
	r.Register(typo)
	for roles, want := range map[string]string{"api,relay": "relay,ingest,api", "relay": "relay", "api": "ingest,api"} {
		got, err := r.Resolve(strings.Split(roles, ","))
		if err != nil || names(got) != want {
			t.Errorf("Resolve(%s) = %s, %v; want %s", roles, names(got), err, want)
		}
	}
	if _, err := r.Resolve([]string{"typo"}); err == nil || !strings.Contains(err.Error(), `unknown module "ingset"`) {
		t.Fatalf("err = %v, want the unknown name", err)
	}
}
