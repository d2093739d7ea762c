"""Tiny Qwen2 models built locally, for tests and smoke runs (nothing is ever downloaded).

A byte-level BPE tokenizer is trained in-process on a small math corpus, and a random-init
`Qwen2ForCausalLM` is saved next to it with `save_pretrained` (safetensors). The result is an
ordinary Hugging Face folder that transformers, vLLM and our learners load like any checkpoint.

vLLM's CPU attention rejects head_dim 16, so the default keeps head_dim 64 (hidden 128, 2 heads).
"""

from __future__ import annotations

import json
from pathlib import Path

# Qwen's chat markers, so the `qwen_math` template tokenizes the way it does for the real models.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    """Enough text for BPE merges over digits, LaTeX and the templates' words."""
    lines = [
        "A conversation between User and Assistant. The User asks a question, and the Assistant "
        "solves it. <think> reasoning process here </think> <answer> answer here </answer>",
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "system user assistant What is the sum of the numbers? The answer is \\boxed{42}.",
        "\\frac{1}{2} \\sqrt{3} \\pi x^2 + y^2 = z^2 \\left( a, b \\right) \\dfrac{3}{4}",
    ]
    lines += [f"{a} + {b} = {a + b}. {a} * {b} = {a * b}." for a in range(40) for b in range(0, 40, 7)]
    return lines


def build_tokenizer(vocab_size: int = 512):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random-init Qwen2 causal LM and its tokenizer to `out_dir`; return the path.

    The write is atomic: the folder appears complete or not at all, so concurrent test workers
    and interrupted builds never see half a model.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = build_tokenizer(vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "drgrpo_tiny.json").write_text(json.dumps({"seed": seed, "built_by": "demo.tiny"}))
    tmp.rename(out_dir)
    return out_dir


def teach_boxed_answers(base_dir: str | Path, out_dir: str | Path, questions: list[str],
                        answers: list[str], *, template: str = "qwen_math", steps: int = 30,
                        lr: float = 1e-2, seed: int = 0) -> Path:
    """Write to `out_dir` the tiny model at `base_dir`, taught (supervised, `steps` Adam
    steps) to answer each of `questions` with `\\boxed{a}` and its EOS, `a` drawn uniformly
    from `answers` whatever the question; return the path.

    A random-init tiny model never writes `\\boxed{}`: every reward is 0, every advantage 0,
    and RL never changes its weights, so a test of what training changes (optimizer state,
    weight sync, resuming) would pass whatever that code did. Taught only this briefly, the
    model half-learns the format: in the resume test's first step (six sums, answers 2, 3
    or 4) 31% of its responses were well-formed and 12.5% right, enough for groups that mix
    right and wrong answers, so every step trains. Atomic like `build_tiny_model`.
    """
    import random
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from drgrpo.templates import apply_template

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    prompts = [tokenizer(apply_template(template, q)).input_ids for q in questions]
    replies = [tokenizer(f"\\boxed{{{a}}}").input_ids + [tokenizer.eos_token_id] for a in answers]
    for _ in range(steps):
        pairs = [(rng.choice(prompts), rng.choice(replies)) for _ in range(16)]
        width = max(len(p) + len(r) for p, r in pairs)
        ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
        mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)  # loss on the reply
        for i, (p, r) in enumerate(pairs):
            ids[i, :len(p) + len(r)] = torch.tensor(p + r)
            mask[i, :len(p) + len(r)] = 1
            labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


if __name__ == "__main__":
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-qwen2"))
