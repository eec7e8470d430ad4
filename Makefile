# realtime-bridge — the two commands a newcomer needs are `make run` and `make test`.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JS_STAMP := tests/js/node_modules/.installed

.PHONY: run test lint typecheck pytest bench bench-quick migrate clean
.PHONY: inspector inspector-typecheck example web
.PHONY: js-test types client-build client-pack chromium cluster-tools docs

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "realtime-bridge needs Python 3.11+; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)  ## serve on http://127.0.0.1:8000 (embedded Postgres unless DATABASE_URL is set)
	$(BIN)/realtime-bridge serve

migrate: $(STAMP)
	$(BIN)/realtime-bridge migrate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The pinned @supabase/supabase-js the compatibility tests run with Node (tests/js).
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	@touch $(JS_STAMP)

# The web inspector (served at / from its committed build), the example dashboard, and
# playwright-core for the browser tests (tests/test_browser.py): pinned Node projects.
EXAMPLE_STAMP := examples/react-dashboard/node_modules/.installed
NODE_STAMPS := inspector/node_modules/.installed $(EXAMPLE_STAMP) tests/browser/node_modules/.installed
$(NODE_STAMPS): %/node_modules/.installed: %/package.json %/package-lock.json
	npm ci --prefix $* --no-audit --no-fund --loglevel=error
	@touch $@
# The example installs the client as a package (file:../../clients/js): built and packed first.
$(EXAMPLE_STAMP): | client-pack

inspector: inspector/node_modules/.installed  ## rebuild realtime_bridge/static/inspector (commit it)
	npm run build --prefix inspector

inspector-typecheck: inspector/node_modules/.installed  # its source still fits the client
	npm run typecheck --prefix inspector

example: $(EXAMPLE_STAMP) client-pack  ## build examples/react-dashboard/dist
	npm run build --prefix examples/react-dashboard

# The browser tests drive Chromium: $$CHROMIUM, /usr/bin/chromium or one on PATH; as root
# with apt-get (Debian, the CI image), Debian's chromium is installed. Otherwise stop here:
# make test runs the same suite everywhere, it does not skip the browser.
chromium:
	@if [ -n "$$CHROMIUM" ]; then \
	  [ -x "$$CHROMIUM" ] || { echo "CHROMIUM=$$CHROMIUM is not an executable" >&2; exit 1; }; \
	elif [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "make test needs Chromium for tests/test_browser.py: install it" \
	       "(apt-get install chromium) or set CHROMIUM=/path/to/chromium" >&2; exit 1; \
	fi

web: inspector-typecheck example tests/browser/node_modules/.installed chromium  # for the browser tests

# The multi-instance tests put HAProxy (Debian's) in front of three bridges, and run a
# redis-server of their own: found on PATH (or /usr/sbin), else installed with apt-get as root.
cluster-tools:
	@for tool in haproxy:haproxy redis-server:redis-server; do \
	  bin=$${tool%%:*}; pkg=$${tool##*:}; \
	  if command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ]; then continue; fi; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's $$pkg for the multi-instance tests (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null; \
	  else \
	    echo "make test needs $$bin for tests/test_cluster.py: install it (apt-get install $$pkg)" >&2; exit 1; \
	  fi; \
	done

pytest: $(STAMP) $(JS_STAMP) web cluster-tools
	$(BIN)/pytest -q

test: lint typecheck docs js-test pytest  ## the whole suite, exactly what CI runs

docs: $(STAMP)  ## build the documentation site into site/ (strict: a broken link or anchor fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# The TypeScript client (clients/js): typecheck, build, then Vitest, which starts a real bridge.
CLIENT_STAMP := clients/js/node_modules/.installed
$(CLIENT_STAMP): clients/js/package.json clients/js/package-lock.json
	npm ci --prefix clients/js --no-audit --no-fund --loglevel=error
	@touch $@

js-test: $(STAMP) client-build  ## the TypeScript client and React hooks
	npm run typecheck --prefix clients/js
	npm test --prefix clients/js

client-build: $(CLIENT_STAMP)
	rm -rf clients/js/dist
	npm run build --prefix clients/js

client-pack: client-build  ## clients/js/realtime-bridge-client-<version>.tgz, for `npm install <tarball>`
	cd clients/js && rm -f realtime-bridge-client-*.tgz && npm pack --loglevel=error

types: $(STAMP)  ## regenerate channels.ts and realtime_bridge/broadcasts.py from the plugins (commit them)
	$(BIN)/realtime-bridge types --typescript --out clients/js/src/generated/channels.ts
	$(BIN)/realtime-bridge types --python --out realtime_bridge/broadcasts.py

bench: $(STAMP)  ## full benchmark
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site clients/js/*.tgz
