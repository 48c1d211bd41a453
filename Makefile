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

$(STAMP): pyproject.toml setup.py requirements/platform.txt requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# ranges: pyproject.toml; the tested versions: requirements/constraints.txt
	$(PIP) install -q -c requirements/constraints.txt setuptools wheel
	$(PIP) install -q -c requirements/constraints.txt -r requirements/platform.txt
	# rc10 pins torch==1.5.0 & co: install it without its dependencies
	$(PIP) install -q --no-deps mmf==1.0.0rc10
	$(PIP) install -q -c requirements/constraints.txt --no-build-isolation -e '.[index,plot,attributes,tensorboard,test]'
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
