# Makefile for the tokenfleet.pki collection: set-up, tests and demo.
#
#   make deps          Debian packages, .venv with the Python requirements, collection link, step-ca for the tests
#   make sanity        ansible-test sanity (no Docker; compile and import on each Python 3.10-3.13 found), see tests/utils/run_sanity.py
#   make lint          ansible-lint (production profile) on roles/ and playbooks/, galaxy-importer on the built tarball
#   make units         pytest tests/unit in .venv and on each Python 3.10-3.13 found, see tests/utils/run_units.py
#   make integration   pytest tests/integration (SoftHSM2, OpenSC, scep, certmonger, step-ca)
#   make test          deps + sanity + units + integration + lint, with a summary
#   make demo          deps, then playbooks/demo.yml against playbooks/inventory/demo.yml (step-ca as the demo CA)
#   make bench         scep_enroll against micromdm's scepclient, then rotate.yml (100 hosts, step-ca) and report.yml (100, 1,000 hosts) against the ping floor
#   make clean         remove .venv, .tmp and test output
#
# Variables: WORKSTATIONS (simulated workstations in the demo, default 20), PRINTERS (simulated printers in the demo, 10),
# FAILING_HOSTS (demo hosts pointed at a closed port, to see a failing host in the report, e.g. ws-002,mfp-001; none),
# PYTHON (interpreter for .venv, default python3), SANITY_ARGS (extra ansible-test sanity arguments, e.g.
# "--test validate-modules"), PYTEST_ARGS, BENCH_ENROLLMENTS (20), BENCH_FLEET_HOSTS (100),
# BENCH_REPEATS (timed rounds of the fleet and report benches, 3), BENCH_FORKS (ansible forks of both, 5), BENCH_REPORT_SIZES
# (fleets of the report bench, 100,1000), BENCH_REPORT_BASELINE (a git revision whose report.yml is timed too, e.g. main).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
DEPS_STAMP := $(VENV)/.requirements.stamp
LINT_VENV := .tmp/lint-venv
LINT_STAMP := $(LINT_VENV)/.requirements.stamp
COLLECTIONS_ROOT := $(CURDIR)/.tmp/collections
COLLECTION_LINK := .tmp/collections/ansible_collections/tokenfleet/pki
DEBIAN_PACKAGES := softhsm2 opensc opensc-pkcs11 scep certmonger git chromium openssl gnutls-bin openssh-client \
  golang-go golang-github-smallstep-certificates-dev prometheus
STEPCA_BIN := .tmp/stepca/step-ca
STEPCA_MAIN := tests/stepca/main.go
STEPCA_PACKAGE := golang-github-smallstep-certificates-dev
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
SANITY_ARGS ?=
PYTEST_ARGS ?=
WORKSTATIONS ?= 20
PRINTERS ?= 10
FAILING_HOSTS ?=
DEMO_DIR := $(CURDIR)/.tmp/demo
BENCH_ENROLLMENTS ?= 20
BENCH_FLEET_HOSTS ?= 100
BENCH_REPEATS ?= 3
BENCH_FORKS ?= 5
BENCH_REPORT_SIZES ?= 100,1000
BENCH_REPORT_BASELINE ?=

export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS_ROOT)
# The report page's browser tests use Debian's chromium: pip's playwright must never fetch a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: help deps debian-packages sanity lint units integration test demo bench clean

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

deps: debian-packages $(DEPS_STAMP) $(COLLECTION_LINK) $(STEPCA_BIN)

# Installs what is missing only; "apt-get update" runs first because a fresh
# machine has no package lists. python3-venv is needed where python3 is Debian's
# own and comes without ensurepip (python3 -m venv, and ansible-test's virtualenvs).
debian-packages:
	@missing=""; \
	for pkg in $(DEBIAN_PACKAGES); do \
	  dpkg -s "$$pkg" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	else \
	  echo "Debian packages present: $(DEBIAN_PACKAGES)"; \
	fi

# Re-installs whenever requirements.txt or tests/requirements.txt is newer than the stamp.
$(DEPS_STAMP): requirements.txt tests/requirements.txt
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check --quiet -r requirements.txt -r tests/requirements.txt
	@touch $@

# Relative link, so the checkout can be moved; ansible finds the collection
# through ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS_ROOT).
$(COLLECTION_LINK):
	@mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

# step-ca, the second real CA of the integration tests (tests/integration/stepca.py). Debian ships smallstep's
# CA as a library only, its Go dependencies as Debian packages: our own main package is built against them
# offline, once per checkout, again when main.go changes or the library package is installed or upgraded
# (its dpkg file list is rewritten then). CGO_ENABLED=0: a static binary and no C compiler needed (the
# PKCS#11 and YubiKey key managers, which need cgo, are not used: the CA key is a file). Without HOME go
# turns its build cache off and cannot build: then the cache goes under .tmp/stepca.
$(STEPCA_BIN): $(STEPCA_MAIN) $(wildcard /var/lib/dpkg/info/$(STEPCA_PACKAGE).list) | debian-packages
	@mkdir -p $(dir $@)
	@[ "$$(go env GOCACHE)" != off ] || export GOCACHE=$(CURDIR)/.tmp/stepca/go-build; \
	version=$$(dpkg-query -W -f='$${Version}' $(STEPCA_PACKAGE)); \
	echo "Building step-ca $$version from $(STEPCA_MAIN) (offline, Debian's Go packages)"; \
	cd $(dir $(STEPCA_MAIN)) && GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
	  go build -trimpath -ldflags "-X main.version=$$version" -o $(CURDIR)/$@.partial .
	@mv $@.partial $@

sanity: deps
	$(VENV)/bin/python tests/utils/run_sanity.py $(SANITY_ARGS)

# The linters live in a virtualenv of their own (they pin their own ansible-core); their caches and the
# collection copy ansible-lint makes stay under .tmp/lint (ANSIBLE_HOME). galaxy-importer reads the tarball
# that ansible-galaxy builds, as Galaxy would, and fails on any error in it.
$(LINT_STAMP): tests/lint-requirements.txt
	@[ -x $(LINT_VENV)/bin/python ] || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --disable-pip-version-check --quiet -r tests/lint-requirements.txt
	@touch $@

lint: deps $(LINT_STAMP)
	@mkdir -p .tmp/lint/build
	cd .tmp/lint && PATH=$(CURDIR)/$(LINT_VENV)/bin:$$PATH ANSIBLE_HOME=$(CURDIR)/.tmp/lint/ansible-home \
	  $(CURDIR)/$(LINT_VENV)/bin/ansible-lint --project-dir $(CURDIR) $(CURDIR)/roles $(CURDIR)/playbooks
	rm -f .tmp/lint/build/*.tar.gz
	$(LINT_VENV)/bin/ansible-galaxy collection build --output-path .tmp/lint/build .
	cd .tmp/lint/build && PATH=$(CURDIR)/$(LINT_VENV)/bin:$$PATH ANSIBLE_HOME=$(CURDIR)/.tmp/lint/ansible-home \
	  $(CURDIR)/$(LINT_VENV)/bin/python -m galaxy_importer.main tokenfleet-pki-*.tar.gz 2>&1 | tee importer.log
	@! grep -E '^(ERROR|WARNING)' .tmp/lint/build/importer.log || { echo "galaxy-importer reported the lines above"; exit 1; }
	@echo "galaxy-importer: $$(grep -c '^ERROR' .tmp/lint/build/importer.log) errors, $$(grep -c '^WARNING' .tmp/lint/build/importer.log) warnings"

# A pytest run that collects nothing exits with 5: that only counts as a pass
# while the directory holds no test files at all.
define run_pytest
	@if [ -z "$$(find $(1) -name 'test_*.py' -o -name '*_test.py' 2>/dev/null)" ]; then \
	  echo "$(1): no tests yet, nothing to run"; \
	else \
	  $(VENV)/bin/python -m pytest $(1) $(PYTEST_ARGS); \
	fi
endef

units: deps
	$(VENV)/bin/python tests/utils/run_units.py $(PYTEST_ARGS)

integration: deps
	$(call run_pytest,tests/integration)

# Runs every stage even after a failure, then prints one summary line per
# stage and fails if any stage failed.
test: deps
	@start=$$(date +%s); passed=0; failed=0; summary=""; \
	for stage in sanity units integration lint; do \
	  echo; echo "==================== make $$stage ===================="; \
	  t0=$$(date +%s); \
	  if $(MAKE) --no-print-directory $$stage; then result=PASSED; passed=$$((passed+1)); \
	  else result=FAILED; failed=$$((failed+1)); fi; \
	  summary="$$summary$$(printf '%-12s %-7s %4ss' "$$stage" "$$result" "$$(( $$(date +%s) - t0 ))")\n"; \
	done; \
	echo; echo "========================= make test summary =========================="; \
	printf "$$summary"; \
	total=$$(( $$(date +%s) - start )); \
	if [ "$$failed" -gt 0 ]; then \
	  echo "make test: $$failed of 4 stages FAILED ($${total}s); see the stage output above"; exit 1; \
	else \
	  echo "make test: all 4 stages (sanity, units, integration, lint) succeeded in $${total}s"; \
	fi

# The playbook starts step-ca and stops it by its PID when the hosts are done (also when some failed); after an
# interrupted run (Ctrl-C, a killed ansible-playbook) the EXIT trap stops it from the PID file, if that PID still is
# the demo's step-ca. The exit status is the playbook's: not zero when a host failed.
demo: deps
	@trap 'playbooks/files/demo-stop-ca.sh "$(DEMO_DIR)/ca"' EXIT; \
	$(VENV)/bin/ansible-playbook -i playbooks/inventory/demo.yml playbooks/demo.yml -e "demo_dir=$(DEMO_DIR)" \
	  -e demo_workstations=$(WORKSTATIONS) -e demo_printers=$(PRINTERS) $(if $(FAILING_HOSTS),-e demo_failing_hosts=$(FAILING_HOSTS))

# Each bench starts its own CA (scep_bench.py micromdm's scepserver, fleet_bench.py step-ca) and stops it when it
# ends, also on a failure (Linux also sends it SIGTERM when the bench process dies); the fleet bench ends its
# ansible-playbook runs too. Both merge their figures into bench/results.json.
bench: deps
	$(VENV)/bin/python bench/scep_bench.py --enrollments $(BENCH_ENROLLMENTS)
	$(VENV)/bin/python bench/fleet_bench.py --hosts $(BENCH_FLEET_HOSTS) --repeats $(BENCH_REPEATS) --forks $(BENCH_FORKS)
	$(VENV)/bin/python bench/report_bench.py --sizes $(BENCH_REPORT_SIZES) --repeats $(BENCH_REPEATS) --forks $(BENCH_FORKS) \
	  --split $(if $(BENCH_REPORT_BASELINE),--baseline-ref $(BENCH_REPORT_BASELINE))

clean:
	rm -rf $(VENV) .tmp tests/output .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
