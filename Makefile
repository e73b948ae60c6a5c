# roomhub — `make run` serves the chat on http://localhost:8080, `make test` runs the suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# docker compose v2, else the v1 docker-compose command.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)

.PHONY: run test lint install clean
.PHONY: up down logs dashboards

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m server serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check server tests dashboards
	$(BIN)/ruff format --check server tests dashboards

# The observability stack (docker-compose.yml): chat, stockapi, Prometheus, Grafana.
up:
	$(COMPOSE) up -d --build
	@echo "chat        http://localhost:8080   hub mode $${ROOMHUB_HUB_MODE:-sharded}"
	@echo "grafana     http://localhost:3000   dashboards: roomhub server, roomhub load (k6)"
	@echo "prometheus  http://localhost:9090   alerts: http://localhost:9090/alerts"
	@echo "load test   make k6 SCENARIO=mixed  (active-chat connection-storm mixed soak spike stock-bot)"

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f --tail=100

# Rewrite dashboards/*.json from their Python sources.
dashboards: $(STAMP)
	$(BIN)/python dashboards/generate.py

clean:
	rm -rf $(VENV) results .pytest_cache
