# Every target first makes sure .venv exists and holds the project, so `make crawl filter`
# works on a fresh clone. Pass extra CLI flags with ARGS="...", e.g. make crawl ARGS="--per-class 50".
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

.PHONY: install crawl filter dedup annotate release eval report status test lint demo chromium bench-crawl bench-eval bench-filter bench-dedup

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,postgres,ray]'
	touch $(STAMP)

crawl filter dedup status: $(STAMP)
	$(BIN)/curation $@ $(ARGS)

annotate: $(STAMP)
	$(BIN)/curation annotate serve $(ARGS)

release: $(STAMP)
	$(BIN)/curation release $(RELEASE_DIR) --name $(RELEASE_NAME) $(ARGS)

eval: $(STAMP)
	$(BIN)/curation eval $(EVAL_DIR) --model $(MODEL) $(ARGS)

report: $(STAMP)
	$(BIN)/curation report $(REPORT_DIR) $(ARGS)

# Debian's chromium for the annotation page's browser test (Playwright cannot download browsers here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Offline demo on the shared test photos: import them as local folders, dedup, show the funnel.
# (The filter needs weights: offline, pass ARGS="--checkpoint FILE" to `make filter`.)
demo: $(STAMP)
	$(BIN)/curation crawl --folder $(SHARED)/images/imagenet_samples
	$(BIN)/curation crawl --folder $(SHARED)/images/imagenet_val
	$(BIN)/curation dedup
	$(BIN)/curation status

# Crawl speed against img2dataset (its own venv: it pins pandas<3). E.g. make bench-crawl ARGS="--n 300".
bench-crawl: $(STAMP)
	test -x build/venv-bench/bin/img2dataset || { $(PYTHON) -m venv build/venv-bench && build/venv-bench/bin/pip install -q img2dataset; }
	$(BIN)/python benchmarks/crawl.py $(ARGS)

# Eval pipeline speed against the authors' eval.py loop (ImageFolder + DataLoader), same process.
bench-eval: $(STAMP)
	$(BIN)/python benchmarks/eval.py $(ARGS)

bench-filter bench-dedup: $(STAMP)
	$(BIN)/python benchmarks/$(@:bench-%=%).py $(ARGS)
