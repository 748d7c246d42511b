// Package all imports every module so it registers itself; it is the only list of modules
// (Caddy's modules/standard). all_test.go fails when a module directory is missing here.
package all

import (
	_ "recsys/modules/analytics"
	_ "recsys/modules/api"
	_ "recsys/modules/consumer"
	_ "recsys/modules/ingest"
	_ "recsys/modules/reco"
	_ "recsys/modules/relay"
)
