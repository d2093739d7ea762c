"""From scored groups to learner batches: shuffling, optimizer steps, shards, micro-batches.

The split is independent of the number of learners: the rollout is permuted once (seeded),
cut into optimizer steps of `train_batch_size` responses, and only then is each step cut into
equal contiguous shards, one per learner. One learner or eight see the same optimizer steps,
which is what makes "1 learner == 2 learners" testable. Advantages are computed on whole groups
before any of this, so splitting a group across steps or learners is harmless.

Each learner then cuts its share of a step into micro-batches (`micro_batches`): a fixed count
of responses, or as many as fit a token budget once sorted by length. The loss divides by the
responses of the whole optimizer step (`drgrpo.algorithm.policy_loss`), so how a share is cut
changes the cost of a step, never its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    # log mu of each response token under the policy that sampled it (vLLM): for truncated
    # importance sampling (algorithm.tis_cap), and the log-prob agreement gauge
    behaviour_logprobs: list[float] | None = None
    # sampled by the weights being trained, not older ones (rollout.max_staleness): only
    # then do mu and the learner's log-probs measure the same policy
    on_policy: bool = True


def plan_steps(samples: list[Sample], train_batch_size: int, num_learners: int,
               seed: int) -> list[list[list[Sample]]]:
    """result[learner][step] is that learner's share of optimizer step `step`."""
    if len(samples) % train_batch_size or train_batch_size % num_learners:
        raise ValueError(f"{len(samples)} responses cannot be trained as steps of "
                         f"{train_batch_size} over {num_learners} learners")
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [samples[i] for i in order]
    per_learner = train_batch_size // num_learners
    plan: list[list[list[Sample]]] = [[] for _ in range(num_learners)]
    for start in range(0, len(shuffled), train_batch_size):
        step = shuffled[start:start + train_batch_size]
        for rank in range(num_learners):
            plan[rank].append(step[rank * per_learner:(rank + 1) * per_learner])
    return plan


@dataclass
class Batch:
    input_ids: torch.Tensor       # [b, T] prompt + response, right-padded
    attention_mask: torch.Tensor  # [b, T]
    response_mask: torch.Tensor   # [b, T-1] 1 where log-prob position t predicts a response token
    advantages: torch.Tensor      # [b]

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                               self.response_mask, self.advantages)))


def collate(samples: list[Sample], pad_id: int = 0) -> Batch:
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    width = max(lengths)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), width), dtype=torch.long)
    resp = torch.zeros((len(samples), width - 1), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, n = len(s.prompt_ids), lengths[i]
        ids[i, :n] = torch.tensor(s.prompt_ids + s.response_ids)
        attn[i, :n] = 1
        resp[i, p - 1:n - 1] = 1  # position t holds log p(token t+1)
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return Batch(ids, attn, resp, adv)


def response_logprobs(logprobs: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
    """Per sample, the log-probs of its response tokens only (1-D, on CPU)."""
    return [row[mask.bool()].detach().cpu() for row, mask in zip(logprobs, batch.response_mask)]


def place_response_logprobs(per_sample: list[torch.Tensor], batch: Batch) -> torch.Tensor:
    """Inverse of `response_logprobs`: a [b, T-1] tensor (0 off the response)."""
    out = torch.zeros_like(batch.response_mask)
    for i, values in enumerate(per_sample):
        out[i, batch.response_mask[i].bool()] = values.to(out.dtype)
    return out


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def sequence_length(sample: Sample) -> int:
    """Positions the sample fills in a right-padded batch (`collate`): prompt + response."""
    return len(sample.prompt_ids) + len(sample.response_ids)


def pack_by_tokens(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices of micro-batches whose padded size, rows x longest row, is at most `max_tokens`.

    Longest first, then greedily: a micro-batch takes the next-longest sequence while the
    padded size still fits. Sorting puts similar lengths together, so padding is only the gap
    between neighbours in length order; longest first makes the biggest pass the first one, so
    a budget that does not fit in memory fails at once, not after minutes of training. A
    sequence longer than the budget gets a micro-batch of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep order
    packed: list[list[int]] = []
    for i in order:
        # The current micro-batch's first row is its longest, so its width is fixed.
        if packed and (len(packed[-1]) + 1) * lengths[packed[-1][0]] <= max_tokens:
            packed[-1].append(i)
        else:
            packed.append([i])
    return packed


def micro_batches(samples: list[Sample], micro_batch_size: int,
                  max_tokens: int | None = None) -> list[list[int]]:
    """Indices of `samples` per micro-batch: packed by length under `max_tokens` when it is
    set, else `micro_batch_size` at a time in the given order."""
    if max_tokens is not None:
        return pack_by_tokens([sequence_length(s) for s in samples], max_tokens)
    return chunks(list(range(len(samples))), micro_batch_size)


def padded_positions(samples: list[Sample]) -> tuple[int, int]:
    """(padding positions, all positions) of `collate(samples)`: what a pass pays for nothing."""
    lengths = [sequence_length(s) for s in samples]
    total = len(lengths) * max(lengths, default=0)
    return total - sum(lengths), total
