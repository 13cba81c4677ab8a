//go:build tools

// Package tools records the commands we build so `go mod tidy` keeps every dependency.
// Only the control plane: this version exists so tenant upgrades can be tested from it.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
