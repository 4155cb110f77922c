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

.PHONY: setup espeak chromium test demo bench clean

setup: $(STAMP) espeak

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@# torch first and pinned: an unpinned resolve would pull the multi-GB CUDA build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	@# The base install is the runtime side (predict, label, serve); `train` adds training and export.
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train,dev]'
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

chromium:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (the web page's browser test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing: install it with 'sudo apt-get install -y chromium' and run make again" >&2; \
	    exit 1; \
	  fi; \
	fi

test: setup chromium
	$(VENV)/bin/lint-imports --no-cache
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
	@# Label the test audio as a batch job; count its languages against the truth (the language folder).
	awk -F, '$$4 == "test" {print "corpus/" $$1}' $(DEMO)/corpus/manifest.csv > $(DEMO)/test-files.txt
	$(SLC) label $(DEMO)/test-files.txt --bundle $(DEMO)/bundle --out $(DEMO)/labels --overwrite
	$(PY) -c 'import sys, collections; from slc.apps.label import read_labels; \
	  counts = collections.Counter((r["path"].split("/")[-2], r["language"] or r["error"]) for r in read_labels(sys.argv[1]).to_pylist()); \
	  print("truth  labelled  files"); [print(f"{t:<6} {l:<9} {n}") for (t, l), n in sorted(counts.items())]' $(DEMO)/labels
	@# Start the endpoint, classify one test clip over HTTP, stop.
	$(SLC) serve $(DEMO)/bundle --once "$$(awk -F, '$$4 == "test" {print "$(DEMO)/corpus/" $$1; exit}' $(DEMO)/corpus/manifest.csv)"

bench: setup
	$(PY) bench/featurize.py
	$(PY) bench/train.py
	$(PY) bench/inference.py --checkpoint $(DEMO)/run/best --bundle $(DEMO)/bundle
	$(PY) bench/predict.py --bundle $(DEMO)/bundle --clips $(DEMO)/corpus
	$(PY) bench/serve.py --bundle $(DEMO)/bundle --clips $(DEMO)/corpus
	$(PY) bench/label.py --bundle $(DEMO)/bundle --corpus $(DEMO)/corpus

clean:
	rm -rf $(DEMO) .pytest_cache
