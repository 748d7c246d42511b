package deploy_test

import (
	"regexp"
	"strings"
	"testing"

	"recsys/cmd"
)

// operatorDocs are the documents whose `recsys ...` commands operators copy and run.
var operatorDocs = []string{"docs/architecture.md", "docs/runbook.md", "docs/rollback.md", "docs/scaling.md", "deploy/k8s/README.md"}

var (
	fence      = regexp.MustCompile("(?s)```[a-z]*\n(.*?)```")
	inlineCode = regexp.MustCompile("`([^`\n]+)`")
	recsysCall = regexp.MustCompile(`(?:^|[\s(])recsys ([a-z][^\n|;&#)'"]*)`)
)

// docCommands returns every `recsys ...` invocation in the code blocks and code spans of a
// Markdown text.
func docCommands(text string) []string {
	var code []string
	for _, m := range fence.FindAllStringSubmatch(text, -1) {
		code = append(code, strings.Split(m[1], "\n")...)
	}
	for _, m := range inlineCode.FindAllStringSubmatch(fence.ReplaceAllString(text, ""), -1) {
		code = append(code, m[1])
	}
	var out []string
	for _, c := range code {
		for _, m := range recsysCall.FindAllStringSubmatchIndex(c, -1) {
			// `kubectl -n recsys ...`: the namespace, not the binary.
			if before := strings.TrimSpace(c[:m[0]+1]); strings.HasSuffix(before, "-n") || strings.HasSuffix(before, "--namespace") {
				continue
			}
			out = append(out, strings.TrimSpace(c[m[2]:m[3]]))
		}
	}
	return out
}

// checkInvocation resolves a command line against the real command tree and reports a
// missing command or flag.
func checkInvocation(line string) string {
	args := strings.Fields(line)
	root := cmd.NewRootCmd()
	c, rest, err := root.Find(args)
	if err != nil || c == root {
		return "no such command"
	}
	c.InitDefaultHelpFlag()
	for _, a := range rest {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if c.Flags().Lookup(name) == nil && c.InheritedFlags().Lookup(name) == nil {
			return "recsys " + c.CommandPath() + " has no flag --" + name
		}
	}
	return ""
}

func TestDocumentedCommandsExist(t *testing.T) {
	total := 0
	for _, doc := range operatorDocs {
		for _, line := range docCommands(string(readFile(t, doc))) {
			total++
			if problem := checkInvocation(line); problem != "" {
				t.Errorf("%s: `recsys %s`: %s", doc, line, problem)
			}
		}
	}
	if total < 20 {
		t.Errorf("only %d documented recsys commands found; the extraction is broken", total)
	}
}

func TestDocCommandCheckCatchesMistakes(t *testing.T) {
	text := "Run `recsys relay replay --status dead --dry-run`.\n```sh\nrecsys migrate down 1 # revert\nkubectl exec x -- recsys consume replay-dlq --limt 5\nrecsys rebuild\nkubectl -n recsys rollout undo x\n```\n"
	got := docCommands(text)
	want := []string{"migrate down 1", "consume replay-dlq --limt 5", "rebuild", "relay replay --status dead --dry-run"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("docCommands = %q, want %q", got, want)
	}
	for line, bad := range map[string]bool{got[0]: false, got[1]: true, got[2]: true, got[3]: false} {
		if p := checkInvocation(line); (p != "") != bad {
			t.Errorf("checkInvocation(%q) = %q, want a problem: %t", line, p, bad)
		}
	}
}
