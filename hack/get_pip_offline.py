"""Stand-in for the get-pip.py that `ansible-test --venv` downloads from a host these
machines cannot reach. It bootstraps pip from the interpreter's own ensurepip, then
lets that pip install what ansible-test asked for (pinned versions, from PyPI).

hack/sanity puts it where ansible-test looks for its cached copy."""

import subprocess
import sys

# get-pip.py's own switches: ensurepip + pip install need no counterpart.
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
