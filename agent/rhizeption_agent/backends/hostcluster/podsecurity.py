"""The Pod Security Standards (Kubernetes v1.34), checked by the agent before it creates
a host Pod.

The host namespace enforces a level with Pod Security admission
(``pod-security.kubernetes.io/enforce``); this module checks a tenant Pod against the same
level first, so a refused Pod is marked Failed in the tenant with the tenant's own field
paths, and no half-made host objects (copied Secrets, a token) are left behind by a create
the host then refuses. Admission in the host stays the enforcement: this is the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...config import DEFAULT_POD_SECURITY as DEFAULT_LEVEL
from ...config import POD_SECURITY_LEVELS as LEVELS

Obj = dict[str, Any]

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
CONTAINER_GROUPS = ("initContainers", "containers", "ephemeralContainers")
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


@dataclass(frozen=True)
class Violation:
    field: str  # the tenant Pod's field path, e.g. spec.containers[0].securityContext.privileged
    message: str


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"pod security level {level!r} is not one of {', '.join(LEVELS)}")
    return level


def violations(pod: Obj, level: str = DEFAULT_LEVEL) -> list[Violation]:
    """Each field of POD that the Pod Security level LEVEL forbids, in spec order."""
    check_level(level)
    if level == "privileged":
        return []
    found = list(_baseline(pod, level))
    if level == "restricted":
        found.extend(_restricted(pod))
    return found


def _containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    for group in CONTAINER_GROUPS:
        for i, ctr in enumerate(spec.get(group) or []):
            yield f"spec.{group}[{i}]", ctr


def _forbidden(field: str, value: object, level: str) -> Violation:
    shown = str(value).lower() if isinstance(value, bool) else repr(value)
    return Violation(field, f"{shown} is forbidden by the host's Pod Security level {level!r}")


def _baseline(pod: Obj, level: str) -> Iterator[Violation]:
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        yield _forbidden("spec.securityContext.windowsOptions.hostProcess", True, level)
    for name in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(name):
            yield _forbidden(f"spec.{name}", True, level)
    yield from _security_context("spec.securityContext", psc, level)
    for i, sysctl in enumerate(psc.get("sysctls") or []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield Violation(
                f"spec.securityContext.sysctls[{i}].name",
                f"{sysctl.get('name')!r} is not a safe sysctl; the host's Pod Security level"
                f" {level!r} allows only {', '.join(sorted(SAFE_SYSCTLS))}",
            )
    for i, vol in enumerate(spec.get("volumes") or []):
        if "hostPath" in vol:
            yield Violation(
                f"spec.volumes[{i}].hostPath",
                f"hostPath volumes are forbidden by the host's Pod Security level {level!r}",
            )
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    for key, value in sorted(annotations.items()):
        if (
            key.startswith(APPARMOR_ANNOTATION)
            and value != "runtime/default"
            and not value.startswith("localhost/")
        ):
            yield _forbidden(f"metadata.annotations['{key}']", value, level)
    for base, ctr in _containers(spec):
        sc = ctr.get("securityContext") or {}
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            yield _forbidden(f"{base}.securityContext.windowsOptions.hostProcess", True, level)
        if sc.get("privileged"):
            yield _forbidden(f"{base}.securityContext.privileged", True, level)
        for j, cap in enumerate((sc.get("capabilities") or {}).get("add") or []):
            if cap not in BASELINE_CAPABILITIES:
                yield _forbidden(f"{base}.securityContext.capabilities.add[{j}]", cap, level)
        if sc.get("procMount") not in (None, "Default"):
            yield _forbidden(f"{base}.securityContext.procMount", sc["procMount"], level)
        yield from _security_context(f"{base}.securityContext", sc, level)
        for j, port in enumerate(ctr.get("ports") or []):
            if port.get("hostPort"):
                yield _forbidden(f"{base}.ports[{j}].hostPort", port["hostPort"], level)
        # v1.34: probes and lifecycle hooks may not reach another host (such as the node).
        handlers = [(p, ctr.get(p)) for p in PROBES]
        handlers += [
            (f"lifecycle.{h}", (ctr.get("lifecycle") or {}).get(h)) for h in ("postStart", "preStop")
        ]
        for where, handler in handlers:
            for action in ("httpGet", "tcpSocket"):
                host = ((handler or {}).get(action) or {}).get("host")
                if host:
                    yield _forbidden(f"{base}.{where}.{action}.host", host, level)


def _security_context(base: str, sc: Obj, level: str) -> Iterator[Violation]:
    """The checks that pod-level and container-level security contexts share."""
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        yield _forbidden(f"{base}.seLinuxOptions.type", selinux["type"], level)
    for name in ("user", "role"):
        if selinux.get(name):
            yield _forbidden(f"{base}.seLinuxOptions.{name}", selinux[name], level)
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield _forbidden(f"{base}.seccompProfile.type", "Unconfined", level)
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        yield _forbidden(f"{base}.appArmorProfile.type", "Unconfined", level)


def _restricted(pod: Obj) -> Iterator[Violation]:
    level = "restricted"
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    for i, vol in enumerate(spec.get("volumes") or []):
        for kind in vol:
            if kind != "name" and kind not in RESTRICTED_VOLUMES and kind != "hostPath":  # hostPath: baseline
                yield Violation(
                    f"spec.volumes[{i}].{kind}",
                    f"{kind} volumes are forbidden by the host's Pod Security level {level!r}",
                )
    pod_non_root = psc.get("runAsNonRoot")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        yield _forbidden("spec.securityContext.runAsUser", 0, level)
    for base, ctr in _containers(spec):
        sc = ctr.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            yield Violation(
                f"{base}.securityContext.allowPrivilegeEscalation",
                f"must be false under the host's Pod Security level {level!r}",
            )
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            yield Violation(
                f"{base}.securityContext.runAsNonRoot",
                "must be true (here or in spec.securityContext) under the host's"
                f" Pod Security level {level!r}",
            )
        if sc.get("runAsUser") == 0:
            yield _forbidden(f"{base}.securityContext.runAsUser", 0, level)
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield Violation(
                f"{base}.securityContext.seccompProfile.type",
                "must be RuntimeDefault or Localhost (here or in spec.securityContext) under the host's"
                f" Pod Security level {level!r}",
            )
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield Violation(
                f"{base}.securityContext.capabilities.drop",
                f"must include ALL under the host's Pod Security level {level!r}",
            )
        for j, cap in enumerate(caps.get("add") or []):
            if cap != "NET_BIND_SERVICE" and cap in BASELINE_CAPABILITIES:  # others: baseline said so
                yield _forbidden(f"{base}.securityContext.capabilities.add[{j}]", cap, level)
