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

.PHONY: setup demo test unit sanity lint build integration molecule lab-down clean

setup:
	bash scripts/setup.sh

## demo: a 3-host lab and a walk through the collection on it
demo: setup
	bash scripts/demo.sh

## test: everything CI runs
test: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory unit sanity lint build integration molecule; \
	echo "make test: all stages passed in $$(( $$(date +%s) - start )) s"

unit:
	@echo "== unit tests"
	PYTHONPATH=$(VENV)/collections $(PYTEST) tests/unit -q

sanity:
	@echo "== ansible-test sanity"
	bash tests/sanity.sh

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
