"""The control-plane rig: a real etcd + kube-apiserver (and, when asked, the
controller-manager, scheduler and kwok) on 127.0.0.1, for tests and for people.

`hack/rig up` / `hack/rig down` drive it from a shell; pytest fixtures use
:class:`riglib.controlplane.ControlPlane` directly.
"""
