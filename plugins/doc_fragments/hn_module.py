# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""What the documentation of every HnCluster/HnMachine module shares."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
requirements:
  - kubernetes >= 24.2.0 (Python)
notes:
  - The HnMachine and HnCluster CRDs must be installed, for example with the C(rhizeption.core.crds) role.
  - The connection options are kubernetes.core's. Set them once for a play with C(module_defaults) for
    C(group/rhizeption.core.k8s), which reaches kubernetes.core's modules too.
attributes:
  check_mode:
    description: Can run in check mode and report the change it would make, without making it.
  diff_mode:
    description: Reports the object before and after the change (in check mode, the change it would make).
  action_group:
    description: In the C(rhizeption.core.k8s) action group, so C(module_defaults) can set its connection.
    support: full
    membership: [rhizeption.core.k8s]
"""
