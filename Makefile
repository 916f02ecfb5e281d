# Every target that needs the tools runs scripts/bootstrap first (idempotent, quiet when there is
# nothing to do), so `make demo` and `make test` work from a fresh clone with nothing else run first.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTEST_FLAGS := -q -p no:cacheprovider
KAFKA4_VERSION := 4.1.1
# What depends on the broker's version: consumer groups, transactions, admin calls, Faust. The sink tests
# (Loki, HTTP, PostgreSQL, flow control) talk to the broker the same way and run on the default version.
KAFKA4_TESTS := tests/e2e/test_delivery.py tests/e2e/test_faults.py tests/e2e/test_ingest_dlq.py \
	tests/e2e/test_dedupe_window.py tests/test_topics.py tests/test_devstack.py

.DEFAULT_GOAL := help
.PHONY: help bootstrap demo test test-kafka4 lint bench dashboard alerts clean

help:
	@echo "make demo         run the whole pipeline on a local Kafka + PostgreSQL and show what landed"
	@echo "make test         the whole test suite (unit, topics, devstack, e2e) on Kafka 3.9"
	@echo "make test-kafka4  the broker-facing tests (delivery, faults, dedupe, topics) on Kafka $(KAFKA4_VERSION)"
	@echo "make lint         ruff check, ruff format --check, mypy"
	@echo "make bench        drain benchmark: pipeline vs bare loop vs naive Faust (ARGS=\"--events 20000 --only drain\")"
	@echo "make dashboard    regenerate deploy/grafana/dashboards/pipeline.json from tools/dashboard.py"
	@echo "make alerts       promtool check rules and test rules on deploy/prometheus/alerts.yml"
	@echo "make bootstrap    only the set-up (.venv, Java/Maven, PostgreSQL binaries, Kafka jars)"
	@echo "make clean        remove .venv and caches (not the Kafka jar cache in ~/.cache/pipeline)"

bootstrap:
	@bash scripts/bootstrap

demo: bootstrap
	$(BIN)/pipeline demo

test: bootstrap
	$(BIN)/pytest $(PYTEST_FLAGS) --durations=15

test-kafka4:
	@PIPELINE_KAFKA_VERSIONS="$${PIPELINE_KAFKA_VERSIONS:-} $(KAFKA4_VERSION)" bash scripts/bootstrap
	KAFKA_VERSION=$(KAFKA4_VERSION) $(BIN)/pytest $(PYTEST_FLAGS) $(KAFKA4_TESTS)

# All three run even when one fails, so one run shows every problem; the target fails if any did.
lint: bootstrap
	@status=0; \
	echo "$(BIN)/ruff check ."; $(BIN)/ruff check . || status=1; \
	echo "$(BIN)/ruff format --check ."; $(BIN)/ruff format --check . || status=1; \
	echo "$(BIN)/mypy"; $(BIN)/mypy || status=1; \
	exit $$status

# The benchmark (bench/__main__.py): reuses KAFKA_BOOTSTRAP_SERVERS / POSTGRES_DSN when set, else starts the
# devstack broker and PostgreSQL; writes bench/results/. Needs the `bench` extra (matplotlib, py-spy).
bench: bootstrap
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install -q --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python -m bench $(ARGS)

# The Grafana dashboard is built from typed Python; tests/unit/test_dashboard.py fails when the committed
# JSON is not what the generator builds.
dashboard: bootstrap
	$(BIN)/python -m tools.dashboard

alerts: bootstrap
	promtool check rules deploy/prometheus/alerts.yml
	promtool check config deploy/prometheus/prometheus.yml
	cd deploy/prometheus && promtool test rules alerts_test.yml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
