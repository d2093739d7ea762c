"""The Dr. GRPO objective (Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective").

GRPO samples a group of G responses per question, scores each with a 0/1 reward, and pushes up
the responses that beat their group. It carries two biases, and Dr. GRPO ("GRPO Done Right")
removes both:

1. Question-level difficulty bias, in the advantage: GRPO divides by the group's reward std, so
   questions that are almost always or almost never solved (small std) get their updates blown
   up. Dr. GRPO keeps the mean-centred reward `r - mean(group)`.   -> `group_advantages`

2. Response-level length bias, in the loss: GRPO averages each response's token losses over its
   own length |o_i|. A correct (A > 0) short answer then gets a larger per-token push than a long
   one, and a wrong (A < 0) long answer a smaller per-token penalty than a short one, so wrong
   answers grow longer. Dr. GRPO sums each response's token losses and divides by one constant,
   the maximum response length, the same for every response.      -> `policy_loss`

Everything here is plain torch and runs on any device.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Method = Literal["dr_grpo", "grpo"]
METHODS: tuple[str, ...] = ("dr_grpo", "grpo")


def group_advantages(rewards: torch.Tensor, group_size: int, method: Method) -> torch.Tensor:
    """Advantage of each response relative to its group (`group_size` consecutive rewards).

    `dr_grpo`: A_i = r_i - mean(r_group).
    `grpo`:    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-8), torch's unbiased std, as in
               the paper's released code.

    A group whose rewards are all equal has no learning signal: its advantages are exactly 0
    for both methods (r - mean is 0 before any division, so no NaN and no 0/0).
    """
    _check_method(method)
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be 1-D with a multiple of {group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if method == "grpo":
        # GRPO only. Dr. GRPO omits this division: it is the question-level difficulty bias.
        centred = centred / (groups.std(dim=1, keepdim=True) + 1e-8)
    return centred.view(-1)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    method: Method,
    clip_eps: float,
    max_response_len: int,
    *,
    num_responses: int | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    behaviour_logprobs: torch.Tensor | None = None,
    tis_cap: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip surrogate over response tokens, normalised the Dr. GRPO or the GRPO way.

    Shapes: `logprobs`, `old_logprobs`, `mask` are [batch, T] (mask 1 on response tokens);
    `advantages` is [batch] (one per response, broadcast over its tokens).

    Per token: l_it = -min(ratio * A_i, clip(ratio, 1 - eps, 1 + eps) * A_i).
    Per response:
      `dr_grpo`: sum_t l_it / max_response_len   (one constant for every response)
      `grpo`:    sum_t l_it / |o_i|               (its own length: the length bias)
    Loss: sum over responses / `num_responses`.

    `num_responses` is the number of responses in the whole optimizer step, across every
    micro-batch and every learner (default: this batch). With it, summing the gradients of all
    shards gives exactly the gradient of the single-batch loss
    (1/B) * sum_i (1/max_response_len) * sum_t l_it, whatever the sharding. Frameworks that
    average gradients over data-parallel ranks (FSDP, ZeRO) need this loss multiplied by the
    world size; the learners do that, not this function.

    Off-policy correction (`tis_cap` > 0): the responses were sampled by a behaviour policy mu
    (vLLM: other numerics, and with an asynchronous pipeline older weights), not by the
    proximal policy pi_old (`old_logprobs`, the learner's own) whose ratio PPO clips. Each
    token's surrogate term is multiplied by the truncated importance weight
    min(pi_old / mu, tis_cap), detached (truncated importance sampling, as verl's rollout IS
    and AReaL's decoupled PPO). The normalisation is untouched: the weight multiplies token
    terms, the divisors stay what they are.

    Returns `(loss, stats)`; stats are detached sums over this batch (`clipped_tokens`,
    `tokens`, `kl`, `tis_weight`, `tis_clipped_tokens`), to be added across shards and
    divided at the end.
    """
    _check_method(method)
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype).unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    token_loss = -torch.minimum(unclipped, clipped)

    tis_weight = torch.ones_like(token_loss)
    tis_clipped = torch.zeros_like(token_loss)
    if tis_cap > 0.0:
        if behaviour_logprobs is None:
            raise ValueError("tis_cap > 0 needs behaviour_logprobs")
        raw = torch.exp(old_logprobs - behaviour_logprobs).detach()
        tis_weight = raw.clamp(max=tis_cap)
        tis_clipped = (raw > tis_cap).to(mask.dtype)
        token_loss = token_loss * tis_weight

    kl_sum = torch.zeros((), device=logprobs.device)
    if kl_coef > 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        # k3 estimator of KL(pi || ref): exp(ref - pi) - (ref - pi) - 1, unbiased and >= 0.
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1.0
        token_loss = token_loss + kl_coef * kl
        kl_sum = (kl * mask).sum().detach()

    per_response = (token_loss * mask).sum(dim=-1)
    if method == "dr_grpo":
        # Dr. GRPO: one constant for every response. This removes the length bias.
        per_response = per_response / max_response_len
    else:
        # GRPO: each response divided by its own length |o_i| (the length bias).
        per_response = per_response / mask.sum(dim=-1).clamp(min=1.0)

    batch = per_response.shape[0] if num_responses is None else num_responses
    loss = per_response.sum() / batch

    with torch.no_grad():
        was_clipped = (clipped < unclipped).to(mask.dtype) * mask
        stats = {
            "clipped_tokens": was_clipped.sum(),
            "tokens": mask.sum(),
            "kl": kl_sum,
            "tis_weight": (tis_weight * mask).sum(),
            "tis_clipped_tokens": (tis_clipped * mask).sum(),
        }
    return loss, stats


def token_logprobs(
    source: torch.nn.Module | torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """log pi(x_t | x_<t) for every position t >= 1, shape [batch, seq - 1], float32.

    `positions` ([batch, seq - 1], nonzero where wanted, e.g. a batch's response mask): only
    those rows go through the output head; the others are 0. A prompt is often longer than its
    response (the demo's: ~70 tokens to ~46), and the head with its float32 softmax over the
    vocabulary is a fifth of the model's compute at a 49k vocabulary, more at Qwen's 152k; TRL
    (`logits_to_keep`) and verl skip the prompt's positions too.

    `source` is either a causal LM (anything with `.model` returning hidden states and an
    `.lm_head`, as Hugging Face's `*ForCausalLM`) or precomputed logits [batch, seq, vocab].

    Never materialises a float32 [batch, seq, vocab] tensor: rows of (batch * seq) are turned
    into logits, upcast and reduced `chunk_size` at a time. With Qwen2.5's 152k vocabulary a
    single 3k-token response would otherwise need ~1.8 GB per copy. With a model, each chunk's
    logits are recomputed in the backward pass (activation checkpointing) so they are not kept
    alive for autograd either.

    `chunk_size` rows at a time; by default as many as make CHUNK_BYTES of float32 logits.
    The backward pass of a chunk holds about three chunk-sized tensors besides the weights'
    gradients: measured on an H200 (benchmarks/logprobs_memory.py, 2 x 2,048 tokens, 152k
    vocabulary), 1,024-row chunks peaked at +2.87 GiB, 256-row chunks at +1.55 GiB in the same
    time, against +6.97 GiB for the naive path.
    """
    targets = input_ids[:, 1:]
    if isinstance(source, torch.Tensor):
        logits = source[:, :-1]
        return _chunked(lambda rows: rows, logits.reshape(-1, logits.shape[-1]),
                        targets.reshape(-1), temperature,
                        chunk_size or _rows_per_chunk(logits.shape[-1]), checkpoint=False
                        ).view_as(targets)

    hidden = source.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows, wanted = hidden[:, :-1].reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if positions is not None:
        keep = positions.reshape(-1).bool()
        rows, wanted = rows[keep], wanted[keep]
    values = _chunked(source.lm_head, rows, wanted, temperature,
                      chunk_size or _rows_per_chunk(source.lm_head.out_features),
                      checkpoint=torch.is_grad_enabled())
    if positions is None:
        return values.view_as(targets)
    return values.new_zeros(targets.shape).masked_scatter(positions.bool(), values)


CHUNK_BYTES = 160 * 2**20  # float32 logits per chunk: 276 rows of Qwen2.5's 152k vocabulary


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def _chunked(project, rows: torch.Tensor, targets: torch.Tensor, temperature: float,
             chunk_size: int, checkpoint: bool) -> torch.Tensor:
    def one(rows_chunk: torch.Tensor, targets_chunk: torch.Tensor) -> torch.Tensor:
        logits = project(rows_chunk).float()
        if temperature != 1.0:
            logits = logits / temperature
        # log_softmax picked at the targets, fused: forward and backward measured 1.7x faster
        # than gather minus logsumexp on this CPU (900 rows x 49k vocabulary, float32).
        return -F.cross_entropy(logits, targets_chunk, reduction="none")

    out = []
    for start in range(0, rows.shape[0], chunk_size):
        args = (rows[start:start + chunk_size], targets[start:start + chunk_size])
        if checkpoint:
            out.append(torch.utils.checkpoint.checkpoint(one, *args, use_reentrant=False))
        else:
            out.append(one(*args))
    return torch.cat(out) if out else rows.new_zeros(0, dtype=torch.float32)


def naive_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """Reference implementation (materialises the full log-softmax); for tests and benchmarks."""
    logp = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
