package deploy_test

import (
	"bufio"
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// No Docker engine runs here, so the Dockerfile is checked by reading it: its stages and the
// instructions the image depends on, the -X targets of its ldflags against the Go source, and
// .dockerignore against the files the build compiles and embeds.

type instruction struct {
	cmd, args string
}

// dockerfileStages splits the Dockerfile into instructions per stage (index 0: before the
// first FROM), joining continuation lines and dropping comments.
func dockerfileStages(t *testing.T) [][]instruction {
	t.Helper()
	stages := [][]instruction{nil}
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, "Dockerfile")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(line)
		full := cur.String()
		cur.Reset()
		cmd, args, _ := strings.Cut(full, " ")
		in := instruction{strings.ToUpper(cmd), strings.Join(strings.Fields(args), " ")}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	return stages
}

func find(stage []instruction, cmd string) []string {
	var out []string
	for _, in := range stage {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

func TestDockerfile(t *testing.T) {
	stages := dockerfileStages(t)
	if len(stages) != 3 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages)-1)
	}
	global, build, runtime := stages[0], stages[1], stages[2]
	args := strings.Join(find(global, "ARG"), "\n")
	for _, want := range []string{"GO_IMAGE=golang:1.26", "RUNTIME_IMAGE=gcr.io/distroless/static:nonroot"} {
		if !strings.Contains(args, want) {
			t.Errorf("global ARGs %q: want %s", args, want)
		}
	}
	if from := build[0].args; from != "--platform=$BUILDPLATFORM ${GO_IMAGE} AS build" {
		t.Errorf("build stage FROM %q", from)
	}
	if from := runtime[0].args; from != "${RUNTIME_IMAGE}" {
		t.Errorf("runtime stage FROM %q", from)
	}
	run := strings.Join(find(build, "RUN"), "\n")
	for _, want := range []string{"CGO_ENABLED=0", "go build -trimpath", "-X recsys/cmd.version=${VERSION}",
		"-X recsys/cmd.commit=${COMMIT}", "-o /out/recsys .", "go mod download"} {
		if !strings.Contains(run, want) {
			t.Errorf("build stage RUN lacks %q", want)
		}
	}
	for _, a := range []string{"VERSION=dev", "COMMIT=unknown", "TARGETOS", "TARGETARCH"} {
		if !slices.ContainsFunc(find(build, "ARG"), func(s string) bool { return strings.HasPrefix(s, a) }) {
			t.Errorf("build stage lacks ARG %s", a)
		}
	}
	// BuildKit sets the platform ARGs only where they have no default: with one, a
	// multi-platform build compiles every image for the default's platform.
	for _, stage := range stages {
		for _, a := range find(stage, "ARG") {
			name, _, hasDefault := strings.Cut(a, "=")
			if hasDefault && (strings.HasPrefix(name, "TARGET") || strings.HasPrefix(name, "BUILD")) {
				t.Errorf("ARG %s: a platform ARG must have no default, or BuildKit does not set it per --platform", a)
			}
		}
	}
	for _, want := range []string{"GOOS=$goos", "GOARCH=$goarch", "${TARGETOS:-", "${TARGETARCH:-"} {
		if !strings.Contains(run, want) {
			t.Errorf("build stage RUN lacks %q: the binary must be built for the target platform", want)
		}
	}
	want := map[string][]string{
		"COPY":        {"--from=build /out/recsys /usr/local/bin/recsys"},
		"USER":        {"65532:65532"},
		"EXPOSE":      {"8080"},
		"ENTRYPOINT":  {`["recsys"]`},
		"CMD":         {`["all"]`},
		"HEALTHCHECK": {`--interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["recsys", "healthcheck"]`},
	}
	for cmd, w := range want {
		if got := find(runtime, cmd); !slices.Equal(got, w) {
			t.Errorf("runtime %s = %q, want %q", cmd, got, w)
		}
	}
	// The runtime stage must not run anything: distroless has no shell.
	if r := find(runtime, "RUN"); len(r) > 0 {
		t.Errorf("runtime stage RUN %q: the base image has no shell", r)
	}
}

// TestLdflagsTargetsExist: -X silently does nothing when the variable does not exist or is
// not a string, and `recsys version` would print "dev" from a release image.
func TestLdflagsTargetsExist(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "cmd")
	fset := token.NewFileSet()
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					isLit := false
					if i < len(vs.Values) {
						_, isLit = vs.Values[i].(*ast.BasicLit)
					}
					if isLit && (vs.Type == nil || identName(vs.Type) == "string") {
						found[n.Name] = true
					}
				}
			}
		}
	}
	for _, v := range []string{"version", "commit"} {
		if !found[v] {
			t.Errorf("package recsys/cmd has no string variable %q initialised with a literal for -X", v)
		}
	}
	// The Makefile stamps the same variables.
	if mk := string(readFile(t, "Makefile")); !strings.Contains(mk, "-X recsys/cmd.version=") || !strings.Contains(mk, "-X recsys/cmd.commit=") {
		t.Error("Makefile and Dockerfile stamp different variables")
	}
}

func identName(e ast.Expr) string {
	if id, ok := e.(*ast.Ident); ok {
		return id.Name
	}
	return ""
}

// dockerignored reports whether rel is excluded by the patterns, with Docker's semantics for
// the forms .dockerignore uses here: a pattern matches the path or one of its parent
// directories, and "**/" matches any number of directories.
func dockerignored(patterns []string, rel string) bool {
	parts := strings.Split(rel, "/")
	for _, p := range patterns {
		if strings.HasPrefix(p, "**/") {
			tail := strings.TrimPrefix(p, "**/")
			for i := range parts {
				if ok, _ := filepath.Match(tail, strings.Join(parts[i:], "/")); ok {
					return true
				}
				if ok, _ := filepath.Match(tail, parts[i]); ok {
					return true
				}
			}
			continue
		}
		for i := 1; i <= len(parts); i++ {
			if ok, _ := filepath.Match(p, strings.Join(parts[:i], "/")); ok {
				return true
			}
		}
	}
	return false
}

func TestDockerignore(t *testing.T) {
	var patterns []string
	for _, line := range strings.Split(string(readFile(t, ".dockerignore")), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			t.Fatalf("exception pattern %q: extend dockerignored() before using one", line)
		}
		patterns = append(patterns, filepath.Clean(line))
	}
	root := repoRoot(t)
	// Everything `go build .` reads: module files, Go sources and the embedded migrations.
	needed := []string{"go.mod", "go.sum", "main.go"}
	for _, dir := range []string{"cmd", "pkg", "modules", "migrations"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if strings.HasSuffix(p, ".sql") || (strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go")) {
				needed = append(needed, filepath.ToSlash(rel))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range needed {
		if dockerignored(patterns, f) {
			t.Errorf(".dockerignore excludes %s, which the image build needs", f)
		}
	}
	for _, f := range []string{".env", ".git/config", "bin/recsys", "pkg/ingest/writer_test.go", "deploy/k8s/base/api.yaml", "recsys.test"} {
		if !dockerignored(patterns, f) {
			t.Errorf(".dockerignore lets %s into the build context", f)
		}
	}
	if len(needed) < 50 {
		t.Errorf("only %d needed files found", len(needed))
	}
}
