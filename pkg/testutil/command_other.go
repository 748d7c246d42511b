//go:build !linux

package testutil

import "os/exec"

// dieWithParent has no portable equivalent outside Linux: children there outlive a test that
// panics.
func dieWithParent(*exec.Cmd) {}

// notAsRoot leaves cmd as it is: tests run as root on Linux only (CI).
func notAsRoot(*exec.Cmd, string) error { return nil }
