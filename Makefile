# virtops.migration: the two commands users run are `make demo` and `make test` (both as root on
# Debian 12). Everything they need is installed by `make setup`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(VENV)/collections
export ANSIBLE_FORCE_COLOR := 0
export PYTHONDONTWRITEBYTECODE := 1
PYTEST := $(VENV)/bin/python -m pytest -p no:cacheprovider

.PHONY: setup demo test unit sanity versions lint build integration molecule lab-down clean

setup:
	bash scripts/setup.sh

## demo: a 3-host lab and a walk through the collection on it
demo: setup
	bash scripts/demo.sh

## test: everything CI runs
# The other ansible-core releases (versions) run beside the stages that need no lab, side by side,
# their output kept in tests/output/versions.log and shown when they end; the lab stages run alone.
test: setup
	@start=$$(date +%s); mkdir -p tests/output; \
	$(MAKE) --no-print-directory versions > tests/output/versions.log 2>&1 & versions=$$!; \
	if ! $(MAKE) --no-print-directory unit sanity lint build; then kill $$versions 2>/dev/null; wait; exit 1; fi; \
	echo "== waiting for the sanity and unit tests under ansible-core 2.20 and 2.21 (started with the unit tests)"; \
	if wait $$versions; then grep '^versions:' tests/output/versions.log; \
	else cat tests/output/versions.log; echo "make test: the versions stage failed"; exit 1; fi; \
	$(MAKE) --no-print-directory integration molecule; \
	echo "make test: all stages passed in $$(( $$(date +%s) - start )) s"

unit:
	@echo "== unit tests"
	PYTHONPATH=$(VENV)/collections $(PYTEST) tests/unit -q

sanity:
	@echo "== ansible-test sanity"
	bash tests/sanity.sh

## versions: sanity and unit tests again under the other maintained ansible-core releases, each in a .venv-core-X.Y
versions:
	@echo "== sanity and unit tests under ansible-core 2.20 and 2.21"
	bash tests/versions.sh

lint:
	@echo "== ansible-lint (production profile) and changelog"
	ansible-lint --profile production roles playbooks
	antsibull-changelog lint

## build: the collection tarball installs and every plugin's and role's documentation renders from it
build:
	@echo "== collection build, install and ansible-doc"
	bash tests/build-check.sh

integration:
	@echo "== lab integration tests"
	PYTHONPATH=$(VENV)/collections $(PYTEST) tests/integration -v --durations=15

molecule:
	@echo "== molecule scenarios against the lab"
	for scenario in extensions/molecule/*/molecule.yml; do \
	  molecule test -s "$$(basename "$$(dirname "$$scenario")")" || exit 1; \
	done

lab-down:
	tests/lab/virtlab down

clean: lab-down
	rm -rf tests/output
