// Command etcd is etcd's own server entry point, built from the go.etcd.io/etcd/server/v3 module at the
// version pinned in go.mod. The upstream module replaces its sibling modules with local paths, so it cannot
// be installed with `go install ...@version`; this wrapper requires it like any other dependency instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
