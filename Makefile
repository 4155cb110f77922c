# Every target bootstraps .venv itself: a fresh machine needs only `make demo`
# or `make test`; a second run finds everything in place and starts at once.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV ?= .venv
PY := $(VENV)/bin/python
SLC := $(VENV)/bin/slc
STAMP := $(VENV)/.installed
DEMO ?= demo-output
DEMO_PER_LANG ?= 100
DEMO_EPOCHS ?= 10

.PHONY: setup espeak test demo bench clean

setup: $(STAMP) espeak

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@# torch first and pinned: an unpinned resolve would pull the multi-GB CUDA build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

espeak:
	@if ! command -v espeak-ng >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing espeak-ng (demo speech and test audio)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	  else \
	    echo "espeak-ng is missing: install it with 'sudo apt-get install -y espeak-ng' and run make again" >&2; \
	    exit 1; \
	  fi; \
	fi

test: setup
	$(PY) -m pytest

demo: setup
	$(SLC) synth $(DEMO)/corpus --per-lang $(DEMO_PER_LANG) --overwrite
	$(SLC) ingest $(DEMO)/corpus $(DEMO)/shards --augment 2 --overwrite
	$(SLC) train $(DEMO)/shards $(DEMO)/run --preset tiny --workers 2 --epochs $(DEMO_EPOCHS) --overwrite
	$(SLC) evaluate $(DEMO)/run/best $(DEMO)/shards $(DEMO)/report
	$(SLC) export $(DEMO)/run/best $(DEMO)/bundle --overwrite
	@# One test-split clip per language: voices and sentences never heard in training.
	$(SLC) predict --bundle $(DEMO)/bundle \
	  $$(awk -F, '$$4 == "test" && !seen[$$2]++ {print "$(DEMO)/corpus/" $$1}' $(DEMO)/corpus/manifest.csv)

bench: setup
	$(PY) bench/featurize.py
	$(PY) bench/train.py
	$(PY) bench/inference.py --checkpoint $(DEMO)/run/best --bundle $(DEMO)/bundle

clean:
	rm -rf $(DEMO) .pytest_cache
