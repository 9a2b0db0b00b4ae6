# shakeout — `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPORTS := .cache/test-reports

.PHONY: help venv controlplane prometheus crds examples verify lint format typecheck lint-imports check-crds \
        check-examples bench bench-full peers bench-peers bench-peers-full \
        test test-unit test-go test-node test-e2e test-real-node test-image image host-tools \
        real-node-tools bench-real-node reliability sandbox-up real-node-up sandbox-down sandbox-status run clean

help: ## show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP) ## create .venv with shakeout and the dev tools

controlplane: ## build etcd, kube-apiserver, KCM, scheduler, kubectl, kwok (cached by version)
	bash tools/controlplane/build.sh

prometheus: ## build Prometheus for the sandbox's metric checks (cached by version; docs/sandbox.md)
	bash tools/controlplane/build.sh --prometheus >/dev/null

crds: $(STAMP) ## regenerate crds/ from the pydantic models
	$(BIN)/shakeout crds --output-dir crds

check-crds: $(STAMP)
	$(BIN)/shakeout crds --check --output-dir crds

examples: $(STAMP) ## regenerate deploy/examples/ from the templates of `kubectl shakeout init`
	$(BIN)/shakeout examples --output-dir deploy/examples

check-examples: $(STAMP)
	$(BIN)/shakeout examples --check --output-dir deploy/examples

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check operator tests bench tools
	$(BIN)/ruff format --check operator tests bench tools

format: $(STAMP) ## ruff format and autofix
	$(BIN)/ruff format operator tests bench tools
	$(BIN)/ruff check --fix operator tests bench tools

typecheck: $(STAMP) ## mypy --strict on the package
	$(BIN)/mypy

lint-imports: $(STAMP) ## import-linter: the pure core imports neither kopf nor kubernetes
	$(BIN)/lint-imports

verify: check-crds check-examples lint typecheck lint-imports ## CRD and example drift, ruff, mypy, import-linter

test-unit: $(STAMP) ## fast tests, no cluster
	$(BIN)/pytest tests/unit -q

test-go: ## go test of our Go programs (the workload image's server)
	cd images/workload && go test -count=1 ./...

host-tools: ## nft, ip, tc, nsenter for the node agent (installs Debian packages as root)
	bash tools/host-tools.sh

test-node: $(STAMP) host-tools ## node-agent faults on real network namespaces (root, no cluster)
	mkdir -p $(REPORTS)
	$(BIN)/pytest tests/node -q --junitxml=$(REPORTS)/node.xml

# The reliability suite's files: `make reliability` runs them at full counts, `make
# reliability-quick` at their quick counts; both outside `make test`, which stays under 30
# minutes on a warm 2-core machine.
RELIABILITY_SUITE = tests/e2e/test_reliability.py tests/e2e/test_outage.py tests/e2e/test_ha.py \
  tests/e2e/test_fuzz_input.py

test-e2e: $(STAMP) controlplane prometheus host-tools ## tests on the real control plane (starts and stops the sandbox; the reliability suite apart)
	mkdir -p $(REPORTS)
	$(BIN)/pytest tests/e2e -q -m "not long" $(RELIABILITY_SUITE:%=--ignore=%) --junitxml=$(REPORTS)/e2e.xml

.PHONY: report-tools
report-tools: ## Chromium, the browser the HTML report's e2e test opens (installs the Debian package as root)
	bash tools/report-tools.sh

# The e2e tier opens the HTML report in a real browser (tests/e2e/test_reports.py).
test-e2e: report-tools

real-node-tools: ## containerd, runc, CNI plugins, iptables, buildah... for the real node (installs Debian packages as root)
	bash tools/real-node-tools.sh

test-real-node: $(STAMP) controlplane real-node-tools image ## a real node: pods, logs/exec, Services, NetworkPolicy, deploy/default installed and attacking real pods, host restored (root)
	bash tools/controlplane/build.sh --real-node >/dev/null
	mkdir -p $(REPORTS)
	$(BIN)/pytest tests/real -q --junitxml=$(REPORTS)/real-node.xml

test: verify test-unit test-go test-node test-e2e test-real-node ## everything CI runs: verify, unit, Go, node, e2e and real-node tiers

reliability: $(STAMP) controlplane host-tools ## the reliability suite at full counts (about an hour)
	mkdir -p $(REPORTS)
	SHAKEOUT_RELIABILITY=full SHAKEOUT_FUZZ_EXAMPLES=10000 $(BIN)/pytest -s -q \
	  $(RELIABILITY_SUITE) tests/e2e/test_node_agents.py \
	  --junitxml=$(REPORTS)/reliability.xml

reliability-quick: $(STAMP) controlplane prometheus host-tools ## the reliability suite at its quick counts and the e2e tests marked long (about 8 minutes; not in make test)
	mkdir -p $(REPORTS)
	$(BIN)/pytest -q $(RELIABILITY_SUITE) --junitxml=$(REPORTS)/reliability-quick.xml
	$(BIN)/pytest -q -m long tests/e2e --junitxml=$(REPORTS)/e2e-long.xml

sandbox-up: $(STAMP) controlplane ## start the local control plane (and Prometheus when built); prints the admin kubeconfig
	$(BIN)/shakeout sandbox up --no-build

real-node-up: $(STAMP) controlplane real-node-tools ## the same plus one real node beside the kwok nodes (root)
	$(BIN)/shakeout sandbox up --real-node

sandbox-down: $(STAMP) ## stop the local control plane and delete its data
	$(BIN)/shakeout sandbox down

sandbox-status: $(STAMP) ## show the sandbox's components
	$(BIN)/shakeout sandbox status

image: ## operator/agent and workload images, buildah on a local Debian base, no registry (root; docs/images.md)
	bash tools/images/build.sh

image-workload: ## only the workload image (what `make run` needs on the real node; root)
	bash tools/images/build.sh workload

test-image: $(STAMP) image ## the images' archives unpacked: config, shakeout and the workload run from them (root)
	mkdir -p $(REPORTS)
	SHAKEOUT_IMAGE_TESTS=required $(BIN)/pytest tests/image -q --junitxml=$(REPORTS)/image.xml

run: $(STAMP) controlplane ## the demo: sandbox up (as root with a real node: real shop pods), CRDs, operator, a run to COMPLETED with its report
	@if [ "$$(id -u)" = 0 ] && [ "$(DEMO_REAL_NODE)" != 0 ]; then \
	  $(MAKE) --no-print-directory real-node-tools image-workload && \
	  bash tools/controlplane/build.sh --real-node >/dev/null && \
	  $(BIN)/shakeout sandbox up --real-node --no-build; \
	else $(BIN)/shakeout sandbox up --no-build; fi
	bash tools/run-demo.sh

bench: $(STAMP) controlplane ## quick benchmarks of docs/benchmarks.md (about 15 minutes)
	$(BIN)/python bench/sandbox_start.py 5
	$(BIN)/python bench/lifecycle.py 30 100
	$(BIN)/python bench/scale.py --pods-a 1000 --pods-b 1000 --targets 1 100 1000 --repeat 3
	$(BIN)/python bench/namespaces.py --namespaces 10 --targets 100 --rounds 3
	$(BIN)/python bench/footprint.py --experiments 100 --pods 1000 --minutes 3

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

peers: ## build Chaos Mesh's controller-manager and install Chaos Toolkit, for bench-peers (cached by version)
	bash tools/peers/build.sh >/dev/null

bench-peers: $(BENCH_STAMP) controlplane peers ## shakeout beside a bare client, Chaos Mesh and Chaos Toolkit at 1, 100, 1,000 targets; draws docs/img/peers.png
	$(BIN)/python bench/peers.py --targets 1 100 1000 --reps 3 --plot docs/img/peers.png

bench-peers-full: $(BENCH_STAMP) controlplane peers ## bench-peers at 1, 100, 1,000 and 5,000 targets, 5 runs each
	$(BIN)/python bench/peers.py --full --reps 5 --plot docs/img/peers.png

bench-full: $(STAMP) controlplane ## the long benchmarks: scale on 6,000 pods, then up to 10,000 targets in a 20,000-pod cluster, an hour's soak (about 2.5 hours)
	$(BIN)/python bench/scale.py --pods-a 3000 --pods-b 3000 --targets 100 1000 3000 --repeat 5
	$(BIN)/python bench/scale.py --pods-a 10000 --pods-b 10000 --targets 1 100 1000 5000 10000 --repeat 3
	$(BIN)/python bench/footprint.py --experiments 1000 --pods 10000 --minutes 60

bench-real-node: $(STAMP) controlplane real-node-tools ## node-level attacks on the real node: first fault, Stop All, the agent's footprint at 200 faults (root; 3-10 minutes; not in make test)
	bash tools/controlplane/build.sh --real-node >/dev/null
	$(BIN)/python bench/realnode.py 30 40 3 5

clean: ## remove the venv and local caches (not the control-plane build cache)
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
