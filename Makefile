# The two commands of the README:
#   make lab    bring up the lab and run the main job (playbooks/site.yml)
#   make test   the whole test suite (what .ci/run runs)
# Both run hack/bootstrap first: it installs what is missing and is quick when all is cached.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
# Our own checkout is the rhizeption.core that playbooks and tests load.
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections
export PYTHONPATH := $(CURDIR)/hack
PYTEST := $(VENV)/bin/python -m pytest

.PHONY: help bootstrap lab lab-down test lint sanity unit integration molecule bench build docs clean

help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## bootstrap    install packages, the venv, the Kubernetes builds and images (cached)
bootstrap:
	hack/bootstrap

## lab          bring up the lab and run playbooks/site.yml against it
lab: bootstrap
	hack/lab up

## lab-down     stop the lab
lab-down:
	hack/lab down

## test         lint, sanity, unit, integration tests and molecule scenarios
test: bootstrap
	$(MAKE) --no-print-directory lint sanity unit integration molecule
	@echo "make test: lint, sanity, unit, integration and molecule passed"

## lint         ruff and ansible-lint (production profile)
lint:
	ruff check .
	ruff format --check .
	ansible-lint --profile production

## sanity       ansible-test sanity on a copy of the collection
sanity:
	hack/sanity

## unit         unit tests (no services)
unit:
	$(PYTEST) tests/unit

## integration  integration tests against the real rig
integration:
	$(PYTEST) tests/integration

## molecule     molecule scenarios (create, converge, idempotence, verify, destroy)
MOLECULE_SCENARIOS := host_cluster
molecule:
	for s in $(MOLECULE_SCENARIOS); do molecule test --scenario-name "$$s"; done

## bench        benchmarks: JSON in results/bench/, a table on stdout
bench: bootstrap
	$(VENV)/bin/python -m benchmarks

## docs         regenerate docs/modules, docs/plugins and docs/crd-reference.md from their sources
docs:
	$(VENV)/bin/python hack/docgen.py

## build        the collection tarball
build:
	ansible-galaxy collection build --force --output-path results/

## clean        remove build outputs (the toolchain cache stays)
clean:
	rm -rf results tests/output .pytest_cache .ruff_cache
