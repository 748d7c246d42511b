package deploy_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"recsys/pkg/infra"
)

// manifests is one kustomize build, every object strictly decoded into its API type.
type manifests struct {
	dir             string
	objects         []string // "Kind/name", sorted
	deployments     map[string]*appsv1.Deployment
	services        map[string]*corev1.Service
	hpas            map[string]*autoscalingv2.HorizontalPodAutoscaler
	pdbs            map[string]*policyv1.PodDisruptionBudget
	jobs            map[string]*batchv1.Job
	configMaps      map[string]*corev1.ConfigMap
	serviceAccounts map[string]*corev1.ServiceAccount
	namespaces      map[string]*corev1.Namespace
	netpols         map[string]*networkingv1.NetworkPolicy
}

// decodeStrict decodes like the API server's strict field validation: case-sensitive field
// names, and an error for any unknown or duplicate field.
func decodeStrict(data []byte, into any) error {
	strict, err := kjson.UnmarshalStrict(data, into)
	if err != nil {
		return err
	}
	if len(strict) > 0 {
		return fmt.Errorf("strict decoding: %v", strict)
	}
	return nil
}

// newTyped returns the API type of apiVersion+kind; any other kind is an error, so an object
// with a misspelt kind or an outdated apiVersion (autoscaling/v2beta2, policy/v1beta1) fails.
func (m *manifests) newTyped(apiVersion, kind, name string) (any, error) {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		o := &appsv1.Deployment{}
		m.deployments[name] = o
		return o, nil
	case "v1 Service":
		o := &corev1.Service{}
		m.services[name] = o
		return o, nil
	case "autoscaling/v2 HorizontalPodAutoscaler":
		o := &autoscalingv2.HorizontalPodAutoscaler{}
		m.hpas[name] = o
		return o, nil
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		m.pdbs[name] = o
		return o, nil
	case "batch/v1 Job":
		o := &batchv1.Job{}
		m.jobs[name] = o
		return o, nil
	case "v1 ConfigMap":
		o := &corev1.ConfigMap{}
		m.configMaps[name] = o
		return o, nil
	case "v1 ServiceAccount":
		o := &corev1.ServiceAccount{}
		m.serviceAccounts[name] = o
		return o, nil
	case "v1 Namespace":
		o := &corev1.Namespace{}
		m.namespaces[name] = o
		return o, nil
	case "networking.k8s.io/v1 NetworkPolicy":
		o := &networkingv1.NetworkPolicy{}
		m.netpols[name] = o
		return o, nil
	}
	return nil, fmt.Errorf("%s %s/%s: not a kind these manifests should contain", apiVersion, kind, name)
}

func kustomizeBuild(t *testing.T, rel string) *manifests {
	t.Helper()
	dir := filepath.Join(repoRoot(t), rel)
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", rel, err)
	}
	m := &manifests{dir: rel, deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		jobs: map[string]*batchv1.Job{}, configMaps: map[string]*corev1.ConfigMap{},
		serviceAccounts: map[string]*corev1.ServiceAccount{}, namespaces: map[string]*corev1.Namespace{},
		netpols: map[string]*networkingv1.NetworkPolicy{}}
	for _, r := range res.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatalf("%s: %s/%s: %v", rel, r.GetKind(), r.GetName(), err)
		}
		into, err := m.newTyped(r.GetApiVersion(), r.GetKind(), r.GetName())
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		if err := decodeStrict(data, into); err != nil {
			t.Fatalf("%s: %s/%s: %v", rel, r.GetKind(), r.GetName(), err)
		}
		m.objects = append(m.objects, r.GetKind()+"/"+r.GetName())
	}
	sort.Strings(m.objects)
	return m
}

var overlays = []string{"deploy/k8s/base", "deploy/k8s/overlays/dev", "deploy/k8s/overlays/prod"}

// roles maps each Deployment to the recsys command it must run.
var roles = map[string][]string{
	"recsys-api":      {"serve", "--roles", "api"},
	"recsys-relay":    {"relay"},
	"recsys-consumer": {"consume"},
}

// secretKeys are provided by the Secret recsys-secrets, created outside the repository.
var secretKeys = map[string]string{
	"DATABASE_URL":           "postgres://recsys:secret@postgres:5432/recsys?sslmode=require",
	"ONLINE_CACHE_REDIS_URL": "redis://:secret@redis:6379/0",
}

func TestStrictDecodingRejectsMistakes(t *testing.T) {
	// A Deployment as kustomize would emit it, with one mistake each.
	for name, doc := range map[string]string{
		"unknown field":   `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"template":{"spec":{"containers":[{"name":"c","livenessProbes":{}}]}}}}`,
		"wrong case":      `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"Replicas":2}}`,
		"duplicate field": `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"replicas":2,"replicas":3}}`,
		"misplaced field": `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"template":{"spec":{"containers":[{"name":"c","readinessProbe":{"httpGet":{"path":"/readyz","port":8080,"timeoutSeconds":2}}}]}}}}`,
	} {
		if err := decodeStrict([]byte(doc), &appsv1.Deployment{}); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	m := &manifests{}
	if _, err := m.newTyped("autoscaling/v2beta2", "HorizontalPodAutoscaler", "x"); err == nil {
		t.Error("a removed apiVersion was accepted")
	}
}

func TestKustomizeBuilds(t *testing.T) {
	base := []string{
		"ConfigMap/recsys-config-", "Deployment/recsys-api", "Deployment/recsys-consumer", "Deployment/recsys-relay",
		"HorizontalPodAutoscaler/recsys-api", "Job/recsys-migrate", "NetworkPolicy/recsys-api-clients", "NetworkPolicy/recsys-default-deny-ingress",
		"NetworkPolicy/recsys-metrics-scrape", "PodDisruptionBudget/recsys-api",
		"PodDisruptionBudget/recsys-consumer", "PodDisruptionBudget/recsys-relay", "Service/recsys-api", "ServiceAccount/recsys",
	}
	for _, dir := range overlays {
		t.Run(dir, func(t *testing.T) {
			m := kustomizeBuild(t, dir)
			want := slices.Clone(base)
			if dir != "deploy/k8s/base" {
				want = append(want, "Namespace/")
			}
			got := slices.Clone(m.objects)
			for i, o := range got {
				// Generated or overlay-specific names: compare the stable prefix.
				for _, p := range []string{"ConfigMap/recsys-config-", "Namespace/"} {
					if strings.HasPrefix(o, p) {
						got[i] = p
					}
				}
			}
			sort.Strings(got)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Fatalf("objects = %v\nwant      %v", got, want)
			}
		})
	}
}

func container(t *testing.T, name string, spec corev1.PodSpec) corev1.Container {
	t.Helper()
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", name, len(spec.Containers))
	}
	return spec.Containers[0]
}

// configMap returns the one generated recsys-config ConfigMap.
func (m *manifests) configMap(t *testing.T) *corev1.ConfigMap {
	t.Helper()
	var found *corev1.ConfigMap
	for name, cm := range m.configMaps {
		if strings.HasPrefix(name, "recsys-config-") {
			if found != nil {
				t.Fatalf("%s: more than one recsys-config ConfigMap", m.dir)
			}
			found = cm
		}
	}
	if found == nil {
		t.Fatalf("%s: no recsys-config ConfigMap", m.dir)
	}
	return found
}

// podEnv is the environment a container sees: the ConfigMap, the Secret's keys, then its own
// env entries (which take precedence over envFrom, as in Kubernetes). own lists the keys of
// the container's env entries.
func (m *manifests) podEnv(t *testing.T, owner string, c corev1.Container) (env map[string]string, own map[string]bool) {
	t.Helper()
	cm := m.configMap(t)
	env, own = map[string]string{}, map[string]bool{}
	var fromCM, fromSecret bool
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			if ef.ConfigMapRef.Name != cm.Name {
				t.Errorf("%s %s: envFrom ConfigMap %q does not exist (generated name is %q)", m.dir, owner, ef.ConfigMapRef.Name, cm.Name)
			}
			fromCM = true
			for k, v := range cm.Data {
				env[k] = v
			}
		case ef.SecretRef != nil:
			if ef.SecretRef.Name != "recsys-secrets" || (ef.SecretRef.Optional != nil && *ef.SecretRef.Optional) {
				t.Errorf("%s %s: envFrom Secret %q optional=%v, want the required Secret recsys-secrets", m.dir, owner, ef.SecretRef.Name, ef.SecretRef.Optional)
			}
			fromSecret = true
			for k, v := range secretKeys {
				env[k] = v
			}
		}
	}
	if !fromCM || !fromSecret {
		t.Errorf("%s %s: envFrom must include the ConfigMap and the Secret", m.dir, owner)
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			t.Errorf("%s %s: env %s uses valueFrom; keep settings in the ConfigMap/Secret", m.dir, owner, e.Name)
			continue
		}
		env[e.Name] = e.Value
		own[e.Name] = true
	}
	return env, own
}

// sharedEnvUser records which commands read the variables every recsys container gets (the
// ConfigMap and the Secret), so each shared variable can be checked to be read by someone.
type sharedEnvUse map[string][]string

func (u sharedEnvUse) add(res envCheck, shared []string, command string) {
	for _, k := range shared {
		if res.known[k] {
			u[k] = append(u[k], command)
		}
	}
}

func (u sharedEnvUse) check(t *testing.T, where string, shared []string) {
	t.Helper()
	for _, k := range shared {
		if len(u[k]) == 0 && !runtimeEnv[k] {
			t.Errorf("%s: shared variable %s is read by no recsys command that receives it", where, k)
		}
	}
}

// ownUnknown returns the unknown variables the container sets itself.
func ownUnknown(res envCheck, own map[string]bool) []string {
	var out []string
	for _, k := range res.unknown {
		if own[k] {
			out = append(out, k)
		}
	}
	return out
}

func checkSecurity(t *testing.T, where string, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	psc, sc := spec.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod must run as a non-root uid with the RuntimeDefault seccomp profile", where)
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s: container must have a read-only root filesystem, no privilege escalation, all capabilities dropped", where)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken || spec.ServiceAccountName != "recsys" {
		t.Errorf("%s: want serviceAccountName recsys without a mounted token", where)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
		if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
			t.Errorf("%s: %s request %s / limit %s; want both, request <= limit", where, r, req.String(), lim.String())
		}
	}
}

func httpGet(t *testing.T, where, probe string, p *corev1.Probe, c corev1.Container, path string) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s: no %s HTTP probe", where, probe)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("%s: %s probe path %q, want %q", where, probe, p.HTTPGet.Path, path)
	}
	port := p.HTTPGet.Port.IntValue()
	if name := p.HTTPGet.Port.StrVal; name != "" {
		port = 0
		for _, cp := range c.Ports {
			if cp.Name == name {
				port = int(cp.ContainerPort)
			}
		}
	}
	if port != 8080 {
		t.Errorf("%s: %s probe does not reach container port 8080 (--http.addr)", where, probe)
	}
	// /healthz and /readyz answer within infra.CheckBudget whatever hangs; the margin covers
	// a CPU-throttled container and the kubelet's own scheduling, so a hung dependency never
	// fails a probe by its timeout.
	const margin = 2 * time.Second
	if timeout := time.Duration(p.TimeoutSeconds) * time.Second; timeout < infra.CheckBudget+margin {
		t.Errorf("%s: %s probe timeoutSeconds %d; want at least %s (check budget %s + %s margin)",
			where, probe, p.TimeoutSeconds, infra.CheckBudget+margin, infra.CheckBudget, margin)
	}
}

func TestRoleDeployments(t *testing.T) {
	for _, dir := range overlays {
		m := kustomizeBuild(t, dir)
		var shared []string
		for k := range m.configMap(t).Data {
			shared = append(shared, k)
		}
		for k := range secretKeys {
			shared = append(shared, k)
		}
		uses := sharedEnvUse{}
		for name, args := range roles {
			where := dir + " " + name
			d, ok := m.deployments[name]
			if !ok {
				t.Fatalf("%s: missing", where)
			}
			spec := d.Spec.Template.Spec
			c := container(t, where, spec)
			if len(c.Command) > 0 || !slices.Equal(c.Args, args) {
				t.Errorf("%s: command %v args %v; want the image's entrypoint with args %v", where, c.Command, c.Args, args)
			}
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("%s: selector %v does not select its own pods %v", where, d.Spec.Selector, d.Spec.Template.Labels)
			}
			httpGet(t, where, "liveness", c.LivenessProbe, c, "/healthz")
			httpGet(t, where, "readiness", c.ReadinessProbe, c, "/readyz")
			httpGet(t, where, "startup", c.StartupProbe, c, "/healthz")
			checkSecurity(t, where, spec, c)

			ann := d.Spec.Template.Annotations
			if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "8080" || ann["prometheus.io/path"] != "/metrics/prometheus" {
				t.Errorf("%s: scrape annotations %v", where, ann)
			}

			env, own := m.podEnv(t, name, c)
			res := checkCommandEnv(t, args, env)
			if unknown := ownUnknown(res, own); len(unknown) > 0 {
				t.Errorf("%s: env entries recsys %s does not read: %v", where, strings.Join(args, " "), unknown)
			}
			uses.add(res, shared, name)
			if res.err != nil {
				t.Errorf("%s: recsys would refuse to start: %v", where, res.err)
			}

			// Graceful shutdown: SIGTERM -> readiness 503 -> delay -> drain, all within the grace
			// period, so the kubelet never has to SIGKILL a draining pod.
			grace := time.Duration(30) * time.Second
			if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds != 30 {
				t.Errorf("%s: terminationGracePeriodSeconds %v, want 30", where, spec.TerminationGracePeriodSeconds)
			}
			timeout, delay := parseDur(t, where, env, "RECSYS_SHUTDOWN_TIMEOUT"), parseDur(t, where, env, "RECSYS_SHUTDOWN_DELAY")
			if timeout != 25*time.Second || timeout >= grace || delay >= timeout {
				t.Errorf("%s: shutdown delay %s timeout %s; want timeout 25s < grace %s and delay < timeout", where, delay, timeout, grace)
			}
			if want := map[bool]time.Duration{true: 5 * time.Second, false: 0}[name == "recsys-api"]; delay != want {
				t.Errorf("%s: RECSYS_SHUTDOWN_DELAY %s, want %s (only pods behind a Service wait for endpoints to update)", where, delay, want)
			}

			limit := c.Resources.Limits[corev1.ResourceMemory]
			if soft, ok := env["GOMEMLIMIT"]; !ok {
				t.Errorf("%s: GOMEMLIMIT not set", where)
			} else if q, err := resource.ParseQuantity(strings.TrimSuffix(soft, "B")); err != nil || q.Cmp(limit) >= 0 {
				t.Errorf("%s: GOMEMLIMIT %s must be below the memory limit %s", where, soft, limit.String())
			}
			if name == "recsys-api" && d.Spec.Replicas != nil {
				t.Errorf("%s: replicas is set; the HPA owns the api's replica count", where)
			}
		}
		uses.check(t, dir, shared)
	}
}

func parseDur(t *testing.T, where string, env map[string]string, key string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(env[key])
	if err != nil {
		t.Errorf("%s: %s=%q: %v", where, key, env[key], err)
	}
	return d
}

func podLabels(m *manifests) map[string]labels.Set {
	out := map[string]labels.Set{}
	for name, d := range m.deployments {
		out[name] = labels.Set(d.Spec.Template.Labels)
	}
	return out
}

func TestAPIServiceAndAutoscaler(t *testing.T) {
	minReplicas := map[string]int32{"deploy/k8s/base": 2, "deploy/k8s/overlays/dev": 1, "deploy/k8s/overlays/prod": 3}
	for _, dir := range overlays {
		m := kustomizeBuild(t, dir)
		svc := m.services["recsys-api"]
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		for name, l := range podLabels(m) {
			if sel.Matches(l) != (name == "recsys-api") {
				t.Errorf("%s: Service recsys-api selector %v matches %s = %t", dir, svc.Spec.Selector, name, sel.Matches(l))
			}
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.StrVal != "http" {
			t.Errorf("%s: Service ports %+v, want one port targeting the named port http", dir, svc.Spec.Ports)
		}

		hpa := m.hpas["recsys-api"]
		ref := hpa.Spec.ScaleTargetRef
		if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != "recsys-api" {
			t.Errorf("%s: HPA targets %+v, want the recsys-api Deployment", dir, ref)
		}
		if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != minReplicas[dir] || hpa.Spec.MaxReplicas <= *hpa.Spec.MinReplicas {
			t.Errorf("%s: HPA min %v max %d; want min %d < max", dir, hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas, minReplicas[dir])
		}
		if len(hpa.Spec.Metrics) != 1 {
			t.Fatalf("%s: HPA metrics %+v, want CPU only", dir, hpa.Spec.Metrics)
		}
		mt := hpa.Spec.Metrics[0]
		if mt.Type != autoscalingv2.ResourceMetricSourceType || mt.Resource == nil || mt.Resource.Name != corev1.ResourceCPU ||
			mt.Resource.Target.Type != autoscalingv2.UtilizationMetricType || mt.Resource.Target.AverageUtilization == nil ||
			*mt.Resource.Target.AverageUtilization != 70 {
			t.Errorf("%s: HPA metric %+v, want CPU utilization 70%%", dir, mt)
		}
		// Utilization is relative to the request: without one the HPA cannot work.
		c := container(t, dir, m.deployments["recsys-api"].Spec.Template.Spec)
		if c.Resources.Requests.Cpu().IsZero() {
			t.Errorf("%s: the api has no CPU request, the HPA's utilization has no base", dir)
		}
	}
}

func TestDisruptionBudgets(t *testing.T) {
	for _, dir := range overlays {
		m := kustomizeBuild(t, dir)
		covered := map[string]int{}
		for name, pdb := range m.pdbs {
			sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			if err != nil || sel.Empty() {
				t.Errorf("%s: PDB %s selector %v", dir, name, pdb.Spec.Selector)
				continue
			}
			var matched []string
			for dep, l := range podLabels(m) {
				if sel.Matches(l) {
					matched = append(matched, dep)
					covered[dep]++
				}
			}
			if len(matched) != 1 || matched[0] != name {
				t.Errorf("%s: PDB %s selects %v, want exactly the Deployment of the same name", dir, name, matched)
			}
			if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
				t.Errorf("%s: PDB %s: want maxUnavailable 1 (a role scaled to one pod stays drainable)", dir, name)
			}
		}
		for dep := range m.deployments {
			if covered[dep] != 1 {
				t.Errorf("%s: Deployment %s is covered by %d PDBs, want 1", dir, dep, covered[dep])
			}
		}
	}
}

func TestMigrationJob(t *testing.T) {
	for _, dir := range overlays {
		m := kustomizeBuild(t, dir)
		j := m.jobs["recsys-migrate"]
		spec := j.Spec.Template.Spec
		where := dir + " Job recsys-migrate"
		c := container(t, where, spec)
		if !slices.Equal(c.Args, []string{"migrate", "up"}) || len(c.Command) > 0 {
			t.Errorf("%s: command %v args %v, want args [migrate up]", where, c.Command, c.Args)
		}
		if spec.RestartPolicy != corev1.RestartPolicyNever || j.Spec.BackoffLimit == nil || *j.Spec.BackoffLimit < 1 ||
			j.Spec.ActiveDeadlineSeconds == nil || j.Spec.TTLSecondsAfterFinished == nil {
			t.Errorf("%s: want restartPolicy Never, retries (backoffLimit), a deadline and a TTL", where)
		}
		checkSecurity(t, where, spec, c)
		env, own := m.podEnv(t, "recsys-migrate", c)
		res := checkCommandEnv(t, c.Args, env)
		if unknown := ownUnknown(res, own); len(unknown) > 0 {
			t.Errorf("%s: env entries recsys migrate up does not read: %v", where, unknown)
		}
		if res.err != nil {
			t.Errorf("%s: %v", where, res.err)
		}
		if !res.known["DATABASE_URL"] {
			t.Errorf("%s: recsys migrate up does not read DATABASE_URL from the Secret", where)
		}
		api := container(t, dir, m.deployments["recsys-api"].Spec.Template.Spec)
		if c.Image != api.Image {
			t.Errorf("%s: image %s differs from the Deployments' %s; migrations must come from the image being deployed", where, c.Image, api.Image)
		}
	}
}

func TestNoSecretValuesCommitted(t *testing.T) {
	for _, dir := range overlays {
		m := kustomizeBuild(t, dir)
		for _, o := range m.objects {
			if strings.HasPrefix(o, "Secret/") {
				t.Errorf("%s: %s is generated from the repository; secrets are created in the cluster (deploy/k8s/README.md)", dir, o)
			}
		}
		cm := m.configMap(t)
		for k := range cm.Data {
			if looksSecret(k) || secretKeys[k] != "" {
				t.Errorf("%s: ConfigMap key %s belongs in the Secret", dir, k)
			}
		}
	}
}

func TestOverlayDifferences(t *testing.T) {
	partitions := func(m *manifests) int32 {
		var n int32
		fmt.Sscan(m.configMap(t).Data["RECSYS_KAFKA_PARTITIONS"], &n)
		return n
	}
	prod := kustomizeBuild(t, "deploy/k8s/overlays/prod")
	dev := kustomizeBuild(t, "deploy/k8s/overlays/dev")
	for _, m := range []*manifests{prod, dev} {
		for name, d := range m.deployments {
			img := container(t, name, d.Spec.Template.Spec).Image
			if m == prod && (strings.HasSuffix(img, ":dev") || strings.HasSuffix(img, ":latest") || !strings.Contains(img, "/")) {
				t.Errorf("prod %s: image %s; prod pins a registry and a release tag", name, img)
			}
			for _, o := range []string{"recsys-api", "recsys-relay", "recsys-consumer"} {
				if d.Namespace == "" || d.Namespace != m.deployments[o].Namespace {
					t.Errorf("%s %s: namespace %q", m.dir, name, d.Namespace)
				}
			}
		}
		// Consumers beyond the partition count would idle: the group assigns each partition once.
		if c := m.deployments["recsys-consumer"]; c.Spec.Replicas == nil || *c.Spec.Replicas > partitions(m) {
			t.Errorf("%s: %v consumers for %d partitions", m.dir, c.Spec.Replicas, partitions(m))
		}
	}
	if r := prod.deployments["recsys-relay"].Spec.Replicas; r == nil || *r < 2 {
		t.Errorf("prod: relay replicas %v; two keep publishing while one is rescheduled", r)
	}
	if rf := prod.configMap(t).Data["RECSYS_KAFKA_REPLICATION_FACTOR"]; rf != "3" {
		t.Errorf("prod: topic replication factor %s, want 3", rf)
	}
	if rf := dev.configMap(t).Data["RECSYS_KAFKA_REPLICATION_FACTOR"]; rf != "1" {
		t.Errorf("dev: topic replication factor %s, want 1 (one broker)", rf)
	}
	for _, m := range []*manifests{prod, dev} {
		for _, ns := range m.namespaces {
			if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
				t.Errorf("%s: namespace %s does not enforce the restricted Pod Security Standard", m.dir, ns.Name)
			}
			if d := m.deployments["recsys-api"]; d.Namespace != ns.Name {
				t.Errorf("%s: objects in %q, namespace object %q", m.dir, d.Namespace, ns.Name)
			}
		}
	}
}

// TestPostgresConnectionBudget keeps the prod overlay's worst case within the budget
// docs/scaling.md states (300 connections on the primary, 20 kept for maintenance): every
// api replica the HPA may start, the relays and consumers, each with a full pool, plus the
// pods a rolling update adds on top (maxSurge: old and new pods hold pools together), each
// relay's LISTEN connection (outside its pool) and the migration job's one.
func TestPostgresConnectionBudget(t *testing.T) {
	const maxConnections, reserved = 300, 20
	m := kustomizeBuild(t, "deploy/k8s/overlays/prod")
	pool := func(d *appsv1.Deployment) int {
		v := m.configMap(t).Data["RECSYS_PG_MAX_CONNS"]
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "RECSYS_PG_MAX_CONNS" {
				v = e.Value // a role's own pool size
			}
		}
		var n int
		if _, err := fmt.Sscan(v, &n); err != nil || n <= 0 {
			t.Fatalf("prod: RECSYS_PG_MAX_CONNS of %s not set (the default pool of 20 per pod is too large at 20 api pods): %q", d.Name, v)
		}
		return n
	}
	var total int
	var parts []string
	for _, name := range []string{"recsys-api", "recsys-relay", "recsys-consumer"} {
		d := m.deployments[name]
		var replicas int
		if h, ok := m.hpas[name]; ok {
			replicas = int(h.Spec.MaxReplicas)
		} else if d.Spec.Replicas != nil {
			replicas = int(*d.Spec.Replicas)
		} else {
			t.Fatalf("%s: neither replicas nor an autoscaler", name)
		}
		surge := 0
		if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxSurge != nil {
			var err error
			if surge, err = intstr.GetScaledValueFromIntOrPercent(ru.MaxSurge, replicas, true); err != nil {
				t.Fatalf("%s: maxSurge: %v", name, err)
			}
		} else {
			surge = (replicas + 3) / 4 // Kubernetes' default maxSurge, 25 %
		}
		perPod := pool(d)
		if name == "recsys-relay" {
			perPod++ // LISTEN recsys_outbox on a connection of its own
		}
		n := (replicas + surge) * perPod
		total += n
		parts = append(parts, fmt.Sprintf("%s (%d+%d surge) x %d = %d", name, replicas, surge, perPod, n))
	}
	total += len(m.jobs) // migrate: one connection
	if total > maxConnections-reserved {
		t.Errorf("prod: %s, + %d job(s) = %d connections > %d", strings.Join(parts, ", "), len(m.jobs), total, maxConnections-reserved)
	}
}

// admits reports whether the NetworkPolicies let a pod in namespace fromNS (with the labels
// Kubernetes gives every namespace: kubernetes.io/metadata.name) open port of a Deployment's
// pods, as the API defines it: a pod no policy of type Ingress selects admits everything; a
// selected pod admits what any selecting policy's rule admits.
func (m *manifests) admits(t *testing.T, dep, fromNS string, port corev1.ContainerPort) bool {
	t.Helper()
	podLabels := labels.Set(m.deployments[dep].Spec.Template.Labels)
	nsLabels := labels.Set{"kubernetes.io/metadata.name": fromNS}
	selected := false
	for name, np := range m.netpols {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			t.Fatalf("%s: NetworkPolicy %s: %v", m.dir, name, err)
		}
		if !sel.Matches(podLabels) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			continue
		}
		selected = true
		for _, rule := range np.Spec.Ingress {
			if ruleAdmits(t, rule, nsLabels, port) {
				return true
			}
		}
	}
	return !selected
}

func ruleAdmits(t *testing.T, rule networkingv1.NetworkPolicyIngressRule, nsLabels labels.Set, port corev1.ContainerPort) bool {
	t.Helper()
	portOK := len(rule.Ports) == 0
	for _, p := range rule.Ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if proto == port.Protocol && p.Port != nil &&
			(p.Port.Type == intstr.String && p.Port.StrVal == port.Name || p.Port.Type == intstr.Int && p.Port.IntVal == port.ContainerPort) {
			portOK = true
		}
	}
	fromOK := len(rule.From) == 0
	for _, peer := range rule.From {
		if peer.IPBlock != nil || peer.PodSelector != nil {
			// Neither is used here; a test of them would need the peer's pod labels and address.
			t.Fatalf("ingress peer %+v: only namespaceSelector peers are evaluated", peer)
		}
		sel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Matches(nsLabels) {
			fromOK = true
		}
	}
	return portOK && fromOK
}

// TestNetworkPolicies: clients reach only the api; the relay's and the consumer's port (their
// metrics and, with --http.pprof, Go's profiles) only the metrics scraper's namespace; no
// other port of any role is open to anyone.
func TestNetworkPolicies(t *testing.T) {
	for _, dir := range overlays {
		m := kustomizeBuild(t, dir)
		for dep := range roles {
			c := container(t, dep, m.deployments[dep].Spec.Template.Spec)
			if len(c.Ports) != 1 || c.Ports[0].Name != "http" {
				t.Fatalf("%s: %s ports %v, want the one named http these policies name", dir, dep, c.Ports)
			}
			http := c.Ports[0]
			other := corev1.ContainerPort{Name: "other", ContainerPort: 9999, Protocol: corev1.ProtocolTCP}
			for _, tc := range []struct {
				from string
				port corev1.ContainerPort
				want bool
			}{
				{"monitoring", http, true},
				{"clients", http, dep == "recsys-api"},
				{"monitoring", other, false},
				{"clients", other, false},
			} {
				if got := m.admits(t, dep, tc.from, tc.port); got != tc.want {
					t.Errorf("%s: %s port %s from namespace %q admitted = %v, want %v", dir, dep, tc.port.Name, tc.from, got, tc.want)
				}
			}
		}
	}
}
