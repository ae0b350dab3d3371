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

.PHONY: setup demo test checks unit sanity versions lint build integration molecule soak lab-down clean

setup:
	bash scripts/setup.sh

## demo: a 3-host lab and a walk through the collection on it
demo: setup
	bash scripts/demo.sh

## test: everything CI runs
# Two streams side by side. The lab stages (integration, then molecule, on one lab: the integration
# stage leaves it up for molecule, which then tears it down) run in the foreground: their output is
# CI's live log. The checks that need no lab (unit, sanity, lint, build, and the other ansible-core
# releases) run in the background at the lowest CPU priority into tests/output/checks.log, shown once
# they have ended: the lab stages spend most of their time waiting on libvirt, SSH and migrations,
# so the checks use what the lab leaves idle without slowing its guests (TCG, CPU-bound). With the
# scheduler's autogroups (Linux's default), a nice value only counts against processes of the same
# session, and QEMU runs in libvirtd's; so the checks get a session of their own (setsid) whose
# autogroup is set to nice 19.
# Every stage prints its time; the last lines say which streams passed and how the whole run compares
# with the suite's budget (tests/README.md): 1800 s for a fresh clone, of which 1320 s for the lab.
SUITE_BUDGET_S := 1800
test: setup
	@start=$$(date +%s); mkdir -p tests/output; \
	setsid --wait bash -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec nice -n 19 "$$@"' checks \
	  $(MAKE) --no-print-directory checks > tests/output/checks.log 2>&1 & checks=$$!; \
	lab=passed; lab_begun=$$(date +%s); \
	for stage in integration molecule; do \
	  begun=$$(date +%s); \
	  if VIRTLAB_KEEP_UP=1 $(MAKE) --no-print-directory $$stage; then result=passed; else result=FAILED; lab=FAILED; fi; \
	  echo "make test: $$stage $$result in $$(( $$(date +%s) - begun )) s"; \
	done; \
	tests/lab/virtlab down > /dev/null || lab=FAILED; \
	lab_s=$$(( $$(date +%s) - lab_begun )); \
	echo "== waiting for the checks that need no lab (unit, sanity, lint, build, versions)"; \
	if wait $$checks; then checked=passed; else checked=FAILED; fi; \
	cat tests/output/checks.log; \
	total=$$(( $$(date +%s) - start )); \
	echo "make test: lab stages $$lab in $$lab_s s, checks $$checked, in $$total s"; \
	echo "suite: $$total s of $(SUITE_BUDGET_S) s budget (lab stages $$lab_s s of 1320 s)"; \
	[ "$$lab" = passed ] && [ "$$checked" = passed ]

## checks: the stages that need no lab; the other ansible-core releases (versions) side by side with them
checks:
	@start=$$(date +%s); mkdir -p tests/output; \
	$(MAKE) --no-print-directory versions > tests/output/versions.log 2>&1 & versions=$$!; \
	status=0; \
	for stage in unit sanity lint build; do \
	  begun=$$(date +%s); \
	  if $(MAKE) --no-print-directory $$stage; then result=passed; else result=FAILED; status=1; fi; \
	  echo "checks: $$stage $$result in $$(( $$(date +%s) - begun )) s"; \
	done; \
	if wait $$versions; then grep '^versions:' tests/output/versions.log; \
	else cat tests/output/versions.log; echo "checks: versions FAILED"; status=1; fi; \
	echo "checks: ended in $$(( $$(date +%s) - start )) s"; \
	exit $$status

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

## integration: the lab tests on one lab, brought up for the session; it prints the 25 slowest tests and
## the lab tally (guests booted, Ansible processes, seconds per module). With VIRTLAB_KEEP_UP=1 the lab
## stays up, without VMs, for the molecule stage.
integration:
	@echo "== lab integration tests"
	PYTHONPATH=$(VENV)/collections $(PYTEST) tests/integration -vv --durations=25

## molecule: the scenarios against the lab that is up (make test's), or against one lab they start,
## torn down again at the end
molecule:
	@echo "== molecule scenarios against the lab"
	@if tests/lab/virtlab status > /dev/null 2>&1; then was_up=yes; else was_up=no; fi; \
	status=0; \
	for scenario in extensions/molecule/*/molecule.yml; do \
	  molecule test -s "$$(basename "$$(dirname "$$scenario")")" || { status=1; break; }; \
	done; \
	if [ "$$was_up" = no ]; then tests/lab/virtlab down > /dev/null || status=1; fi; \
	exit $$status

## soak: seeded random operations and faults on a lab of its own, judged through libvirt after every step
## (not part of make test). SECONDS of steps (the lab's start and end come on top), SEED to replay a run,
## STEPS to stop after that many steps. Figures in tests/output/soak.json; exit code 1 on any violation.
SECONDS ?= 300
SEED ?=
STEPS ?=
soak:
	@echo "== soak on the lab"
	$(VENV)/bin/python tests/soak/soak.py --seconds $(SECONDS) $(if $(SEED),--seed $(SEED)) $(if $(STEPS),--steps $(STEPS))

lab-down:
	tests/lab/virtlab down

clean: lab-down
	rm -rf tests/output
