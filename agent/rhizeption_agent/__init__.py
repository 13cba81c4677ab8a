"""rhizeption node agent: a kubelet replacement whose Pods run on a pluggable provider.

One core (``agent.py``: Node registration and status, the Lease, the Pod watch, Pod
status, Events) drives a ``Provider`` (``provider.py``), the virtual-kubelet idea: the
provider says how a Pod is started, inspected, stopped and reached (logs, exec).
``runtime.RuntimeProvider`` is the provider for a local container runtime (restart
policy, back-off, probes, volumes), and ``backends.podman`` is that runtime for pet nodes.
"""

__version__ = "0.1.0"
