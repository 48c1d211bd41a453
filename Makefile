# The README's two commands: `make demo` and `make test`. Both set up .venv
# when needed; a second run with nothing changed only checks a stamp file.
PYTHON ?= python3
# Which MMF: rc10 (the PyPI release, the default) or main (MMF's main branch
# from a source folder or archive: make setup MMF=main MMF_SOURCE=path/to/mmf).
# VENV=... builds a second environment beside the first.
MMF ?= rc10
MMF_SOURCE ?=
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.mmf_fashion_installed_$(MMF)
DEMO_DATA ?= data/synthetic
# MMF main for `make test-mmf-main` (and so `make test`): a source folder or
# archive; by default the archive of the project's shared third-party folder
MMF_MAIN_SOURCE ?= $(firstword $(wildcard ../shared/third_party/mmf-main-*.tar.gz))
MAIN_VENV ?= .venv-mmf-main

.PHONY: setup demo test test-mmf-main bench clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py requirements/platform.txt requirements/constraints.txt requirements/mmf-main*.txt
	@case "$(MMF)" in rc10) ;; main) test -e "$(MMF_SOURCE)" || { echo "MMF=main needs MMF_SOURCE=<MMF source folder or .tar.gz>"; exit 2; } ;; \
	  *) echo "MMF=$(MMF): choose rc10 (default) or main"; exit 2 ;; esac
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# ranges: pyproject.toml; the tested versions: requirements/constraints.txt
	$(PIP) install -q -c requirements/constraints.txt setuptools wheel
	$(PIP) install -q -c requirements/constraints.txt -r requirements/platform.txt
	$(PIP) install -q -c requirements/constraints.txt --no-build-isolation -e '.[index,plot,attributes,tensorboard,test]'
	# both MMFs pin torch 1.x & co: install MMF without its dependencies, last: MMF main
	# needs the older setuptools of requirements/mmf-main-nodeps.txt
	if [ "$(MMF)" = main ]; then \
	  $(PIP) install -q --no-deps -r requirements/mmf-main-nodeps.txt && \
	  $(PIP) install -q -c requirements/constraints.txt -r requirements/mmf-main.txt && \
	  $(PIP) install -q --no-deps "$(MMF_SOURCE)"; \
	else $(PIP) install -q --no-deps mmf==1.0.0rc10; fi
	$(PY) -m mmf_fashion.bridge.install_hook
	touch $(STAMP)

demo: setup
	$(PY) -m mmf_fashion.demo --data-dir $(DEMO_DATA)

# the whole suite on MMF 1.0.0rc10, then the tests marked mmf_compat on MMF main
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-mmf-main

test-mmf-main:
	@if [ -z "$(MMF_MAIN_SOURCE)" ]; then \
	  echo "test-mmf-main: skipped: no MMF main source (../shared/third_party/mmf-main-*.tar.gz is absent; set MMF_MAIN_SOURCE=<MMF source folder or archive>)"; \
	else \
	  $(MAKE) --no-print-directory setup MMF=main MMF_SOURCE="$(MMF_MAIN_SOURCE)" VENV=$(MAIN_VENV) && \
	  $(MAIN_VENV)/bin/python -m pytest -q -m mmf_compat; \
	fi

bench: setup
	$(PY) -m benchmarks.run_all

clean-demo:
	rm -rf save/demo
