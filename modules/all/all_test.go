package all_test

import (
	"os"
	"testing"

	_ "recsys/modules/all"
	"recsys/pkg/module"
)

// Every directory under modules/ (but this one) must be a registered module of the same
// name, so a module cannot be written and forgotten in the import list.
func TestEveryModuleDirectoryIsRegistered(t *testing.T) {
	entries, err := os.ReadDir("..")
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, i := range module.Default().All() {
		registered[i.Name] = true
	}
	n := 0
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "all" {
			continue
		}
		n++
		if !registered[e.Name()] {
			t.Errorf("modules/%s is not registered: import it in modules/all/all.go and register it under the name %q", e.Name(), e.Name())
		}
	}
	if n == 0 {
		t.Fatal("no module directories found")
	}
}

// The real registry must resolve: a cycle or unknown dependency fails here, not in production.
func TestRealRegistryResolves(t *testing.T) {
	infos, err := module.Default().Resolve([]string{"all"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range module.Default().Roles() {
		if _, err := module.Default().Resolve([]string{r}); err != nil {
			t.Errorf("role %s: %v", r, err)
		}
	}
	for _, i := range infos {
		if err := i.NewConfig().Validate(); err != nil {
			t.Errorf("module %s: defaults do not validate: %v", i.Name, err)
		}
	}
}

// In `all` the producers (ingest, reco) stop before the relay and the consumer: reco's
// autolog flush and ingest's last commits land in the outbox while the relay still runs, and
// the relay's drain does not spend the shared shutdown deadline first.
func TestDrainersStopAfterProducers(t *testing.T) {
	infos, err := module.Default().Resolve([]string{"all"})
	if err != nil {
		t.Fatal(err)
	}
	stopAt := map[string]int{}
	var order []string
	for k := len(infos) - 1; k >= 0; k-- {
		stopAt[infos[k].Name] = len(order)
		order = append(order, infos[k].Name)
	}
	for _, c := range []struct{ first, then string }{
		{"reco", "relay"}, {"ingest", "relay"}, {"reco", "consumer"}, {"ingest", "consumer"}, {"relay", "consumer"},
	} {
		if stopAt[c.first] > stopAt[c.then] {
			t.Errorf("stop order %v: %s must stop before %s", order, c.first, c.then)
		}
	}
	for _, role := range []string{"relay", "consumer"} {
		if got, err := module.Default().Resolve([]string{role}); err != nil || len(got) != 1 {
			t.Errorf("role %s alone resolves to %d modules (%v): ordering must not pull the producers in", role, len(got), err)
		}
	}
}
