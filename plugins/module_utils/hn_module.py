# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""What the collection's Kubernetes modules share: kubernetes.core's connection options
and module class, our JSON client on that connection, and how errors are reported."""

from __future__ import annotations

import copy
import traceback
from typing import Any, Callable, Dict

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.rhizeption.core.plugins.module_utils.kube import (
    HAS_KUBERNETES,
    KUBERNETES_IMPORT_ERROR,
    Kube,
    KubeError,
    api_client_from,
)

try:
    from ansible_collections.kubernetes.core.plugins.module_utils.args_common import AUTH_ARG_SPEC
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.core import AnsibleK8SModule
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.exceptions import CoreException

    KUBERNETES_CORE_IMPORT_ERROR = None
except ImportError:  # a declared dependency; without it the module says so and stops
    AUTH_ARG_SPEC = {}
    AnsibleK8SModule = None
    CoreException = Exception
    KUBERNETES_CORE_IMPORT_ERROR = traceback.format_exc()

WAIT_TIMEOUT = 300


def module(argument_spec: Dict[str, Any], **kwargs: Any) -> Any:
    """An AnsibleK8SModule with kubernetes.core's authentication options added, so that
    `module_defaults: {group/rhizeption.core.k8s: ...}` reaches ours as it does theirs."""
    spec = copy.deepcopy(AUTH_ARG_SPEC)
    spec.update(argument_spec)
    if AnsibleK8SModule is None:
        mod = AnsibleModule(argument_spec=spec, supports_check_mode=True, **kwargs)
        mod.fail_json(
            msg=missing_required_lib("the kubernetes.core collection"), exception=KUBERNETES_CORE_IMPORT_ERROR
        )
    return AnsibleK8SModule(argument_spec=spec, supports_check_mode=True, **kwargs)


def run(mod: Any, body: Callable[[Kube], Dict[str, Any]], *known: type) -> None:
    """Connect, run BODY, and exit with its result; API errors and the exception types
    in KNOWN fail with their message (it names the field), anything else with a trace."""
    if not HAS_KUBERNETES:
        mod.fail_json(msg=f"the kubernetes Python client is required: {KUBERNETES_IMPORT_ERROR}")
    try:
        kube = Kube(api_client_from(module=mod))
    except (CoreException, KubeError, OSError) as e:
        mod.fail_json(msg=f"cannot connect to the Kubernetes API: {e}")
    try:
        result = body(kube)
    except KubeError as e:
        mod.fail_json(msg=str(e), status=e.status, reason=e.reason, fields=e.fields)
    except known as e:
        mod.fail_json(msg=str(e))
    except Exception as e:
        mod.fail_json(msg=f"{type(e).__name__}: {e}", exception=traceback.format_exc())
    mod.exit_json(**result)
