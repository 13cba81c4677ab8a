"""Pure functions on Pod specs: what this agent refuses, environment variables, the
downward API, quantities. No I/O: the callers fetch ConfigMaps and Secrets."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

Obj = dict[str, Any]

SUPPORTED_VOLUMES = ("emptyDir", "hostPath", "configMap", "secret", "downwardAPI", "projected")
SUPPORTED_PROJECTIONS = ("serviceAccountToken", "configMap", "secret", "downwardAPI")
# Container fields that change how a container runs and that this agent does not do:
# refusing them beats running the container without them.
UNSUPPORTED_CONTAINER_FIELDS = ("lifecycle", "volumeDevices", "resizePolicy")
UNSUPPORTED_POD_FIELDS = (
    "hostPID",
    "hostIPC",
    "hostUsers",
    "runtimeClassName",
    "ephemeralContainers",
    "resourceClaims",
    "overhead",
    "schedulingGates",
)
UNSUPPORTED_SECURITY_FIELDS = ("seLinuxOptions", "windowsOptions", "procMount", "appArmorProfile")
UNSUPPORTED_POD_SECURITY_FIELDS = (
    "seLinuxOptions",
    "windowsOptions",
    "sysctls",
    "fsGroup",
    "fsGroupChangePolicy",
    "supplementalGroupsPolicy",
    "seLinuxChangePolicy",
    "appArmorProfile",
)

_SUFFIX = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
}
_QTY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_VAR_REF = re.compile(r"\$\(([^)]+)\)|\$\$")


def quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity ('100m', '1Gi', '2') as a number of base units."""
    m = _QTY.match(str(text).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2)])


def unsupported(pod: Obj) -> list[tuple[str, str]]:
    """(field path, why) for each part of POD's spec this agent cannot honour."""
    spec = pod.get("spec") or {}
    found: list[tuple[str, str]] = []
    for name in UNSUPPORTED_POD_FIELDS:
        if spec.get(name):
            found.append((f"spec.{name}", "not supported by the rhizeption node agent"))
    if (spec.get("os") or {}).get("name", "linux") != "linux":
        found.append(("spec.os.name", "only linux Pods run here"))
    psc = spec.get("securityContext") or {}
    for name in UNSUPPORTED_POD_SECURITY_FIELDS:
        if psc.get(name):
            found.append((f"spec.securityContext.{name}", "not supported by the rhizeption node agent"))
    if (psc.get("seccompProfile") or {}).get("type") == "Localhost":
        found.append(("spec.securityContext.seccompProfile", "Localhost profiles are not supported"))
    for i, vol in enumerate(spec.get("volumes") or []):
        kinds = [k for k in vol if k != "name"]
        for kind in kinds:
            if kind not in SUPPORTED_VOLUMES:
                found.append(
                    (
                        f"spec.volumes[{i}].{kind}",
                        f"volume type not supported (use one of {', '.join(SUPPORTED_VOLUMES)})",
                    )
                )
        for j, src in enumerate((vol.get("projected") or {}).get("sources") or []):
            for kind in src:
                if kind not in SUPPORTED_PROJECTIONS:
                    found.append(
                        (f"spec.volumes[{i}].projected.sources[{j}].{kind}", "projection not supported")
                    )
        hp = vol.get("hostPath")
        if hp and hp.get("type") in ("Socket", "CharDevice", "BlockDevice"):
            found.append((f"spec.volumes[{i}].hostPath.type", f"{hp['type']} is not supported"))
    for group in ("initContainers", "containers"):
        for i, ctr in enumerate(spec.get(group) or []):
            base = f"spec.{group}[{i}]"
            for name in UNSUPPORTED_CONTAINER_FIELDS:
                if ctr.get(name):
                    found.append((f"{base}.{name}", "not supported by the rhizeption node agent"))
            if group == "initContainers" and ctr.get("restartPolicy"):
                found.append((f"{base}.restartPolicy", "sidecar containers are not supported"))
            sc = ctr.get("securityContext") or {}
            for name in UNSUPPORTED_SECURITY_FIELDS:
                if sc.get(name):
                    found.append(
                        (f"{base}.securityContext.{name}", "not supported by the rhizeption node agent")
                    )
            if (sc.get("seccompProfile") or {}).get("type") == "Localhost":
                found.append(
                    (f"{base}.securityContext.seccompProfile", "Localhost profiles are not supported")
                )
            for j, mount in enumerate(ctr.get("volumeMounts") or []):
                if mount.get("subPathExpr"):
                    found.append((f"{base}.volumeMounts[{j}].subPathExpr", "not supported; use subPath"))
                if mount.get("mountPropagation") not in (None, "None"):
                    found.append((f"{base}.volumeMounts[{j}].mountPropagation", "only None is supported"))
            for j, probe in ((p, ctr.get(p)) for p in ("livenessProbe", "readinessProbe", "startupProbe")):
                if probe and probe.get("grpc"):
                    found.append(
                        (f"{base}.{j}.grpc", "gRPC probes are not supported; use exec, httpGet or tcpSocket")
                    )
    return found


def field_ref(pod: Obj, path: str, host_ip: str = "", pod_ip: str = "") -> str:
    """The value of a downward API fieldRef.fieldPath."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: meta.get("name", ""),
        "metadata.namespace": lambda: meta.get("namespace", ""),
        "metadata.uid": lambda: meta.get("uid", ""),
        "metadata.labels": lambda: _kv(meta.get("labels")),
        "metadata.annotations": lambda: _kv(meta.get("annotations")),
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", ""),
        "status.hostIP": lambda: host_ip,
        "status.hostIPs": lambda: host_ip,
        "status.podIP": lambda: pod_ip,
        "status.podIPs": lambda: pod_ip,
    }
    if path not in simple:
        raise ValueError(f"fieldRef {path!r} is not supported")
    return simple[path]()


def _kv(values: dict[str, str] | None) -> str:
    return "".join(f'{k}="{v}"\n' for k, v in sorted((values or {}).items()))


def resource_ref(pod: Obj, container: str, ref: Obj, node_allocatable: dict[str, str]) -> str:
    """The value of a resourceFieldRef: a container's request or limit in DIVISOR units
    (a limit that is not set is the node's allocatable, as the kubelet does)."""
    ctr = next(
        (
            c
            for c in (pod["spec"].get("containers") or []) + (pod["spec"].get("initContainers") or [])
            if c["name"] == (ref.get("containerName") or container)
        ),
        None,
    )
    if ctr is None:
        raise ValueError(f"resourceFieldRef names no container {ref.get('containerName')!r}")
    kind, _dot, res = ref["resource"].partition(".")
    value = ((ctr.get("resources") or {}).get(kind) or {}).get(res)
    if value is None:
        value = node_allocatable.get(res, "0")
    divisor = quantity(ref.get("divisor") or "1")
    result = quantity(value) / divisor
    # Round up, as the kubelet does (1 for 100m in cores).
    whole = int(result) + (1 if result != int(result) else 0)
    return str(whole)


def expand(text: str, env: dict[str, str]) -> str:
    """$(VAR) references replaced by their value ($$ escapes), as Kubernetes does."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, text)


def qos_class(pod: Obj) -> str:
    ctrs = (pod["spec"].get("containers") or []) + (pod["spec"].get("initContainers") or [])
    requests = [(c.get("resources") or {}).get("requests") or {} for c in ctrs]
    limits = [(c.get("resources") or {}).get("limits") or {} for c in ctrs]
    if not any(requests) and not any(limits):
        return "BestEffort"
    for req, lim in zip(requests, limits, strict=True):
        for res in ("cpu", "memory"):
            if res not in lim or quantity(req.get(res, lim[res])) != quantity(lim[res]):
                return "Burstable"
    return "Guaranteed"


def probe_port(ctr: Obj, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in ctr.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"container {ctr['name']} has no port named {port!r}")
