# Two commands set everything up on a fresh machine:
#   make demo   - venv + requirements, then the whole BN-NAS pipeline on the bundled data
#   make test   - venv + requirements + test tools, then the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv tables framework clean-demo

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) tools/run_demo.py $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests $(TEST_ARGS)

tables: $(STAMP)
	PYTHON=$(PY) bash utils/flops/get_flops_lookup_table.sh

framework: $(STAMP)
	$(PY) tools/draw_framework.py --out framework.png

clean-demo:
	rm -rf demo_out
