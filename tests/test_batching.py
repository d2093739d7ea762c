"""Micro-batches by count and by token budget (drgrpo.batching): what each pass pays for."""

import random

import pytest

from drgrpo.batching import (
    Sample,
    collate,
    micro_batches,
    pack_by_tokens,
    padded_positions,
    sequence_length,
)


def _skewed_samples(n: int, seed: int = 0) -> list[Sample]:
    """Prompts of 30-90 tokens, responses lognormal around 60 with a tail cut at 8x that."""
    rng = random.Random(seed)
    return [Sample([1] * rng.randint(30, 90),
                   [2] * max(1, min(480, round(60 * rng.lognormvariate(0.0, 1.0)))), 1.0)
            for _ in range(n)]


def test_greedy_packing_longest_first():
    # Sorted: 9, 5, 3, 3, 2, 1. 9 + 5 would be 2 x 9 = 18 > 9; 5 + 3 would be 2 x 5 = 10 > 9;
    # 3, 3, 2 is 3 x 3 = 9; adding the 1 would make it 4 x 3 = 12.
    assert pack_by_tokens([5, 1, 9, 3, 3, 2], max_tokens=9) == [[2], [0], [3, 4, 5], [1]]


def test_a_sequence_over_the_budget_runs_alone():
    assert pack_by_tokens([20, 2, 2, 30], max_tokens=8) == [[3], [0], [1, 2]]
    assert pack_by_tokens([], max_tokens=8) == []


@pytest.mark.parametrize("budget", [1, 150, 600, 2048])
def test_packing_covers_every_sample_within_budget(budget):
    lengths = [sequence_length(s) for s in _skewed_samples(200, seed=budget)]
    packed = pack_by_tokens(lengths, budget)
    assert sorted(i for mb in packed for i in mb) == list(range(len(lengths)))
    for mb in packed:
        width = max(lengths[i] for i in mb)
        assert len(mb) * width <= budget or len(mb) == 1
    flat = [lengths[i] for mb in packed for i in mb]
    assert flat == sorted(lengths, reverse=True)  # neighbours in length share a pass
    for mb in packed[:-1]:
        # Greedy: the next sequence (no longer than this pass's first) did not fit.
        assert (len(mb) + 1) * lengths[mb[0]] > budget


def test_padded_positions_match_collate():
    samples = _skewed_samples(5)
    batch = collate(samples)
    padded, total = padded_positions(samples)
    assert total == batch.attention_mask.numel()
    assert padded == total - int(batch.attention_mask.sum())


def test_count_mode_keeps_rollout_order():
    """Without a budget the layout is what it always was: micro_batch_size at a time, in order
    (so the demo and every count-based run train exactly as before)."""
    samples = _skewed_samples(10)
    assert micro_batches(samples, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_token_budget_cuts_padding_and_passes_on_skewed_lengths():
    """One learner's share of a step (64 responses), lengths skewed as in the paper's rollouts.
    In rollout order, 4 responses a pass, padding is 40% of what is computed; packed under a
    budget of the same worst-case pass (4 x the longest possible sequence) it is a small part,
    in fewer, fuller passes."""
    samples = _skewed_samples(64, seed=3)

    def fraction(layout):
        counts = [padded_positions([samples[i] for i in mb]) for mb in layout]
        return sum(p for p, _ in counts) / sum(t for _, t in counts)

    by_count = micro_batches(samples, 4)
    by_tokens = micro_batches(samples, 4, max_tokens=4 * (90 + 480))
    assert fraction(by_count) > 0.35
    assert fraction(by_tokens) < fraction(by_count) / 2
    assert len(by_tokens) < len(by_count) / 2
