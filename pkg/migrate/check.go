package migrate

import (
	"context"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/postgres"
)

// Report is the `recsys migrate check` report, in the shape of the original
// check_migrations tool so existing pipelines keep parsing it.
type Report struct {
	Local      LocalSection `json:"local"`
	DB         DBSection    `json:"db"`
	Comparison Comparison   `json:"comparison"`
	Summary    Summary      `json:"summary"`
}

// LocalSection describes the embedded files.
type LocalSection struct {
	Dir        string   `json:"dir"`
	Count      int      `json:"count"`
	Migrations []File   `json:"migrations"`
	Issues     []string `json:"issues"`
}

// Applied is one version recorded in the database.
type Applied struct {
	Version  uint   `json:"version"`
	Name     string `json:"name,omitempty"`
	Checksum string `json:"checksum"`
}

// DBSection describes the database side.
type DBSection struct {
	Status  string    `json:"status"` // ok | failed | skipped
	Reason  string    `json:"reason,omitempty"`
	Version *uint     `json:"version,omitempty"`
	Dirty   bool      `json:"dirty,omitempty"`
	Applied []Applied `json:"applied,omitempty"`
	Issues  []string  `json:"issues,omitempty"`
}

// Comparison lists pending versions (not an error) and drift (an error).
type Comparison struct {
	Pending []string `json:"pending"`
	Issues  []string `json:"issues"`
}

// Summary is the verdict.
type Summary struct {
	LocalCount   int    `json:"local_count"`
	PendingCount int    `json:"pending_count"`
	IssuesCount  int    `json:"issues_count"`
	Status       string `json:"status"` // ok | failed
}

// Check builds the report for fsys against the database at dsn; an empty dsn skips the
// database part with skipReason.
func Check(ctx context.Context, fsys fs.FS, dir, dsn, skipReason string) (Report, error) {
	files, issues, err := LocalFS(fsys)
	if err != nil {
		return Report{}, err
	}
	r := Report{Local: LocalSection{Dir: dir, Count: len(files), Migrations: files, Issues: nonNil(issues)}}
	r.Comparison = Comparison{Pending: []string{}, Issues: []string{}}
	if dsn == "" {
		r.DB = DBSection{Status: "skipped", Reason: skipReason}
	} else {
		r.DB = checkDB(ctx, dsn)
		if r.DB.Status == "ok" {
			r.Comparison = compare(files, r.DB.Applied, r.DB.Version)
		}
	}
	n := len(r.Local.Issues) + len(r.DB.Issues) + len(r.Comparison.Issues)
	r.Summary = Summary{LocalCount: len(files), PendingCount: len(r.Comparison.Pending), IssuesCount: n, Status: "ok"}
	if n > 0 {
		r.Summary.Status = "failed"
	}
	return r, nil
}

func checkDB(ctx context.Context, dsn string) DBSection {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	// Parsed as the roles do: pgx's own parse errors may quote part of a malformed password,
	// and the report is printed and archived.
	pc, err := postgres.ParseDSN(dsn)
	if err != nil {
		return DBSection{Status: "failed", Issues: []string{fmt.Sprintf("database url: %v", err)}}
	}
	conn, err := pgx.ConnectConfig(cctx, pc.ConnConfig)
	if err != nil {
		return DBSection{Status: "failed", Issues: []string{fmt.Sprintf("connect: %v", err)}}
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return DBSection{Status: "failed", Issues: []string{err.Error()}}
	}
	if !exists {
		return DBSection{Status: "failed", Issues: []string{"table schema_migrations is missing"}}
	}
	v, dirty, err := Status(ctx, conn)
	if err != nil {
		return DBSection{Status: "failed", Issues: []string{err.Error()}}
	}
	s := DBSection{Status: "ok", Version: &v, Dirty: dirty, Applied: []Applied{}}
	if dirty {
		s.Status = "failed"
		s.Issues = append(s.Issues, fmt.Sprintf("database version %d is dirty (its migration is running, or failed halfway: `recsys migrate version` tells which): a failed one is fixed, then `recsys migrate force`", v))
	}
	rows, err := conn.Query(ctx, "SELECT version, name, checksum FROM schema_migration_checksums ORDER BY version")
	if err != nil {
		// Version 1 creates the checksum table; before it exists nothing is recorded.
		if v == 0 {
			return s
		}
		return DBSection{Status: "failed", Issues: []string{fmt.Sprintf("read applied checksums: %v", err)}}
	}
	for rows.Next() {
		var a Applied
		var ver int64
		if err := rows.Scan(&ver, &a.Name, &a.Checksum); err != nil {
			return DBSection{Status: "failed", Issues: []string{err.Error()}}
		}
		a.Version = uint(ver)
		s.Applied = append(s.Applied, a)
	}
	if err := rows.Err(); err != nil {
		return DBSection{Status: "failed", Issues: []string{err.Error()}}
	}
	return s
}

func compare(files []File, applied []Applied, version *uint) Comparison {
	c := Comparison{Pending: []string{}, Issues: []string{}}
	local := map[uint]File{}
	for _, f := range files {
		local[f.Version] = f
	}
	seen := map[uint]bool{}
	for _, a := range applied {
		seen[a.Version] = true
		f, ok := local[a.Version]
		switch {
		case !ok:
			c.Issues = append(c.Issues, fmt.Sprintf("applied migration %04d (%s) is missing locally", a.Version, a.Name))
		case f.Checksum != a.Checksum:
			c.Issues = append(c.Issues, fmt.Sprintf("checksum drift for %s: applied=%s local=%s", f.Name, a.Checksum, f.Checksum))
		case a.Name != "" && a.Name != f.Name:
			c.Issues = append(c.Issues, fmt.Sprintf("applied migration %04d was %s, local file is %s (renamed)", a.Version, a.Name, f.Name))
		}
	}
	v := uint(0)
	if version != nil {
		v = *version
	}
	if maxLocal := len(files); maxLocal > 0 && v > files[maxLocal-1].Version {
		c.Issues = append(c.Issues, fmt.Sprintf("database is at version %d, newer than the newest local migration %04d", v, files[maxLocal-1].Version))
	}
	for _, f := range files {
		if f.Version > v {
			c.Pending = append(c.Pending, f.Name)
		} else if !seen[f.Version] {
			c.Issues = append(c.Issues, fmt.Sprintf("migration %s is applied (version %d) but has no recorded checksum", f.Name, v))
		}
	}
	return c
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
