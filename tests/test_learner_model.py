"""The learner's model really trains: train mode, checkpointed layers that recompute, no dropout.

Each case builds the real learner (`actors.learner.LearnerActor`, without Ray) in a spawned
process: FSDP2 or DeepSpeed ZeRO-2 at world size 1 over gloo, on a tiny Qwen2 whose config asks
for attention dropout, so dropout left on would show as noise between log-prob passes.
"""

import json
import multiprocessing
import random
import shutil
import socket
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("ray")  # actors.learner wraps the class with ray.remote at import

from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer  # noqa: E402

from actors.learner import LearnerActor  # noqa: E402
from drgrpo.batching import Sample, chunks, collate, response_logprobs  # noqa: E402
from drgrpo.config_load import load_config  # noqa: E402

MICRO_BATCH = 2


@pytest.fixture(scope="module")
def dropout_model_path(tiny_model_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-qwen2-dropout"
    shutil.copytree(tiny_model_path, path)
    config = json.loads((path / "config.json").read_text())
    config["attention_dropout"] = 0.3
    (path / "config.json").write_text(json.dumps(config))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(n: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample([rng.randrange(300) for _ in range(5)],
                   [rng.randrange(300) for _ in range(rng.randint(3, 8))],
                   1.0 if i % 2 else -1.0) for i in range(n)]  # non-zero: none is skipped


def _probe(model_path: str, out_dir: str, strategy: str, checkpointing: bool) -> dict:
    """In a fresh process (its own gloo group and DeepSpeed globals): build the learner, take
    its log-probs three ways, then run one optimizer step of one micro-batch through
    `LearnerActor.train`, recording each decoder layer's calls (grad enabled?, train mode?)."""
    flat = {"model.path": model_path, "model.dtype": "float32", "data.train_path": "unused",
            "rollout.prompts_per_step": 1, "rollout.samples_per_prompt": 4,
            "rollout.max_new_tokens": 8, "learner.train_batch_size": 4,
            "learner.micro_batch_size": MICRO_BATCH, "learner.strategy": strategy,
            "learner.zero_stage": 2, "learner.gradient_checkpointing": checkpointing,
            "cluster.device": "cpu", "trainer.output_dir": out_dir}
    cfg = load_config(None, [f"--{k}={v}" for k, v in flat.items()])
    learner = LearnerActor(cfg, 0, 1, "127.0.0.1", _free_port(), "cpu")

    samples = _samples(4, seed=1)
    first, second = learner._logprobs(samples), learner._logprobs(samples)
    trained = []
    for mb in chunks(samples, MICRO_BATCH):  # the micro-batches `train` runs
        batch = collate(mb)
        out = learner.backend.module(batch.input_ids, batch.attention_mask, batch.response_mask)
        assert out.requires_grad
        trained += response_logprobs(out.detach(), batch)

    layers = [m for m in learner.backend.module.modules() if isinstance(m, Qwen2DecoderLayer)]
    calls: list[list[tuple[bool, bool]]] = []
    for layer in layers:
        calls.append([])
        # A pre-hook, because the non-reentrant recompute stops as soon as it has rebuilt
        # what the backward needs, before forward (post-)hooks would run.
        layer.register_forward_pre_hook(
            lambda module, args, seen=calls[-1]: seen.append((torch.is_grad_enabled(),
                                                              module.training)))
    stats = learner.train([_samples(MICRO_BATCH, seed=0)])
    dist.destroy_process_group()
    return {"first": first, "second": second, "trained": trained, "calls": calls,
            "stats": stats}


CASES = [(s, c) for s in ("fsdp", "deepspeed") for c in (True, False)]
IDS = [f"{s}-{'checkpointing' if c else 'no-checkpointing'}" for s, c in CASES]


@pytest.fixture(scope="module")
def probes(dropout_model_path, tmp_path_factory):
    """Probe results per case, each computed once, in its own spawned process: DeepSpeed
    keeps process groups in module globals that a second init in one process trips over."""
    cache = {}

    def get(strategy: str, checkpointing: bool) -> dict:
        if (strategy, checkpointing) not in cache:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                cache[strategy, checkpointing] = pool.submit(
                    _probe, str(dropout_model_path), str(tmp_path_factory.mktemp("run")),
                    strategy, checkpointing).result(timeout=300)
        return cache[strategy, checkpointing]

    return get


@pytest.mark.parametrize("strategy,checkpointing", CASES, ids=IDS)
def test_layers_recompute_in_backward_only_with_checkpointing(probes, strategy, checkpointing):
    """One optimizer step of one micro-batch: each decoder layer runs with grad enabled once in
    the forward pass, and once more in the backward pass (the recompute) when checkpointing
    is on. Every call, the no-grad passes included, is in train mode."""
    result = probes(strategy, checkpointing)
    assert result["stats"]["optimizer_steps"] == 1 and result["stats"]["grad_norm"] > 0
    # Per layer: (calls with grad enabled, every call in train mode); the tiny model has 2.
    per_layer = [(sum(grad for grad, _ in seen), all(training for _, training in seen))
                 for seen in result["calls"]]
    assert per_layer == [(2 if checkpointing else 1, True)] * 2


@pytest.mark.parametrize("strategy,checkpointing", CASES, ids=IDS)
def test_logprob_passes_are_bit_identical(probes, strategy, checkpointing):
    """Two no-grad passes (the learner's "old" log-probs) are bit-identical, and equal the
    training forward's, detached, which is what the first optimizer step uses as old."""
    result = probes(strategy, checkpointing)
    for a, b, c in zip(result["first"], result["second"], result["trained"], strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_disable_dropout_silences_dropout_modules():
    """Qwen2 and Llama keep their dropout as a float attribute copied from the config; other
    architectures (GPT-2 here) use nn.Dropout modules, with `*_pdrop` config fields."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from drgrpo.backends import disable_dropout

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                    n_positions=16)).train()
    ids = torch.arange(16).unsqueeze(0)
    assert not torch.equal(lm(ids).logits, lm(ids).logits)  # dropout is on before
    disable_dropout(lm)
    assert torch.equal(lm(ids).logits, lm(ids).logits)
    assert lm.config.resid_pdrop == lm.config.attn_pdrop == lm.config.embd_pdrop == 0.0
