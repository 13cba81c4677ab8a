"""The generated docs pages match their sources (the plugins' documentation and the CRDs)."""

from __future__ import annotations

import docgen


def test_generated_pages_are_current():
    stale = [
        str(path.relative_to(docgen.REPO))
        for path, text in docgen.pages().items()
        if not path.exists() or path.read_text() != text
    ]
    assert stale == [], f"run `make docs`: {stale} differ from what their sources generate"


def test_every_module_and_plugin_has_a_page():
    names = {path.stem for path in docgen.pages()}
    assert {"hncluster", "hnmachine", "hnmachine_info", "crd-reference"} <= names


def test_ansible_markup_becomes_markdown():
    assert docgen.md("Use O(state=absent) with M(rhizeption.core.crds) or I(never) B(x)") == (
        "Use `state=absent` with `rhizeption.core.crds` or *never* **x**"
    )
    assert docgen.md(["a|b", "U(https://example.com)"]) == "a\\|b <https://example.com>"
