# Two commands do everything on a fresh machine:
#   make demo   install (venv, CPU torch, rtpick) and run the daemon on the bundled Oklahoma replay
#   make test   install and run the whole test suite (what .ci/run calls)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_CACHE := $(wildcard ../shared/seisbench-cache)
# PhaseNet weights: SeisBench's own cache; seeded from ../shared when present (no internet needed)
export SEISBENCH_CACHE_ROOT ?= $(CURDIR)/.cache/seisbench

.PHONY: install demo test bench

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # CPU build from the local wheel; before the project
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

$(SEISBENCH_CACHE_ROOT):
	mkdir -p $(SEISBENCH_CACHE_ROOT)
	$(if $(SHARED_CACHE),cp -r $(SHARED_CACHE)/. $(SEISBENCH_CACHE_ROOT)/)

demo: $(STAMP) $(SEISBENCH_CACHE_ROOT)
	$(VENV)/bin/rtpick demo

test: $(STAMP)
	bash scripts/install-test-services.sh   # Debian prometheus + systemd-analyze, only if missing
	bash scripts/test.sh

bench: $(STAMP) $(SEISBENCH_CACHE_ROOT)
	$(PY) bench/throughput.py
