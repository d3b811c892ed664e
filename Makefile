# The two entry points of a fresh machine: `make run` (the demo) and `make test` (the suite).
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test imports lint bench skab clean system-deps node-opcua deploy-check

# Servers and tools the tests start themselves, from Debian's packages: the InfluxDB line-protocol
# endpoint; socat pty pairs for Modbus RTU over a serial line; the browser the HMI tests drive
# (Playwright with /usr/bin/chromium); promtool (package prometheus) to check the metrics page.
SYSTEM_DEPS := victoria-metrics socat chromium prometheus mosquitto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make run MQTT=127.0.0.1:1883`: the demo line also publishes as a Sparkplug B edge node there.
run: $(STAMP)
	$(BIN)/linesentry demo $(if $(MQTT),--mqtt $(MQTT))

test: $(STAMP) system-deps node-opcua
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

# The import contract alone (.importlinter: layers, no test code in the product, a light config schema).
imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

# The node-opcua server the OPC UA interoperability tests start (needs node >= 18 with npm).
NODE_OPCUA := hil_tests/rig/node_opcua
node-opcua: $(NODE_OPCUA)/node_modules/.installed
$(NODE_OPCUA)/node_modules/.installed: $(NODE_OPCUA)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js >= 18 with npm"; exit 1; }
	npm ci --prefix $(NODE_OPCUA) --no-audit --no-fund --loglevel=error
	touch $@

system-deps:
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The Kubernetes overlays rendered by kubectl kustomize and checked (needs kubectl >= 1.27, which no
# package registry here provides; the base manifests are checked by make test).
deploy-check: $(STAMP)
	$(BIN)/python deploy/check_rendered.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.latency

# SKAB evaluation; the data is not part of the repo: make skab SKAB=/path/to/skab
SKAB ?= ../shared/data/skab
skab: $(STAMP)
	$(BIN)/python -m benchmarks.skab $(SKAB) --out out/skab

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis out $(NODE_OPCUA)/node_modules
