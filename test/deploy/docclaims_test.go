package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/labels"

	"recsys/cmd"
	"recsys/pkg/flagenv"
)

// allDocs are every Markdown document an operator reads: the ones whose commands they run
// (operatorDocs) and the references and records those link to.
func allDocs(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(repoRoot(t), "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := []string{"README.md", "deploy/k8s/README.md"}
	for _, d := range docs {
		out = append(out, filepath.ToSlash(strings.TrimPrefix(d, repoRoot(t)+string(filepath.Separator))))
	}
	return out
}

// codeLines returns the lines of a Markdown text's code blocks (a line ending in a backslash
// joined with the next, as the shell reads it) and its code spans.
func codeLines(text string) []string {
	var out []string
	for _, m := range fence.FindAllStringSubmatch(text, -1) {
		out = append(out, strings.Split(strings.ReplaceAll(m[1], "\\\n", " "), "\n")...)
	}
	for _, m := range inlineCode.FindAllStringSubmatch(fence.ReplaceAllString(text, ""), -1) {
		out = append(out, m[1])
	}
	return out
}

// markdownAnchors returns the anchors GitHub gives a Markdown text's headings: lower case,
// punctuation dropped, spaces as dashes, a repeated heading numbered -1, -2, ... Lines in code
// blocks (shell comments) are no headings.
func markdownAnchors(text string) map[string]bool {
	out := map[string]bool{}
	strip := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	inFence := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			continue
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		a := strings.ReplaceAll(strip.ReplaceAllString(h, ""), " ", "-")
		for n, try := 0, a; ; n++ {
			if !out[try] {
				out[try] = true
				break
			}
			try = fmt.Sprintf("%s-%d", a, n+1)
		}
	}
	return out
}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// linkProblems reports the relative links of the Markdown document rel (text) whose file or
// heading does not exist; exists and anchors read the repository.
func linkProblems(rel, text string, exists func(string) bool, anchors func(string) map[string]bool) []string {
	var out []string
	for _, m := range mdLink.FindAllStringSubmatch(fence.ReplaceAllString(text, ""), -1) {
		link := m[1]
		if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
			continue
		}
		file, anchor, _ := strings.Cut(link, "#")
		target := rel
		if file != "" {
			target = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(rel), file)))
		}
		switch {
		case !exists(target):
			out = append(out, fmt.Sprintf("link %s: %s does not exist", link, target))
		case anchor != "" && strings.HasSuffix(target, ".md") && !anchors(target)[anchor]:
			out = append(out, fmt.Sprintf("link %s: %s has no heading #%s", link, target, anchor))
		}
	}
	return out
}

// A link to a renamed section lands at the top of a 500-line runbook mid-incident.
func TestDocumentLinksResolve(t *testing.T) {
	root := repoRoot(t)
	exists := func(rel string) bool { _, err := os.Stat(filepath.Join(root, rel)); return err == nil }
	anchors := func(rel string) map[string]bool { return markdownAnchors(string(readFile(t, rel))) }
	total := 0
	for _, doc := range allDocs(t) {
		text := string(readFile(t, doc))
		total += len(mdLink.FindAllString(text, -1))
		for _, p := range linkProblems(doc, text, exists, anchors) {
			t.Errorf("%s: %s", doc, p)
		}
	}
	if total < 20 {
		t.Errorf("only %d links found; the extraction is broken", total)
	}
}

func TestLinkCheckCatchesMistakes(t *testing.T) {
	files := map[string]string{
		"docs/runbook.md":  "# Runbook\n## Common tools\n```sh\n# not a heading\n```\n## Common tools\n## RecoShedding (p99)\n",
		"docs/rollback.md": "# Rollback\n",
	}
	exists := func(rel string) bool { _, ok := files[rel]; return ok }
	anchors := func(rel string) map[string]bool { return markdownAnchors(files[rel]) }
	text := "[a](runbook.md#common-tools) [b](runbook.md#common-tools-1) [c](runbook.md#recoshedding-p99) " +
		"[d](runbook.md#not-a-heading) [e](scaling.md) [f](#rollback) [g](../README.md) [h](https://example.com/x#y)"
	got := linkProblems("docs/rollback.md", text, exists, anchors)
	want := []string{
		"link runbook.md#not-a-heading: docs/runbook.md has no heading #not-a-heading",
		"link scaling.md: docs/scaling.md does not exist",
		"link ../README.md: README.md does not exist",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("linkProblems = %q, want %q", got, want)
	}
}

// repoPath is a path in the repository named in a document's code: it starts with one of the
// repository's top-level folders.
var repoPath = regexp.MustCompile(`(?:^|[^\w./$-])((?:docs|deploy|config|scripts|pkg|modules|cmd|migrations|test|\.ci)/[\w./*-]*[\w/*])`)

// pathProblem reports a repository path that names nothing: neither a file or folder (a glob
// matching one) nor, with its last dotted part dropped, a Go package's symbol
// (pkg/outbox.AppendFrame).
func pathProblem(root, p string) string {
	p = strings.TrimSuffix(p, ".")
	try := []string{p}
	if pkg, sym, ok := cutLast(p, "."); ok && sym != "" && strings.ToUpper(sym[:1]) == sym[:1] {
		try = append(try, pkg)
	}
	for _, p := range try {
		if m, _ := filepath.Glob(filepath.Join(root, p)); len(m) > 0 {
			return ""
		}
	}
	return p + " does not exist"
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// The files and folders the documents, and the comments of the packaging files and
// scripts, send operators to exist. `deploy/<name>` in a kubectl command is a Deployment,
// checked by TestDocumentedKubectlCommands.
func TestDocumentedPathsExist(t *testing.T) {
	root := repoRoot(t)
	sources := variableSources(t)
	for _, glob := range []string{"Dockerfile", ".dockerignore", "config/*", "deploy/prometheus/*.yml", "deploy/k8s/*/*.yaml",
		"deploy/k8s/*/*/*.yaml", "deploy/k8s/*/*.env"} {
		m, err := filepath.Glob(filepath.Join(root, glob))
		if err != nil || len(m) == 0 {
			t.Fatalf("%s matches nothing (%v)", glob, err)
		}
		for _, f := range m {
			sources = append(sources, filepath.ToSlash(strings.TrimPrefix(f, root+string(filepath.Separator))))
		}
	}
	total := 0
	for _, doc := range sources {
		text := string(readFile(t, doc))
		lines := strings.Split(text, "\n")
		if strings.HasSuffix(doc, ".md") {
			lines = codeLines(text)
		}
		for _, line := range lines {
			kubectl := strings.Contains(line, "kubectl")
			for _, m := range repoPath.FindAllStringSubmatch(line, -1) {
				if kubectl && regexp.MustCompile(`^deploy/[a-z0-9-]+$`).MatchString(m[1]) {
					continue
				}
				total++
				if p := pathProblem(root, m[1]); p != "" {
					t.Errorf("%s: `%s`: %s", doc, line, p)
				}
			}
		}
	}
	if total < 20 {
		t.Errorf("only %d repository paths found; the extraction is broken", total)
	}
}

func TestPathCheckCatchesMistakes(t *testing.T) {
	root := repoRoot(t)
	for p, ok := range map[string]bool{
		"deploy/k8s/overlays/prod": true, "docs/*.md": true, "pkg/outbox.AppendFrame": true, "config/compose.env.": true,
		"deploy/k8s/overlays/staging": false, "scripts/service.sh": false, "docs/*.txt": false,
	} {
		if got := pathProblem(root, p) == ""; got != ok {
			t.Errorf("pathProblem(%q) found = %t, want %t", p, got, ok)
		}
	}
	got := repoPath.FindAllStringSubmatch("see `scripts/services.sh` and ./scripts/x, $HOME/docs/y, pkg/outbox.AppendFrame", -1)
	if len(got) != 2 || got[0][1] != "scripts/services.sh" || got[1][1] != "pkg/outbox.AppendFrame" {
		t.Fatalf("repoPath matches %q", got)
	}
}

// kubectlRef is an object a kubectl command names.
type kubectlRef struct{ kind, name string }

// kubectlCall is what a documented kubectl command refers to.
type kubectlCall struct {
	namespace string
	verbs     []string
	refs      []kubectlRef
	selector  string
	waitFor   string // --for of kubectl wait
	tail      bool   // --tail given
}

// kubectlValueFlags take their value as the next word.
var kubectlValueFlags = map[string]bool{"-n": true, "--namespace": true, "-l": true, "--selector": true, "-o": true,
	"-f": true, "-k": true, "-c": true, "--container": true}

// kubectlKinds maps the resource names the documents use to kinds; others (pods, events,
// secrets) are not checked.
var kubectlKinds = map[string]string{"deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
	"job": "Job", "jobs": "Job", "svc": "Service", "service": "Service", "hpa": "HorizontalPodAutoscaler",
	"pdb": "PodDisruptionBudget", "cm": "ConfigMap", "configmap": "ConfigMap", "sa": "ServiceAccount"}

// kubectlVerbs are the verbs after which `TYPE NAME...` names objects (rollout takes a second verb).
var kubectlVerbs = map[string]bool{"get": true, "describe": true, "delete": true, "scale": true, "wait": true,
	"status": true, "history": true, "restart": true, "undo": true}

// parseKubectl returns the kubectl commands of a line (one per `kubectl` word, up to a shell
// operator).
func parseKubectl(line string) []kubectlCall {
	var out []kubectlCall
	words := strings.Fields(strings.ReplaceAll(line, "$(", " "))
	for i, w := range words {
		if w != "kubectl" {
			continue
		}
		var c kubectlCall
		var args []string
		for j := i + 1; j < len(words); j++ {
			a := words[j]
			if a == "|" || a == "&&" || a == "||" || a == ";" || a == "&" || a == "--" || a == "#" {
				break
			}
			a = strings.TrimRight(a, ";`")
			name, val, hasVal := strings.Cut(a, "=")
			if kubectlValueFlags[name] && !hasVal && j+1 < len(words) {
				val, hasVal = words[j+1], true
				j++
			}
			switch {
			case name == "-n" || name == "--namespace":
				c.namespace = val
			case name == "-l" || name == "--selector":
				c.selector = strings.Trim(val, `'"`)
			case name == "--for":
				c.waitFor = val
			case name == "--tail":
				c.tail = true
			case strings.HasPrefix(a, "-"):
			default:
				args = append(args, a)
			}
			if strings.HasSuffix(words[j], ";") {
				break
			}
		}
		out = append(out, c.withArgs(args))
	}
	return out
}

// withArgs sets the verbs (rollout takes a second one) and then the objects: TYPE/NAME words,
// or one TYPE followed by NAMEs after the verbs that take them.
func (c kubectlCall) withArgs(args []string) kubectlCall {
	if len(args) == 0 {
		return c
	}
	n := 1
	switch args[0] {
	case "rollout":
		n = 2
	case "create": // create secret generic NAME ...: nothing of the manifests
		n = len(args)
	}
	n = min(n, len(args))
	c.verbs, args = args[:n], args[n:]
	typed := ""
	for k, a := range args {
		if typ, name, ok := strings.Cut(a, "/"); ok {
			c.refs = append(c.refs, kubectlRef{typ, name})
			continue
		}
		if !kubectlVerbs[c.verbs[len(c.verbs)-1]] {
			break
		}
		if typed == "" {
			typed = a
			if k == len(args)-1 { // TYPE alone: every object, or a selection
				for _, typ := range strings.Split(a, ",") {
					c.refs = append(c.refs, kubectlRef{typ, ""})
				}
			}
			continue
		}
		c.refs = append(c.refs, kubectlRef{typed, a})
	}
	return c
}

// createdByDocs are the objects the documents' own manifests create (the one-off Job).
var createdByDocs = regexp.MustCompile(`metadata:\s*\{\s*name:\s*([a-z0-9-]+)`)

// kubectlProblems reports what a documented kubectl command names that the manifests do not
// hold, and invocations kubectl refuses.
func kubectlProblems(c kubectlCall, m *manifests, namespaces map[string]bool, created map[string]bool) []string {
	var out []string
	if c.namespace != "" && !strings.Contains(c.namespace, "$") && !namespaces[c.namespace] {
		out = append(out, fmt.Sprintf("namespace %s is created by no overlay", c.namespace))
	}
	objects := map[string]bool{}
	for _, o := range m.objects {
		objects[o] = true
	}
	named := 0
	for _, r := range c.refs {
		kind, known := kubectlKinds[r.kind]
		if r.name != "" {
			named++
		}
		if !known || r.name == "" || strings.ContainsAny(r.name, "$<") || created[r.name] {
			continue
		}
		if !objects[kind+"/"+r.name] {
			out = append(out, fmt.Sprintf("%s/%s: the manifests have no %s %s", r.kind, r.name, kind, r.name))
		}
	}
	if c.selector != "" {
		sel, err := labels.Parse(c.selector)
		if err != nil {
			out = append(out, fmt.Sprintf("selector %q: %v", c.selector, err))
		} else if !selectsAny(sel, m) {
			out = append(out, fmt.Sprintf("selector %q matches no object of the manifests", c.selector))
		}
	}
	// kubectl rollout status watches exactly one object: with several it fails ("rollout status
	// is only supported on individual resources and resource collections - N resources were
	// found") before it watches anything.
	if len(c.verbs) == 2 && c.verbs[0] == "rollout" && c.verbs[1] == "status" && (named != 1 || c.selector != "") {
		out = append(out, "kubectl rollout status takes exactly one object (loop over the Deployments)")
	}
	// A Job that fails never gets the condition Complete, so kubectl wait sits out its whole
	// --timeout before the operator learns anything.
	if len(c.verbs) == 1 && c.verbs[0] == "wait" && strings.EqualFold(c.waitFor, "condition=complete") {
		for _, r := range c.refs {
			if kubectlKinds[r.kind] == "Job" {
				out = append(out, "kubectl wait --for=condition=complete on a Job waits out its timeout when the Job fails: wait for Complete or Failed")
			}
		}
	}
	// With a selector, kubectl logs prints only the last 10 lines of each pod unless --tail
	// says otherwise, --since or not: on api pods, whose access log writes a line per request,
	// a grep for errors then finds none.
	if len(c.verbs) == 1 && c.verbs[0] == "logs" && c.selector != "" && !c.tail {
		out = append(out, "kubectl logs -l shows the last 10 lines of each pod only: add --tail=-1")
	}
	return out
}

// selectsAny reports whether sel matches the labels of a Deployment, its pods or a Job.
func selectsAny(sel labels.Selector, m *manifests) bool {
	for _, d := range m.deployments {
		if sel.Matches(labels.Set(d.Labels)) || sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			return true
		}
	}
	for _, j := range m.jobs {
		if sel.Matches(labels.Set(j.Labels)) || sel.Matches(labels.Set(j.Spec.Template.Labels)) {
			return true
		}
	}
	return false
}

// The kubectl commands of the documents name the objects, labels and namespaces the
// manifests create, and are invocations kubectl accepts: a runbook command that fails or
// selects nothing costs minutes of an incident.
func TestDocumentedKubectlCommands(t *testing.T) {
	prod := kustomizeBuild(t, "deploy/k8s/overlays/prod")
	namespaces := map[string]bool{}
	for _, o := range []string{"deploy/k8s/overlays/dev", "deploy/k8s/overlays/prod"} {
		for ns := range kustomizeBuild(t, o).namespaces {
			namespaces[ns] = true
		}
	}
	total := 0
	for _, doc := range allDocs(t) {
		text := string(readFile(t, doc))
		created := map[string]bool{}
		for _, m := range createdByDocs.FindAllStringSubmatch(text, -1) {
			created[m[1]] = true
		}
		for _, line := range codeLines(text) {
			for _, c := range parseKubectl(line) {
				total++
				for _, p := range kubectlProblems(c, prod, namespaces, created) {
					t.Errorf("%s: `%s`: %s", doc, strings.TrimSpace(line), p)
				}
			}
		}
	}
	if total < 30 {
		t.Errorf("only %d kubectl commands found; the extraction is broken", total)
	}
}

func TestKubectlCheckCatchesMistakes(t *testing.T) {
	prod := kustomizeBuild(t, "deploy/k8s/overlays/prod")
	namespaces := map[string]bool{"recsys": true}
	for line, want := range map[string]int{
		"kubectl -n recsys rollout status deploy/recsys-api":                                     0,
		"kubectl -n recsys rollout status deploy/recsys-api deploy/recsys-relay":                 1,
		"kubectl -n $NS get hpa recsys-api; kubectl -n $NS describe deploy recsys-worker":        1,
		"kubectl -n recsys-prod logs deploy/recsys-relay --since=15m | jq .":                     1,
		"kubectl -n $NS get pods -l app.kubernetes.io/component=consumers":                       1,
		"kubectl -n $NS get deploy,pods -l app.kubernetes.io/name=recsys":                        0,
		"kubectl -n $NS exec deploy/recsys-api -- recsys healthcheck":                            0,
		"kubectl -n $NS port-forward svc/recsys-api 8080:80 &":                                   0,
		"kubectl -n $NS wait --for=condition=complete --timeout=10m job/recsys-oneoff":           1,
		"kubectl -n recsys wait --for=condition=available deploy/recsys-api":                     0,
		"kubectl delete job recsys-migrate -n recsys --ignore-not-found":                         0,
		"kubectl -n recsys scale deploy/recsys-consumer --replicas=0":                            0,
		"for d in recsys-api recsys-relay; do kubectl -n recsys rollout undo deploy/$d; done":    0,
		"kubectl -n recsys rollout restart deploy -l app.kubernetes.io/name=recsys":              0,
		"kubectl -n recsys create secret generic recsys-secrets --from-literal=DATABASE_URL='x'": 0,
		"kubectl -n $NS logs job/recsys-migrat":                                                  1,
		"kubectl -n $NS logs -l app.kubernetes.io/component=api --prefix --since=10m | grep x":   1,
		"kubectl -n $NS logs -l app.kubernetes.io/component=api --tail=-1 --since=10m | grep x":  0,
	} {
		calls := parseKubectl(line)
		got := 0
		for _, c := range calls {
			got += len(kubectlProblems(c, prod, namespaces, map[string]bool{"recsys-oneoff": true}))
		}
		if len(calls) == 0 || got != want {
			t.Errorf("%q: %d calls, %d problems, want %d", line, len(calls), got, want)
		}
	}
}

// readyzFilter is a jq filter applied to a /readyz answer in a document.
var readyzFilter = regexp.MustCompile(`/readyz\s*\|\s*jq\s+('[^']*'|[^\s` + "`" + `]+)`)

// jqEval evaluates the jq filters the documents use on /readyz: paths (.a.b), alternatives
// (A // B) and pipes (A | B).
func jqEval(filter string, v any) (any, error) {
	parts := strings.Split(filter, "|")
	for _, part := range parts {
		var out any
		for _, alt := range strings.Split(part, "//") {
			alt = strings.TrimSpace(alt)
			if !regexp.MustCompile(`^(\.|(\.[A-Za-z_][A-Za-z0-9_]*)+)$`).MatchString(alt) {
				return nil, fmt.Errorf("jq filter %q: only paths, // and | are understood here", filter)
			}
			cur := v
			for _, key := range strings.Split(strings.TrimPrefix(alt, "."), ".") {
				if key == "" {
					continue
				}
				obj, _ := cur.(map[string]any)
				cur = obj[key]
			}
			if out = cur; out != nil && out != false {
				break
			}
		}
		v = out
	}
	return v, nil
}

// readyzBody is an api process's ready answer (/readyz 200, test/e2e checks the real ones):
// degraded dependencies are named under clients while the process stays ready.
const readyzBody = `{"ready": true, "checks": {"db": false, "online_cache": true},
 "clients": {"postgres": "degraded: postgres ping: connection refused", "redis": "ok", "kafka": "ok", "schema": "ok"},
 "modules": {"api": "running", "ingest": "running", "reco": "running", "relay": "running", "consumer": "running"}}`

// readyzProblem reports a filter that does not find the same thing in a ready answer and in
// the unready one, which wraps the same object in "detail" (api-contract §2.11).
func readyzProblem(filter string) string {
	filter = strings.Trim(filter, `'`)
	if filter == "." {
		return ""
	}
	var ready any
	if err := json.Unmarshal([]byte(readyzBody), &ready); err != nil {
		panic(err)
	}
	unready := map[string]any{"detail": ready}
	a, err := jqEval(filter, ready)
	if err != nil {
		return err.Error()
	}
	b, _ := jqEval(filter, unready)
	switch {
	case a == nil:
		return fmt.Sprintf("jq %s prints null on a ready (200) answer, which an api pod gives with PostgreSQL or Redis down: use '.detail // . | ...'", filter)
	case !reflect.DeepEqual(a, b):
		return fmt.Sprintf("jq %s prints %v on a ready answer but %v on an unready (503, wrapped in detail) one: use '.detail // . | ...'", filter, a, b)
	}
	return ""
}

// The /readyz filters of the runbook work whatever the answer: an api pod stays ready (200,
// the object as is) with PostgreSQL or Redis down and names them under clients, an unready
// pod answers 503 with the object under "detail". A filter for one shape prints null on the
// other, which reads as "nothing wrong" mid-incident.
func TestDocumentedReadyzFiltersFindTheirField(t *testing.T) {
	total := 0
	for _, doc := range allDocs(t) {
		for _, line := range codeLines(string(readFile(t, doc))) {
			for _, m := range readyzFilter.FindAllStringSubmatch(line, -1) {
				total++
				if p := readyzProblem(m[1]); p != "" {
					t.Errorf("%s: `%s`: %s", doc, strings.TrimSpace(line), p)
				}
			}
		}
	}
	if total < 3 {
		t.Errorf("only %d /readyz filters found; the extraction is broken", total)
	}
}

func TestReadyzFilterCheckCatchesMistakes(t *testing.T) {
	for filter, ok := range map[string]bool{
		".": true, "'.detail // . | .clients.postgres'": true, ".detail // . | .clients": true,
		".detail.clients.postgres": false, ".clients.postgres": false, ".clients.nosuch": false, "'.clients[]'": false,
	} {
		if p := readyzProblem(filter); (p == "") != ok {
			t.Errorf("readyzProblem(%q) = %q, want ok %t", filter, p, ok)
		}
	}
	if m := readyzFilter.FindStringSubmatch("`curl -s localhost:8080/readyz | jq '.detail // . | .clients.kafka'` on"); m == nil || m[1] != "'.detail // . | .clients.kafka'" {
		t.Fatalf("readyzFilter = %q", m)
	}
}

// docRecsysVar is a RECSYS_ variable in a document; a family (RECSYS_TEST_*) is no name.
var docRecsysVar = regexp.MustCompile(`\bRECSYS_[A-Z0-9_]*[A-Z0-9](_?\*)?`)

// recsysVarProblem reports a RECSYS_ name that no command reads as a flag and no script or
// compose file is known for: exactly what a process warns about at start (flagenv.Unread).
func recsysVarProblem(name string, flags map[string]bool) string {
	if flags[name] || len(flagenv.Unread(pflag.NewFlagSet("doc", pflag.ContinueOnError), flags, []string{name + "=x"})) == 0 {
		return ""
	}
	return name + " is no flag of any recsys command (docs/configuration.md) nor a variable of the scripts or Compose " +
		"(pkg/flagenv's toolingNames): recsys warns about it at start"
}

// flagVariables is the RECSYS_ variable of every flag of every command.
func flagVariables() map[string]bool {
	out := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				for _, n := range flagenv.EnvNames(f) {
					out[n] = true
				}
			})
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(cmd.NewRootCmd())
	return out
}

// variableSources are the files besides the documents that name RECSYS_ variables: the
// scripts that read their own (scripts/services.sh's ports, ...), compose.yaml and
// .env.example with the variables Compose interpolates.
func variableSources(t *testing.T) []string {
	t.Helper()
	scripts, err := filepath.Glob(filepath.Join(repoRoot(t), "scripts", "*"))
	if err != nil {
		t.Fatal(err)
	}
	out := append(allDocs(t), "compose.yaml", ".env.example", "Makefile")
	for _, s := range scripts {
		out = append(out, filepath.ToSlash(strings.TrimPrefix(s, repoRoot(t)+string(filepath.Separator))))
	}
	return out
}

// The RECSYS_ variables the documents tell operators to set exist, and a process does not
// warn about those the scripts and Compose read (an operator exports them in the shell that
// then runs recsys): a misspelt or renamed one in a ConfigMap changes nothing (the process
// only warns at start), and a warning about a variable the documentation asked for teaches
// operators to ignore the warning.
func TestDocumentedVariablesExist(t *testing.T) {
	flags := flagVariables()
	total := 0
	for _, doc := range variableSources(t) {
		seen := map[string]bool{}
		for _, m := range docRecsysVar.FindAllStringSubmatch(string(readFile(t, doc)), -1) {
			if m[1] != "" || seen[m[0]] {
				continue
			}
			seen[m[0]] = true
			total++
			if p := recsysVarProblem(m[0], flags); p != "" {
				t.Errorf("%s: %s", doc, p)
			}
		}
	}
	if total < 20 {
		t.Errorf("only %d RECSYS_ variables found; the extraction is broken", total)
	}
}

func TestVariableCheckCatchesMistakes(t *testing.T) {
	flags := flagVariables()
	for name, ok := range map[string]bool{
		"RECSYS_PG_DSN": true, "RECSYS_API_KEY": true, "RECSYS_PG_DURABLE": true, "RECSYS_TEST_PG_DSN": true, "RECSYS_IMAGE": true,
		"RECSYS_PG_DNS": false, "RECSYS_SHUTDOWN_TIMOUT": false, "RECSYS_RELAY_LEASE_SEC": false,
	} {
		if p := recsysVarProblem(name, flags); (p == "") != ok {
			t.Errorf("recsysVarProblem(%s) = %q, want ok %t", name, p, ok)
		}
	}
	got := docRecsysVar.FindAllStringSubmatch("`RECSYS_TEST_*` and RECSYS_PG_DSN, RECSYS_BENCH*", -1)
	if len(got) != 3 || got[0][1] == "" || got[1][0] != "RECSYS_PG_DSN" || got[1][1] != "" || got[2][1] == "" {
		t.Fatalf("docRecsysVar matches %q", got)
	}
}

// docFlag is a recsys flag in a text: every setting is namespaced (--pg.dsn, --reco.max-in-flight).
var docFlag = regexp.MustCompile(`(?:^|[^\w-])--([a-z][a-z0-9-]*(?:\.[a-z0-9][a-z0-9-]*)+)\b`)

// allFlags is every flag name of every command.
func allFlags() map[string]bool {
	out := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) { out[f.Name] = true })
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(cmd.NewRootCmd())
	out["help"] = true // cobra adds it to every command when it runs
	return out
}

// The settings the documents, manifests and config comments name exist: prose and comments
// are outside TestDocumentedCommandsExist's `recsys ...` lines, and a renamed flag left there
// sends an operator looking for a setting that is not in --help.
func TestDocumentedFlagsExist(t *testing.T) {
	flags := allFlags()
	files := append(variableSources(t), "Dockerfile", "config/compose.env", "deploy/k8s/base/config.env",
		"deploy/prometheus/alerts.yml", "deploy/k8s/base/api.yaml", "deploy/k8s/base/relay.yaml",
		"deploy/k8s/base/consumer.yaml", "deploy/k8s/base/migrate-job.yaml", "deploy/k8s/overlays/prod/kustomization.yaml")
	total := 0
	for _, f := range files {
		// The performance log records flags tried and dropped as well.
		if f == "docs/performance-log.md" {
			continue
		}
		// The tool documents name only recsys' flags, so there plain ones count too (--settle).
		re := docFlag
		if f == "docs/operator-tools.md" || f == "docs/evaluation.md" {
			re = helpFlag
		}
		seen := map[string]bool{}
		for _, m := range re.FindAllStringSubmatch(string(readFile(t, f)), -1) {
			if len(m) > 2 && m[2] != "" {
				continue
			}
			total++
			if !flags[m[1]] && !seen[m[1]] {
				seen[m[1]] = true
				t.Errorf("%s: --%s is no flag of any recsys command", f, m[1])
			}
		}
	}
	if total < 100 {
		t.Errorf("only %d flags found; the extraction is broken", total)
	}
}

func TestFlagCheckCatchesMistakes(t *testing.T) {
	got := docFlag.FindAllStringSubmatch("`--reco.max-in-flight` (256), --pg.dsn, every `--ranking.*` flag, --dry-run, x--y.z", -1)
	if len(got) != 2 || got[0][1] != "reco.max-in-flight" || got[1][1] != "pg.dsn" {
		t.Fatalf("docFlag matches %q", got)
	}
	got = helpFlag.FindAllStringSubmatch("`--settle` (20 s), every `--ranking.*` flag, --reco.max-in-flight", -1)
	if len(got) != 3 || got[0][1] != "settle" || got[0][2] != "" || got[1][2] != ".*" || got[2][1] != "reco.max-in-flight" {
		t.Fatalf("helpFlag matches %q", got)
	}
	flags := allFlags()
	if !flags["reco.max-in-flight"] || !flags["log.level"] || !flags["to-version"] || flags["reco.max-inflight"] {
		t.Fatal("allFlags misses flags or holds one that does not exist")
	}
}

// composeValueFlags take their value as the next word.
var composeValueFlags = map[string]bool{"--profile": true, "-f": true, "--file": true, "-p": true, "--project-name": true,
	"--since": true, "--until": true, "--tail": true, "-n": true, "-e": true, "--env": true, "-u": true, "--user": true,
	"-w": true, "--workdir": true, "--scale": true, "--entrypoint": true, "--name": true}

// composeServiceVerbs are the subcommands whose first argument is a service.
var composeServiceVerbs = map[string]bool{"exec": true, "run": true, "logs": true, "restart": true, "stop": true,
	"start": true, "kill": true, "rm": true, "pull": true, "build": true, "up": true, "ps": true, "top": true}

// composeProblems reports what a documented `docker compose` command names that compose.yaml
// does not define, and a `run` of a recsys service whose command recsys does not have.
func composeProblems(line string, services map[string]bool, infra map[string]bool) []string {
	var out []string
	words := strings.Fields(line)
	for i := 0; i+1 < len(words); i++ {
		if words[i] != "docker" || words[i+1] != "compose" {
			continue
		}
		verb, service := "", ""
		var rest []string
		for j := i + 2; j < len(words); j++ {
			w := words[j]
			if w == "|" || w == "&&" || w == ";" || w == "#" || w == "\\" {
				break
			}
			if service != "" {
				rest = append(rest, w)
				continue
			}
			name, val, hasVal := strings.Cut(w, "=")
			if strings.HasPrefix(w, "-") {
				if composeValueFlags[name] && !hasVal && j+1 < len(words) {
					val = words[j+1]
					j++
				}
				if name == "--scale" {
					if s, _, _ := strings.Cut(val, "="); !services[s] {
						out = append(out, fmt.Sprintf("--scale %s: compose.yaml has no service %s", val, s))
					}
				}
				continue
			}
			if verb == "" {
				verb = w
				continue
			}
			if !composeServiceVerbs[verb] {
				break
			}
			service = w
			if !services[service] {
				out = append(out, fmt.Sprintf("compose.yaml has no service %s", service))
			}
			if verb != "run" && verb != "exec" {
				service = "" // logs, up, ...: every word is a service
			}
		}
		if verb == "run" && service != "" && services[service] && !infra[service] && len(rest) > 0 {
			if p := checkInvocation(strings.Join(rest, " ")); p != "" {
				out = append(out, fmt.Sprintf("the command of `run %s` (recsys %s): %s", service, strings.Join(rest, " "), p))
			}
		}
	}
	return out
}

// The documents' docker compose commands name the services compose.yaml defines (in either
// layout), and the recsys commands they run through `docker compose run` exist.
func TestDocumentedComposeCommands(t *testing.T) {
	services := map[string]bool{}
	for _, profile := range []string{"all", "split"} {
		for _, s := range mustLoadCompose(t, profile).Services {
			services[s.Name] = true
		}
	}
	infra := map[string]bool{}
	for _, s := range infraServices {
		infra[s] = true
	}
	total := 0
	for _, doc := range append(allDocs(t), "compose.yaml", ".env.example") {
		for _, line := range codeLines(string(readFile(t, doc))) {
			if !strings.Contains(line, "docker compose") {
				continue
			}
			total++
			for _, p := range composeProblems(line, services, infra) {
				t.Errorf("%s: `%s`: %s", doc, strings.TrimSpace(line), p)
			}
		}
	}
	// compose.yaml's own header is comments, not Markdown: read its `#   docker compose` lines.
	for _, line := range strings.Split(string(readFile(t, "compose.yaml")), "\n") {
		if l := strings.TrimLeft(line, "# "); strings.HasPrefix(l, "docker compose") {
			total++
			for _, p := range composeProblems(l, services, infra) {
				t.Errorf("compose.yaml: `%s`: %s", l, p)
			}
		}
	}
	if total < 10 {
		t.Errorf("only %d docker compose commands found; the extraction is broken", total)
	}
}

func TestComposeCheckCatchesMistakes(t *testing.T) {
	services := map[string]bool{"postgres": true, "redis": true, "migrate": true, "relay": true, "consume": true}
	infra := map[string]bool{"postgres": true, "redis": true}
	for line, want := range map[string]int{
		"docker compose exec postgres psql -U recsys":                                0,
		"docker compose --profile split up -d":                                       0,
		"docker compose run --rm migrate migrate down --to-version L":                0,
		"docker compose run --rm migrate relay replay --status dead --dry-run":       0,
		"docker compose run --rm migrate relay replay --statuss dead":                1,
		"docker compose run --rm migrate features rebuilt":                           1,
		"docker compose exec postgress psql -U recsys":                               1,
		"docker compose logs --since 15m relay consumer":                             1,
		"docker compose --profile split up -d --scale relay=2 --scale consumer=3":    1,
		"docker compose exec redis redis-cli slowlog get 10 # redis-cli --flag here": 0,
	} {
		if got := composeProblems(line, services, infra); len(got) != want {
			t.Errorf("%q: problems %q, want %d", line, got, want)
		}
	}
}

// podName is a pod of Deployment d as Kubernetes names it: <deployment>-<replicaset hash>-<suffix>.
func podName(d string) string { return d + "-5c4b9d7f8-x2x9z" }

// alertTargetProblems reports the matchers of an alert expression on pod names and on the
// pod labels the scrape copies (app_kubernetes_io_*) that match no pod of the manifests, and
// records the Deployments the pod matchers select.
func alertTargetProblems(expr string, m *manifests, selected map[string]bool) ([]string, error) {
	e, err := promParser.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		for _, lm := range vs.LabelMatchers {
			key, isLabel := strings.CutPrefix(lm.Name, "app_kubernetes_io_")
			if lm.Name != "pod" && !isLabel {
				continue
			}
			found := false
			for name, d := range m.deployments {
				switch {
				case lm.Name == "pod" && lm.Matches(podName(name)):
					selected[name] = true
					found = true
				case isLabel && lm.Matches(d.Spec.Template.Labels["app.kubernetes.io/"+key]):
					found = true
				}
			}
			if !found {
				out = append(out, fmt.Sprintf("%s matches no pod of the Deployments", lm))
			}
		}
		return nil
	})
	return out, nil
}

// The alerts that watch pods by name or by their copied labels select the pods the manifests
// run: after a Deployment's rename a readiness alert would select nothing and stay silent.
func TestAlertsSelectThePodsOfTheManifests(t *testing.T) {
	prod := kustomizeBuild(t, "deploy/k8s/overlays/prod")
	selected := map[string]bool{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			problems, err := alertTargetProblems(r.Expr, prod, selected)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("%s%s: %s", r.Alert, r.Record, p)
			}
		}
	}
	for name := range prod.deployments {
		if !selected[name] {
			t.Errorf("no alert watches the pods of Deployment %s by name (RecsysPodNotReady)", name)
		}
	}
}

func TestAlertTargetCheckCatchesMistakes(t *testing.T) {
	prod := kustomizeBuild(t, "deploy/k8s/overlays/prod")
	for expr, want := range map[string]int{
		`kube_pod_status_ready{condition="true", pod=~"recsys-(api|relay|consumer)-.*"} == 0`: 0,
		`up{app_kubernetes_io_name="recsys", app_kubernetes_io_component="api"}`:              0,
		`kube_pod_status_ready{pod=~"recsys-worker-.*"} == 0`:                                 1,
		`up{app_kubernetes_io_component="consumers"}`:                                         1,
	} {
		got, err := alertTargetProblems(expr, prod, map[string]bool{})
		if err != nil || len(got) != want {
			t.Errorf("%s: problems %q (%v), want %d", expr, got, err, want)
		}
	}
}

// helpFlag is a flag a command's help names, namespaced or not; a family (--ranking.*) is
// matched with its ".*" so that it can be left out.
var helpFlag = regexp.MustCompile(`(?:^|[^\w-])--([a-z][a-z0-9-]*(?:\.[a-z0-9][a-z0-9-]*)*)\b(\.\*)?`)

// Every flag a command's help text or a flag's description names exists: operators read
// `recsys <cmd> --help` as the reference, and the configuration reference is generated from it.
func TestHelpNamesExistingFlags(t *testing.T) {
	flags := allFlags()
	total := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() == "completion" { // cobra's own text (brew --prefix)
			return
		}
		texts := []string{c.Short, c.Long, c.Example}
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) { texts = append(texts, f.Usage) })
		}
		for _, text := range texts {
			for _, m := range helpFlag.FindAllStringSubmatch(text, -1) {
				if m[2] != "" {
					continue
				}
				total++
				if !flags[m[1]] {
					t.Errorf("recsys %s: its help names --%s, which no command has", c.CommandPath(), m[1])
				}
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(cmd.NewRootCmd())
	if total < 50 {
		t.Errorf("only %d flags named in help texts; the extraction is broken", total)
	}
}
