"""The host-cluster backend: a tenant's Pods run as Pods of the host cluster (issue 10,
the k3v and Kosmos ClusterTree design; see docs/virtual-nodes.md).

- ``names``: host names and labels of what the agent makes for a tenant object;
- ``pods``: a tenant Pod as a host Pod, what it references, its tokens, its status back;
- ``podsecurity``: the host namespace's Pod Security level, checked before a create;
- ``nodes``: the tenant's virtual Nodes from ``promoteResources``;
- ``provider``: the Provider that reads and writes both clusters with the pure modules above;
- ``watches``: the host Pods and their Events, each known from one list and watch;
- ``streams``: exec and port-forward on host Pods (the host API server's WebSocket streams).
"""
