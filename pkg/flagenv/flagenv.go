// Package flagenv fills unset flags from the environment: RECSYS_<FLAG> first, then the
// legacy names operators of the original service know (DATABASE_URL, LOG_LEVEL, ...). The
// flag set stays the single source of truth for names, defaults and help, and Markdown renders
// it as the configuration reference.
package flagenv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Prefix is the environment prefix of every recsys flag.
const Prefix = "RECSYS_"

const (
	aliasAnnotation  = "recsys_env_alias"
	secretAnnotation = "recsys_secret"
	sourceAnnotation = "recsys_source"
)

// EnvName is the RECSYS_ variable of a flag: "relay.batch-size" -> RECSYS_RELAY_BATCH_SIZE.
func EnvName(flag string) string {
	return Prefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(flag))
}

// Alias declares legacy environment names for a flag, tried in order after RECSYS_<FLAG>.
// A name may end in ":ms" or ":s" when the legacy variable is a bare number of milliseconds
// or seconds and the flag is a duration.
func Alias(fs *pflag.FlagSet, flag string, names ...string) {
	if err := fs.SetAnnotation(flag, aliasAnnotation, names); err != nil {
		panic(fmt.Sprintf("flagenv: alias for unknown flag %q", flag))
	}
}

// Secret marks a flag whose value must never be logged.
func Secret(fs *pflag.FlagSet, flag string) {
	if err := fs.SetAnnotation(flag, secretAnnotation, []string{"true"}); err != nil {
		panic(fmt.Sprintf("flagenv: secret for unknown flag %q", flag))
	}
}

// IsSecret reports whether the flag was marked with Secret.
func IsSecret(f *pflag.Flag) bool { return len(f.Annotations[secretAnnotation]) > 0 }

// FileSuffix ends the variable that names a file holding a secret flag's value, as Docker
// and Kubernetes mount secrets: RECSYS_PG_DSN_FILE=/run/secrets/dsn, DATABASE_URL_FILE=...
const FileSuffix = "_FILE"

// maxSecretFile bounds what a _FILE variable reads: a large file named by mistake must fail,
// not fill the memory (a device or pipe is refused before it is opened).
const maxSecretFile = 64 << 10

// Bind sets every flag not given on the command line from the environment. Precedence is
// flag > RECSYS_ variable > legacy alias > default. A secret flag's variable also has a _FILE
// form naming a file that holds the value, at the same precedence as the variable itself.
// An invalid value is an error naming the variable, never a silent fallback to the default;
// a secret's value is never quoted.
func Bind(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name, val, ok, err := find(f, lookup)
		if err != nil {
			errs = append(errs, fmt.Errorf("flag --%s: %w", f.Name, err))
			return
		}
		if !ok {
			return
		}
		if err := fs.Set(f.Name, val); err != nil {
			shown := strconv.Quote(val)
			if IsSecret(f) {
				shown = "(secret)"
			}
			errs = append(errs, fmt.Errorf("%s=%s (flag --%s): %w", name, shown, f.Name, err))
			return
		}
		_ = fs.SetAnnotation(f.Name, sourceAnnotation, []string{name})
	})
	return errors.Join(errs...)
}

// EnvNames lists every variable that sets the flag besides its legacy aliases: RECSYS_<FLAG>
// and, for a secret flag, RECSYS_<FLAG>_FILE.
func EnvNames(f *pflag.Flag) []string {
	if IsSecret(f) {
		return []string{EnvName(f.Name), EnvName(f.Name) + FileSuffix}
	}
	return []string{EnvName(f.Name)}
}

// Source tells where a flag's value came from: "flag", the environment variable name (after
// Bind), or "default".
func Source(f *pflag.Flag) string {
	if src := f.Annotations[sourceAnnotation]; len(src) > 0 {
		return src[0]
	}
	if f.Changed {
		return "flag"
	}
	return "default"
}

func find(f *pflag.Flag, lookup func(string) (string, bool)) (string, string, bool, error) {
	if name, v, ok, err := lookupSecret(f, EnvName(f.Name), lookup); ok || err != nil {
		return name, v, ok, err
	}
	for _, a := range f.Annotations[aliasAnnotation] {
		name, unit, _ := strings.Cut(a, ":")
		name, v, ok, err := lookupSecret(f, name, lookup)
		if err != nil {
			return "", "", false, err
		}
		if !ok {
			continue
		}
		if unit != "" && f.Value.Type() == "duration" {
			if n, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				mult := time.Second
				if unit == "ms" {
					mult = time.Millisecond
				}
				v = time.Duration(n * float64(mult)).String()
			}
		}
		return name, v, true, nil
	}
	return "", "", false, nil
}

// lookupSecret looks name up and, for a secret flag, name_FILE: the file's content without
// its trailing line break (echo and most editors end a file with one; no secret does).
// Both set is an error rather than a silent choice, as the operator meant one of them.
func lookupSecret(f *pflag.Flag, name string, lookup func(string) (string, bool)) (string, string, bool, error) {
	v, ok := lookup(name)
	if !IsSecret(f) {
		return name, v, ok, nil
	}
	fileVar := name + FileSuffix
	path, fromFile := lookup(fileVar)
	switch {
	case !fromFile:
		return name, v, ok, nil
	case ok:
		return "", "", false, fmt.Errorf("both %s and %s are set: set one of them", name, fileVar)
	}
	b, err := readSecretFile(path)
	if err != nil {
		return "", "", false, fmt.Errorf("%s: %w", fileVar, err)
	}
	return fileVar, strings.TrimRight(string(b), "\r\n"), true, nil
}

// readSecretFile reads a secret file; its errors name the file, never its content.
func readSecretFile(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("empty file name")
	}
	// Opening a named pipe blocks until something writes to it, and reading a device may
	// never end: start-up would hang without a word. Stat follows symlinks, as Kubernetes
	// mounts each secret as a link to the file.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err // a *PathError, naming the file
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s): a secret file must be one", path, fileKind(fi.Mode()))
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxSecretFile+1))
	if err != nil {
		return nil, err // a *PathError, naming the file
	}
	if len(b) > maxSecretFile {
		return nil, fmt.Errorf("%s is larger than %d KiB: not a secret value", path, maxSecretFile>>10)
	}
	return b, nil
}

// fileKind names the type of a file that is not a regular one.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return "type " + m.Type().String()
}

// Effective returns flag name -> value for logging at start, with secrets redacted. Any URL
// is redacted too, secret or not: a credential can sit in any of them.
func Effective(fs *pflag.FlagSet) map[string]string {
	out := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || f.Name == "help" {
			return
		}
		v := f.Value.String()
		if IsSecret(f) || strings.Contains(v, "://") {
			v = Redact(v)
		}
		out[f.Name] = v
	})
	return out
}

// secretParam matches password-like keys in a URL query or a key=value connection string
// (libpq and pgx take password and sslpassword in both; Redis URLs take password).
var secretParam = regexp.MustCompile(`(?i)(^|[\s&?;,])((?:ssl)?password|passwd|pass|pwd|secret|token|access_token|api_key|apikey)(\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&;,]*)`)

// userinfo matches the password of a URL's user:password@ part.
var userinfo = regexp.MustCompile(`(://[^:/@?#\s]*):[^\s]*@`)

// keyValue recognises a key=value connection string ("host=db user=recsys ...").
var keyValue = regexp.MustCompile(`^\s*[A-Za-z_]+\s*=`)

// Redact hides a secret. For a URL it keeps everything but the password (in the user info or
// a query parameter), and for a key=value connection string everything but password=, so
// operators can still see which host and database a process uses. Anything else is hidden
// whole.
func Redact(v string) string {
	if v == "" {
		return ""
	}
	if scheme, rest, ok := strings.Cut(v, "://"); ok {
		// The user info ends at the last "@" of the whole string, not of the authority as
		// url.Parse reads it: pgx and Redis clients take a password with a raw "#" or "?"
		// ("s3cr3t#tail"), which would end the authority early. An "@" in a query then hides
		// more than the password, never less.
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if user, _, hasPw := strings.Cut(rest[:at], ":"); hasPw {
				rest = user + ":REDACTED" + rest[at:]
			}
		}
		return scheme + "://" + RedactText(rest)
	}
	if keyValue.MatchString(v) {
		return RedactText(v)
	}
	return "REDACTED"
}

// RedactText hides password-like key=value pairs and URL passwords inside free text, such as
// an error message from a client library.
func RedactText(s string) string {
	s = userinfo.ReplaceAllString(s, "$1:REDACTED@")
	return secretParam.ReplaceAllString(s, "$1$2${3}REDACTED")
}

// Row is one line of the configuration reference. Env lists the flag's variables (EnvNames),
// comma separated.
type Row struct {
	Flag, Env, Aliases, Default, Usage, Commands string
}

// Markdown renders rows as the generated docs/configuration.md table.
func Markdown(rows []Row) string {
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Flag != rows[j].Flag {
			return rows[i].Flag < rows[j].Flag
		}
		return rows[i].Commands < rows[j].Commands
	})
	var b strings.Builder
	b.WriteString("| flag | environment | legacy aliases | default | commands | description |\n|---|---|---|---|---|---|\n")
	esc := strings.NewReplacer("|", `\|`, "\n", " ")
	for _, r := range rows {
		fmt.Fprintf(&b, "| `--%s` | `%s` | %s | %s | %s | %s |\n", r.Flag, strings.ReplaceAll(r.Env, ", ", "`, `"), esc.Replace(r.Aliases),
			esc.Replace(r.Default), esc.Replace(r.Commands), esc.Replace(r.Usage))
	}
	return b.String()
}

// Rows lists the flags of fs for the configuration reference.
func Rows(fs *pflag.FlagSet) []Row {
	var rows []Row
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || f.Name == "help" {
			return
		}
		var aliases []string
		for _, a := range f.Annotations[aliasAnnotation] {
			name, unit, _ := strings.Cut(a, ":")
			if unit != "" {
				name += " (" + unit + ")"
			}
			aliases = append(aliases, "`"+name+"`")
			if IsSecret(f) {
				aliases = append(aliases, "`"+name+FileSuffix+"`")
			}
		}
		def := f.DefValue
		if def == "" || def == "[]" {
			def = "—"
		} else {
			def = "`" + def + "`"
		}
		rows = append(rows, Row{Flag: f.Name, Env: strings.Join(EnvNames(f), ", "), Aliases: strings.Join(aliases, ", "), Default: def, Usage: f.Usage})
	})
	return rows
}
