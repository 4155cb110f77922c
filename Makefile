# Every target bootstraps .venv itself: a fresh machine needs only `make demo`
# or `make test`; a second run finds everything in place and starts at once.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV ?= .venv
PY := $(VENV)/bin/python
SLC := $(VENV)/bin/slc
STAMP := $(VENV)/.installed
DEMO ?= demo-output
# The demo recipe (docs/experiments.md): 800 clips per language, 20 background
# languages as the class `other`, the TDNN family, 4 s crops.
DEMO_PER_LANG ?= 800
DEMO_BACKGROUND ?= 20
DEMO_AUGMENT ?= 2
DEMO_EPOCHS ?= 6

# Most tests wait on processes starting (Ray, its workers, browsers, pip), so
# two pytest workers, each with its own local Ray, finish sooner even on 2
# cores. By file: a module's tests share one worker and its fixtures. In the
# order of collection, where conftest puts the slow ones first.
TEST_WORKERS ?= 2

# The throughput benchmarks' `tiny` bundle (README, "Measured on the 2-core
# development machine"): Speech2Text `tiny`, one epoch on 150 clips per language.
TINY ?= $(DEMO)/tiny

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
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

demo: setup
	$(SLC) synth $(DEMO)/corpus --per-lang $(DEMO_PER_LANG) --background $(DEMO_BACKGROUND) --overwrite
	$(SLC) ingest $(DEMO)/corpus $(DEMO)/shards --labels de,en,fr,it --background all-others \
	  --augment $(DEMO_AUGMENT) --overwrite
	$(SLC) train $(DEMO)/shards $(DEMO)/run --preset tdnn --workers 2 --epochs $(DEMO_EPOCHS) \
	  --max-frames 400 --batch-size 16 --overwrite
	$(SLC) evaluate $(DEMO)/run/best $(DEMO)/shards $(DEMO)/report
	$(SLC) export $(DEMO)/run/best $(DEMO)/bundle --overwrite
	@# The test split: voices and sentences never heard in training, and languages never heard at all.
	$(PY) -c 'import sys; from slc.data.shards import read_split; \
	  print("\n".join(read_split(sys.argv[1], "test", ["path"]).column("path").to_pylist()))' \
	  $(DEMO)/shards > $(DEMO)/test-files.txt
	@# One test clip per language folder.
	$(SLC) predict --bundle $(DEMO)/bundle $$(awk -F/ '!seen[$$(NF-1)]++' $(DEMO)/test-files.txt)
	@# Label the test audio as a batch job; count its answers against the truth (the language folder).
	$(SLC) label $(DEMO)/test-files.txt --bundle $(DEMO)/bundle --out $(DEMO)/labels --overwrite
	$(PY) -c 'import sys, collections; from slc.apps.label import read_labels; \
	  counts = collections.Counter((r["path"].split("/")[-2], r["language"] or r["error"]) for r in read_labels(sys.argv[1]).to_pylist()); \
	  print("folder  labelled  files"); [print(f"{t:<7} {l:<9} {n}") for (t, l), n in sorted(counts.items())]' $(DEMO)/labels
	@# Start the endpoint, classify one test clip over HTTP, stop.
	$(SLC) serve $(DEMO)/bundle --once "$$(head -n 1 $(DEMO)/test-files.txt)"

bench: setup $(TINY)/bundle/bundle.json
	$(PY) bench/featurize.py
	$(PY) bench/train.py
	$(PY) bench/inference.py --checkpoint $(TINY)/run/best --bundle $(TINY)/bundle
	$(PY) bench/inference.py --preset base --rounds 3 --repeats 3
	$(PY) bench/predict.py --bundle $(TINY)/bundle --clips $(TINY)/corpus
	$(PY) bench/serve.py --bundle $(TINY)/bundle --clips $(TINY)/corpus
	$(PY) bench/serve.py --bundle $(TINY)/bundle --clips $(TINY)/corpus --ingress haproxy --replicas 2
	$(PY) bench/label.py --bundle $(TINY)/bundle --corpus $(TINY)/corpus
	$(PY) bench/stream.py --bundle $(TINY)/bundle --clips $(TINY)/corpus
	@# Change latency needs a model sure of its languages: the demo's.
	$(PY) bench/stream.py --bundle $(DEMO)/bundle --clips $(DEMO)/corpus --sweep --recordings 144
	@# Unseen voices under noise, rooms, telephone and codecs; open set on the test split's unseen languages.
	$(SLC) synth $(DEMO)/conditions --conditions --per-lang 50 --overwrite
	$(PY) bench/accuracy.py --bundle $(DEMO)/bundle --conditions $(DEMO)/conditions --unknown $(DEMO)/corpus \
	  --unknown-langs $$($(PY) -c 'import json, sys; print(",".join(json.load(open(sys.argv[1]))["background"]["test"]))' \
	  $(DEMO)/shards/summary.json)

$(TINY)/bundle/bundle.json: | setup
	$(SLC) synth $(TINY)/corpus --per-lang 150 --overwrite
	$(SLC) ingest $(TINY)/corpus $(TINY)/shards --overwrite
	$(SLC) train $(TINY)/shards $(TINY)/run --preset tiny --epochs 1 --workers 1 --overwrite
	$(SLC) export $(TINY)/run/best $(TINY)/bundle --overwrite

clean:
	rm -rf $(DEMO) .pytest_cache
