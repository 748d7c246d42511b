// Command recsys is the real-time recommendation engine: one binary, every role.
package main

import (
	"os"

	"recsys/cmd"
	_ "recsys/modules/all" // registers every module
)

func main() { os.Exit(cmd.Execute()) }
