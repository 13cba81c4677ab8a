//go:build tools

// Records etcdutl's dependencies for `go mod tidy`.
package tools

import _ "go.etcd.io/etcd/etcdutl/v3"
