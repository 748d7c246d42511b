// Package migrations embeds the SQL schema migrations, NNNN_name.up.sql / NNNN_name.down.sql,
// applied in order by pkg/migrate. Each leaves a schema the previous release's binary runs on
// (expand/contract, docs/rollback.md); one that cannot inserts its row into
// schema_breaking_migrations in its up file and deletes it in its down file, so that the
// binaries it breaks refuse to run ("Marking a breaking migration").
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
