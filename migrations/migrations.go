// Package migrations embeds the SQL schema migrations, NNNN_name.up.sql / NNNN_name.down.sql,
// applied in order by pkg/migrate.
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
