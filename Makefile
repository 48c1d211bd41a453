# The README's two commands: `make demo` and `make test`. Both set up .venv
# when needed; a second run with nothing changed only checks a stamp file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.mmf_fashion_installed
DEMO_DATA ?= data/synthetic

.PHONY: setup demo test bench clean-demo

setup: $(STAMP)

$(STAMP): setup.py requirements/platform.txt requirements/base.txt requirements/test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q 'setuptools>=70' wheel
	$(PIP) install -q -r requirements/platform.txt
	# rc10 pins torch==1.5.0 & co: install it without its dependencies
	$(PIP) install -q --no-deps mmf==1.0.0rc10
	$(PIP) install -q -r requirements/base.txt -r requirements/test.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -m mmf_fashion.bridge.install_hook
	touch $(STAMP)

demo: setup
	$(PY) -m mmf_fashion.demo --data-dir $(DEMO_DATA)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.run_all

clean-demo:
	rm -rf save/demo
