//go:build tools

// Package tools records the commands we build so `go mod tidy` keeps every dependency.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
