package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// Secrets compose.yaml must never default: Compose has to refuse to start without them.
var composeSecrets = []string{"POSTGRES_PASSWORD", "REDIS_PASSWORD"}

// testSecrets stand in for the operator's .env values.
var testSecrets = map[string]string{"POSTGRES_PASSWORD": "pg-test-secret-0123", "REDIS_PASSWORD": "redis-test-secret-4567"}

// loadCompose loads compose.yaml the way `docker compose [--profile p] up` does: .env.example
// as the operator's .env (plus the secrets it leaves empty), COMPOSE_PROFILES from it unless
// profiles are given, environment files resolved into each service.
func loadCompose(t *testing.T, secrets map[string]string, profiles ...string) (*types.Project, error) {
	t.Helper()
	root := repoRoot(t)
	var sec bytes.Buffer
	for k, v := range secrets {
		sec.WriteString(k + "=" + v + "\n")
	}
	secFile := filepath.Join(t.TempDir(), "secrets.env")
	if err := os.WriteFile(secFile, sec.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "compose.yaml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnvFiles(filepath.Join(root, ".env.example"), secFile),
		cli.WithDotEnv,
		cli.WithDefaultProfiles(profiles...),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		return nil, err
	}
	return p.WithServicesEnvironmentResolved(true)
}

func mustLoadCompose(t *testing.T, profiles ...string) *types.Project {
	t.Helper()
	p, err := loadCompose(t, testSecrets, profiles...)
	if err != nil {
		t.Fatalf("load compose.yaml (profiles %v): %v", profiles, err)
	}
	return p
}

var infraServices = []string{"kafka", "postgres", "redis"}

func TestComposeLayouts(t *testing.T) {
	tests := []struct {
		name     string
		profiles []string
		services []string            // the enabled services
		commands map[string][]string // recsys services and their command
	}{
		{
			name:     "docker compose up (all-in-one)",
			services: []string{"kafka", "migrate", "postgres", "recsys", "redis"},
			commands: map[string][]string{"migrate": {"migrate", "up"}, "recsys": {"all"}},
		},
		{
			name:     "docker compose --profile split up",
			profiles: []string{"split"},
			services: []string{"api", "consume", "kafka", "migrate", "postgres", "redis", "relay"},
			commands: map[string][]string{"migrate": {"migrate", "up"}, "api": {"serve", "--roles", "api"}, "relay": {"relay"}, "consume": {"consume"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustLoadCompose(t, tt.profiles...)
			got := p.ServiceNames()
			sort.Strings(got)
			if !slices.Equal(got, tt.services) {
				t.Fatalf("services = %v, want %v", got, tt.services)
			}
			image := ""
			for name, want := range tt.commands {
				s := p.Services[name]
				if !slices.Equal([]string(s.Command), want) {
					t.Errorf("%s: command = %v, want %v", name, s.Command, want)
				}
				if image == "" {
					image = s.Image
				}
				if s.Image != image || s.Build == nil || s.Build.Context != repoRoot(t) {
					t.Errorf("%s: image %q build %+v; every recsys service must run the one image built from the repository", name, s.Image, s.Build)
				}
			}
			var published []string
			for _, s := range p.Services {
				for _, port := range s.Ports {
					published = append(published, s.Name)
					if port.Target != 8080 || port.HostIP != "127.0.0.1" || port.Published != "8080" {
						t.Errorf("%s publishes %+v; want 127.0.0.1:8080 -> 8080", s.Name, port)
					}
				}
			}
			want := "recsys"
			if len(tt.profiles) > 0 {
				want = "api"
			}
			if !slices.Equal(published, []string{want}) {
				t.Errorf("services publishing a port = %v, want only %s (infrastructure stays on the compose network)", published, want)
			}
		})
	}
}

func TestComposeDependencies(t *testing.T) {
	ready := func(deps ...string) map[string]string {
		m := map[string]string{"migrate": types.ServiceConditionCompletedSuccessfully}
		for _, d := range deps {
			m[d] = types.ServiceConditionHealthy
		}
		return m
	}
	want := map[string]map[string]string{
		"migrate": {"postgres": types.ServiceConditionHealthy},
		"recsys":  ready("postgres", "kafka", "redis"),
		"api":     ready("postgres", "redis"),
		"relay":   ready("postgres", "kafka"),
		"consume": ready("postgres", "kafka", "redis"),
	}
	all, split := mustLoadCompose(t), mustLoadCompose(t, "split")
	for svc, deps := range want {
		s, ok := all.Services[svc]
		if !ok {
			s = split.Services[svc]
		}
		got := map[string]string{}
		for name, d := range s.DependsOn {
			got[name] = d.Condition
			if !d.Required {
				t.Errorf("%s: dependency on %s is not required", svc, name)
			}
		}
		if !mapsEqual(got, deps) {
			t.Errorf("%s depends_on = %v, want %v", svc, got, deps)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestComposeServiceHygiene(t *testing.T) {
	for _, p := range []*types.Project{mustLoadCompose(t), mustLoadCompose(t, "split")} {
		for name, s := range p.Services {
			oneShot := name == "migrate"
			switch {
			case oneShot && s.Restart != types.RestartPolicyNo:
				t.Errorf("%s: restart %q; a one-shot must not restart (its dependants wait for it to complete)", name, s.Restart)
			case !oneShot && s.Restart != types.RestartPolicyUnlessStopped:
				t.Errorf("%s: restart %q, want unless-stopped", name, s.Restart)
			}
			hasCheck := s.HealthCheck != nil && !s.HealthCheck.Disable && len(s.HealthCheck.Test) > 0
			if !oneShot && !hasCheck {
				t.Errorf("%s: no healthcheck", name)
			}
			if slices.Contains(infraServices, name) {
				// The postgres image's init server listens on the Unix socket only: only a TCP
				// check tells the real server is up.
				if name == "postgres" && !strings.Contains(strings.Join(s.HealthCheck.Test, " "), "pg_isready -h 127.0.0.1") {
					t.Errorf("postgres: healthcheck %q; want pg_isready over TCP (-h 127.0.0.1)", s.HealthCheck.Test)
				}
				// A command through a shell skips the image's entrypoint, which drops root.
				if len(s.Command) > 0 && s.Command[0] == "sh" && (s.User == "" || s.User == "root" || s.User == "0") {
					t.Errorf("%s: command %q runs as root; set user", name, s.Command[0])
				}
				if len(s.Ports) > 0 {
					t.Errorf("%s publishes ports %v; infrastructure must stay on the compose network", name, s.Ports)
				}
				continue
			}
			// recsys containers.
			if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") {
				t.Errorf("%s: want a read-only root filesystem and all capabilities dropped", name)
			}
			if !oneShot {
				if got := strings.Join(s.HealthCheck.Test, " "); got != "CMD recsys healthcheck" {
					t.Errorf("%s: healthcheck %q, want the binary's own probe", name, got)
				}
				if s.StopGracePeriod == nil || *s.StopGracePeriod < types.Duration(mustDuration(t, s.Environment, "RECSYS_SHUTDOWN_TIMEOUT")) {
					t.Errorf("%s: stop_grace_period %v shorter than RECSYS_SHUTDOWN_TIMEOUT", name, s.StopGracePeriod)
				}
			}
		}
	}
}

// TestComposeRecsysEnvironment binds each recsys container's final environment (compose.yaml
// plus config/compose.env) to the flags of its command, as the binary does at start. A
// variable every recsys container gets (the shared block) must be read by at least one of
// them; a variable only some containers get must be read by each of those.
func TestComposeRecsysEnvironment(t *testing.T) {
	for _, p := range []*types.Project{mustLoadCompose(t), mustLoadCompose(t, "split")} {
		envs := map[string]map[string]string{}
		for name, s := range p.Services {
			if slices.Contains(infraServices, name) {
				continue
			}
			env := map[string]string{}
			for k, v := range s.Environment {
				if v == nil {
					t.Errorf("%s: %s has no value", name, k)
					continue
				}
				env[k] = *v
			}
			envs[name] = env
		}
		shared := map[string]bool{}
		for _, env := range envs {
			for k, v := range env {
				everywhere := true
				for _, other := range envs {
					if ov, ok := other[k]; !ok || ov != v {
						everywhere = false
					}
				}
				shared[k] = everywhere
			}
		}
		readers := map[string]int{}
		for name, env := range envs {
			s := p.Services[name]
			cmdline := strings.Join(s.Command, " ")
			res := checkCommandEnv(t, s.Command, env)
			for _, k := range res.unknown {
				if !shared[k] {
					t.Errorf("%s (recsys %s): %s is set for it alone but not read", name, cmdline, k)
				}
			}
			for k := range res.known {
				readers[k]++
			}
			if res.err != nil {
				t.Errorf("%s (recsys %s) would refuse to start: %v", name, cmdline, res.err)
			}
			if !strings.Contains(env["DATABASE_URL"], ":"+testSecrets["POSTGRES_PASSWORD"]+"@postgres:5432/") {
				t.Errorf("%s: DATABASE_URL %q does not carry the password from .env", name, env["DATABASE_URL"])
			}
			if res.known["ONLINE_CACHE_REDIS_URL"] && !strings.Contains(env["ONLINE_CACHE_REDIS_URL"], ":"+testSecrets["REDIS_PASSWORD"]+"@redis:6379") {
				t.Errorf("%s: ONLINE_CACHE_REDIS_URL %q does not carry the password from .env", name, env["ONLINE_CACHE_REDIS_URL"])
			}
		}
		for k, isShared := range shared {
			if isShared && readers[k] == 0 && !runtimeEnv[k] {
				t.Errorf("%s is given to every recsys container and read by none", k)
			}
		}
	}
}

func TestComposeRefusesToStartWithoutSecrets(t *testing.T) {
	for _, missing := range composeSecrets {
		t.Run(missing, func(t *testing.T) {
			secrets := map[string]string{}
			for k, v := range testSecrets {
				if k != missing {
					secrets[k] = v
				}
			}
			_, err := loadCompose(t, secrets)
			if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), ".env") {
				t.Fatalf("load without %s: err = %v; want a refusal naming the variable and .env", missing, err)
			}
		})
	}
}

var interpolation = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}`)

// TestComposeSecretsHaveNoDefault reads compose.yaml's text: every use of a secret must be the
// required form ${NAME:?message}, never ${NAME:-default} or a bare ${NAME} (which Compose
// replaces with an empty string).
func TestComposeSecretsHaveNoDefault(t *testing.T) {
	text := string(readFile(t, "compose.yaml"))
	uses := 0
	for _, m := range interpolation.FindAllStringSubmatch(text, -1) {
		name, mod := m[1], m[2]
		if !slices.Contains(composeSecrets, name) && !looksSecret(name) {
			continue
		}
		uses++
		if !strings.HasPrefix(mod, ":?") {
			t.Errorf("%s: secret without the required form ${%s:?...}", m[0], name)
		}
	}
	if uses == 0 {
		t.Fatal("no secret interpolation found in compose.yaml; the check would prove nothing")
	}
}

func looksSecret(name string) bool {
	for _, s := range []string{"PASSWORD", "SECRET", "TOKEN", "API_KEY", "PRIVATE"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// TestEnvExampleDocumentsEveryVariable: every ${VAR} of compose.yaml appears in .env.example
// (set or commented), every variable .env.example sets is used, and secrets are left empty
// so a copied example cannot run with a published password.
func TestEnvExampleDocumentsEveryVariable(t *testing.T) {
	used := map[string]bool{}
	for _, m := range interpolation.FindAllStringSubmatch(string(readFile(t, "compose.yaml")), -1) {
		used[m[1]] = true
	}
	documented := map[string]string{}
	set := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, ".env.example")))
	assign := regexp.MustCompile(`^#?\s*([A-Z][A-Z0-9_]*)=(.*)$`)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		m := assign.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		documented[m[1]] = m[2]
		if !strings.HasPrefix(line, "#") {
			set[m[1]] = m[2]
		}
	}
	for v := range used {
		if _, ok := documented[v]; !ok {
			t.Errorf("compose.yaml uses ${%s} but .env.example does not mention it", v)
		}
	}
	for v := range set {
		if !used[v] && v != "COMPOSE_PROFILES" {
			t.Errorf(".env.example sets %s, which compose.yaml never uses", v)
		}
	}
	for _, s := range composeSecrets {
		if v, ok := set[s]; !ok || v != "" {
			t.Errorf(".env.example must list %s= with an empty value (got %q, listed %t)", s, v, ok)
		}
	}
	if set["COMPOSE_PROFILES"] != "all" {
		t.Errorf(".env.example COMPOSE_PROFILES=%q, want all (plain `docker compose up` = all-in-one)", set["COMPOSE_PROFILES"])
	}
}

func mustDuration(t *testing.T, env types.MappingWithEquals, key string) time.Duration {
	t.Helper()
	v := env[key]
	if v == nil {
		t.Fatalf("%s is not set", key)
	}
	d, err := time.ParseDuration(*v)
	if err != nil {
		t.Fatalf("%s=%q: %v", key, *v, err)
	}
	return d
}
