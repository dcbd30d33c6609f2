# Two commands set everything up on a fresh machine:
#   make demo   - venv + requirements, then the whole BN-NAS pipeline on the bundled data
#   make test   - venv + requirements + test tools, then the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test venv tables framework clean-demo

# The demo needs only requirements.txt; the tests add the test tools (and the exporter's
# packages) on top, so `make demo` on a fresh clone installs no more than it uses.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(DEV_STAMP)

venv: $(DEV_STAMP)

demo: $(STAMP)
	$(PY) tools/run_demo.py $(DEMO_ARGS)

test: $(DEV_STAMP)
	$(PY) -m pytest -q tests $(TEST_ARGS)

tables: $(STAMP)
	PYTHON=$(PY) bash utils/flops/get_flops_lookup_table.sh

framework: $(STAMP)
	$(PY) tools/draw_framework.py --out framework.png

clean-demo:
	rm -rf demo_out
