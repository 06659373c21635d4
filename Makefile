# The course's two commands (see README.md):
#   make lab    set up .venv (pinned), install kanedu (editable), open JupyterLab on the course
#   make test   same set-up, then run every test: ruff, unit tests, the browser test, nbval over notebooks/ and solutions/
# and one more:
#   make site   run every lesson and write HTML with outputs and figures to build/site/ (index.html in course order)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kanedu-installed
LAB_ARGS ?=
TEST_PATHS := $(wildcard tests notebooks/*.ipynb solutions/*.ipynb)
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
CHROMIUM := /usr/bin/chromium

.PHONY: setup lab test site chromium clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[dev,widgets]"
	touch $(STAMP)

lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(ROOT_FLAG) $(LAB_ARGS)

# The browser test (tests/test_browser.py) drives Debian's Chromium: install it where we may (root with apt);
# elsewhere the test skips and says why.
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "could not install chromium: tests/test_browser.py will skip"; \
	else echo "no $(CHROMIUM) and no root with apt to install it: tests/test_browser.py will skip"; fi

test: setup chromium
	$(BIN)/ruff check .
	MPLBACKEND=Agg $(BIN)/python -m pytest $(TEST_PATHS) --nbval-lax --nbval-current-env -p no:cacheprovider; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected (exit 5), not a failure"; exit 0; fi; exit $$rc

site: setup
	env -u MPLBACKEND $(BIN)/python tools/site.py

clean-venv:
	rm -rf $(VENV)
