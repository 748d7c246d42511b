package cmd

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The users to erase come from the arguments and the file, each once; an empty list, an id
// no event could have and too many users are refused before anything is touched.
func TestForgetList(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(file, []byte("u2\n\n  u3 \nu1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := forgetList([]string{"u1", "u2"}, file)
	if err != nil || !slices.Equal(got, []string{"u1", "u2", "u3"}) {
		t.Errorf("forgetList = %v, %v; want u1 u2 u3", got, err)
	}
	many := make([]string, maxForgetUsers+1)
	for i := range many {
		many[i] = "u" + strconv.Itoa(i)
	}
	for _, tc := range []struct {
		name string
		args []string
		file string
		want string
	}{
		{"nothing", nil, "", "no user to erase"},
		{"missing file", nil, filepath.Join(t.TempDir(), "none"), "--from-file"},
		{"too long an id", []string{strings.Repeat("x", 129)}, "", "longer than 128 characters"},
		{"too many", many, "", "at most 100000 per run"},
	} {
		if _, err := forgetList(tc.args, tc.file); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
