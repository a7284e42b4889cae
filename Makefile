# Every target does its own set-up: a fresh machine needs only `make run` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-ring1 test-ring2 lint bench bench-mesh bench-leaves bench-flow bench-forward bench-records bench-repair bench-peers bench-outage bench-jupyter clean sysdeps

$(BIN)/python:
	$(PY) -m venv $(VENV)

# A regular (non-editable) install: a default editable install hides plugins/ from twistd.
$(STAMP): $(BIN)/python pyproject.toml $(shell find yotonnet plugins -name '*.py' 2>/dev/null)
	$(BIN)/pip install -q --upgrade pip
	# Yoton 2.2 for the compatibility tests: it ships inside pyzo, which must come
	# without its dependencies (Qt); `import yoton` then needs no Qt.
	$(BIN)/pip install -q --no-deps "pyzo>=4.22"
	$(BIN)/pip install -q ".[test]"
	# bash_kernel's kernelspec, into the venv (ipykernel's python3 comes with its wheel)
	$(BIN)/python -m bash_kernel.install --sys-prefix >/dev/null
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m yotonnet node --name local --listen tcp:7117:interface=127.0.0.1

# Debian packages the tests use (network namespaces, a headless browser for the status
# page); installed only when missing, as root, quietly.
sysdeps:
	@missing=""; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "sysdeps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: $(STAMP) sysdeps
	$(BIN)/ruff check yotonnet tests benchmarks plugins
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Rings 1 and 2 only (sans-IO and in memory: no socket, no process, no root; the rings
# are markers, see tests/conftest.py), one pytest per ring so that two cores share them.
test-fast: $(STAMP)
	@$(MAKE) --no-print-directory -j2 -Otarget test-ring1 test-ring2

test-ring1 test-ring2: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m $(subst test-,,$@) tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

bench-mesh: $(STAMP)
	$(BIN)/python benchmarks/bench_mesh.py

bench-leaves: $(STAMP)
	$(BIN)/python benchmarks/bench_leaves.py

bench-flow: $(STAMP)
	$(BIN)/python benchmarks/bench_flow.py

bench-forward: $(STAMP)
	$(BIN)/python benchmarks/bench_forward.py

bench-repair: $(STAMP)
	$(BIN)/python benchmarks/bench_repair.py

# Outage to resume on real hosts (network namespaces: needs root and iproute2, else it
# says why it skipped).
bench-outage: $(STAMP)
	$(BIN)/python benchmarks/bench_outage.py

# A hosted ipykernel printing to two Jupyter frontends through two hops, beside
# jupyter_client on the host and ipykernel alone (needs the test extra: ipykernel).
bench-jupyter: $(STAMP)
	$(BIN)/python benchmarks/bench_jupyter.py $(ARGS)

bench-records: $(STAMP)
	$(BIN)/python benchmarks/bench_records.py --drip

# Side by side against raw Twisted, pyzmq, NATS and Yoton 2.2; not part of `make test`.
# Bench-only peers: the `bench` extra of pyproject.toml (pyzmq, nats-py) when missing, without
# reinstalling yotonnet, and Debian's nats-server when root and missing (else its rows say
# why they were skipped). Options through ARGS, e.g. `make bench-peers ARGS=--quick`.
bench-peers: $(STAMP)
	@$(BIN)/python -c "import zmq, nats" 2>/dev/null || $(BIN)/python -c "import tomllib; \
		print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project'] \
		['optional-dependencies']['bench']))" | xargs -d '\n' $(BIN)/pip install -q
	@if ! command -v nats-server >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null; then \
		echo "bench-peers: installing nats-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends nats-server >/dev/null || true; \
	fi
	$(BIN)/python benchmarks/bench_versus.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .hypothesis
