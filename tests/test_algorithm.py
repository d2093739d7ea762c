import math

import pytest
import torch

from drgrpo.algorithm import group_advantages, naive_token_logprobs, policy_loss, token_logprobs
from drgrpo.batching import pack_by_tokens

# --- advantages -----------------------------------------------------------------------------

def test_dr_grpo_advantage_is_mean_centred_reward():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    adv = group_advantages(r, group_size=4, method="dr_grpo")
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5, 0.75, -0.25, -0.25, -0.25]


def test_grpo_advantage_divides_by_unbiased_group_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    adv = group_advantages(r, group_size=4, method="grpo")
    std1 = math.sqrt(4 * 0.25 / 3)  # unbiased: divide by G - 1
    std2 = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)
    expected = [0.5 / std1, -0.5 / std1, -0.5 / std1, 0.5 / std1,
                0.75 / std2, -0.25 / std2, -0.25 / std2, -0.25 / std2]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", ["dr_grpo", "grpo"])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_zero_variance_group_gives_zero_advantage_not_nan(method, value):
    r = torch.tensor([value] * 4 + [1.0, 0.0, 1.0, 0.0])
    adv = group_advantages(r, group_size=4, method=method)
    assert torch.isfinite(adv).all()
    assert adv[:4].tolist() == [0.0] * 4
    assert adv[4:].abs().min() > 0


def test_difficulty_bias_only_in_grpo():
    # A hard question (1 of 8 right) and an easy one (7 of 8): GRPO's std division inflates
    # the rare success to 2.47 while Dr. GRPO keeps the raw 0.875.
    r = torch.tensor([1.0] + [0.0] * 7)
    assert group_advantages(r, 8, "dr_grpo")[0].item() == pytest.approx(0.875)
    assert group_advantages(r, 8, "grpo")[0].item() == pytest.approx(0.875 / math.sqrt(1 / 8))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="multiple of 4"):
        group_advantages(torch.zeros(6), 4, "dr_grpo")
    with pytest.raises(ValueError, match="method"):
        group_advantages(torch.zeros(4), 4, "ppo")


# --- loss -----------------------------------------------------------------------------------

def _two_responses():
    # Response 0: A = +0.5, 2 tokens. Response 1: A = -0.5, 4 tokens. ratio = 1 everywhere.
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    lp = torch.zeros(2, 4)
    return lp, lp.clone(), torch.tensor([0.5, -0.5]), mask


def test_dr_grpo_loss_divides_by_constant_max_len():
    lp, old, adv, mask = _two_responses()
    loss, _ = policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, max_response_len=8)
    # per response: sum_t(-A) / 8 -> [-0.5*2/8, +0.5*4/8]; mean over 2 responses
    assert loss.item() == pytest.approx((-0.125 + 0.25) / 2)


def test_grpo_loss_divides_by_each_response_length():
    lp, old, adv, mask = _two_responses()
    loss, _ = policy_loss(lp, old, adv, mask, "grpo", 0.2, max_response_len=8)
    # per response: mean_t(-A) -> [-0.5, +0.5]: the long wrong answer is penalised per token
    # half as much as a short one would be (the length bias).
    assert loss.item() == pytest.approx(0.0)


def test_length_bias_per_token_gradient():
    # Gradient per token of a wrong (A<0) response: GRPO shrinks it as the response grows,
    # Dr. GRPO keeps it constant.
    def per_token_grad(method, length):
        lp = torch.zeros(1, 8, requires_grad=True)
        mask = torch.zeros(1, 8)
        mask[0, :length] = 1
        loss, _ = policy_loss(lp, lp.detach(), torch.tensor([-1.0]), mask, method, 0.2, 8)
        loss.backward()
        return lp.grad[0, 0].item()

    assert per_token_grad("dr_grpo", 2) == pytest.approx(per_token_grad("dr_grpo", 8))
    assert per_token_grad("grpo", 2) == pytest.approx(4 * per_token_grad("grpo", 8))


def test_ppo_clip_and_clip_stats():
    r = math.log(1.5)  # ratio 1.5, outside [0.8, 1.2]
    lp = torch.tensor([[r], [r]])
    old = torch.zeros(2, 1)
    mask = torch.ones(2, 1)
    adv = torch.tensor([1.0, -1.0])
    loss, stats = policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, max_response_len=1)
    # A>0: min(1.5, 1.2) -> 1.2 (clipped). A<0: min(-1.5, -1.2) -> -1.5 (not clipped).
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["clipped_tokens"].item() == 1
    assert stats["tokens"].item() == 2


@pytest.mark.parametrize("method", ["dr_grpo", "grpo"])
def test_tis_weight_is_one_where_behaviour_equals_old(method):
    """Synchronous and numerically exact: pi_old == mu, every weight is 1, the loss and its
    gradient are today's."""
    torch.manual_seed(0)
    lp = torch.randn(3, 5, requires_grad=True)
    old, mask = torch.randn(3, 5), (torch.rand(3, 5) > 0.3).float()
    adv = torch.tensor([1.0, -0.5, 0.25])
    plain, _ = policy_loss(lp, old, adv, mask, method, 0.2, 5)
    (g_plain,) = torch.autograd.grad(plain, lp)
    tis, stats = policy_loss(lp, old, adv, mask, method, 0.2, 5, behaviour_logprobs=old.clone(),
                             tis_cap=2.0)
    (g_tis,) = torch.autograd.grad(tis, lp)
    assert tis.item() == pytest.approx(plain.item(), abs=1e-7)
    assert torch.allclose(g_tis, g_plain)
    assert stats["tis_weight"].item() == pytest.approx(mask.sum().item())
    assert stats["tis_clipped_tokens"].item() == 0


def test_tis_weight_is_capped_detached_and_scales_each_token_by_hand():
    """One response of three tokens, A = 1, Dr. GRPO with L = 4, no clipping in play
    (pi == pi_old): the surrogate's gradient wrt log pi_t is -A * ratio_t * w_t / L with
    w_t = min(pi_old/mu, C); the weight itself carries no gradient."""
    old = torch.log(torch.tensor([[0.5, 0.2, 0.1]]))
    mu = torch.log(torch.tensor([[0.25, 0.2, 0.01]]))  # weights 2, 1, 10 -> capped at 3
    lp = old.clone().requires_grad_(True)
    mask, adv = torch.ones(1, 3), torch.tensor([1.0])
    loss, stats = policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, 4, behaviour_logprobs=mu,
                              tis_cap=3.0)
    (grad,) = torch.autograd.grad(loss, lp)
    w = torch.tensor([[2.0, 1.0, 3.0]])
    assert loss.item() == pytest.approx(-(w.sum() / 4).item())
    assert torch.allclose(grad, -w / 4)
    assert stats["tis_weight"].item() == pytest.approx(6.0)
    assert stats["tis_clipped_tokens"].item() == 1
    with pytest.raises(ValueError, match="behaviour_logprobs"):
        policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, 4, tis_cap=3.0)


def test_kl_term_needs_reference_and_is_zero_at_reference():
    lp, old, adv, mask = _two_responses()
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, 8, kl_coef=0.1)
    base, _ = policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, 8)
    same, stats = policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, 8, ref_logprobs=lp, kl_coef=0.1)
    assert same.item() == pytest.approx(base.item()) and stats["kl"].item() == 0
    moved, stats = policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, 8, ref_logprobs=lp - 0.3,
                               kl_coef=0.1)
    assert moved.item() > base.item() and stats["kl"].item() > 0


# --- sharding: micro-batches and data-parallel ranks ----------------------------------------

def _random_step(batch=8, seq=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(seq, generator=g, requires_grad=True)  # a stand-in policy parameter
    feats = torch.randn(batch, seq, generator=g)
    old = torch.randn(batch, seq, generator=g) * 0.1 - 1.0
    adv = torch.randn(batch, generator=g)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).float()
    return weight, feats, old, adv, mask


def _logprobs(weight, feats):
    return torch.nn.functional.logsigmoid(feats * weight) - 1.0


# (ranks, how each rank cuts its share): ("count", k) = k contiguous micro-batches;
# ("tokens", budget) = the learner's token-budget layout (rows sorted by length, packed so
# rows x longest <= budget): 1 puts every row alone, 12 gives the two ranks 1 and 2 passes.
LAYOUTS = [(1, ("count", 1)), (1, ("count", 3)), (2, ("count", 2)), (4, ("count", 1)),
           (2, ("count", 4)), (1, ("tokens", 1)), (1, ("tokens", 8)), (2, ("tokens", 6)),
           (2, ("tokens", 12))]


@pytest.mark.parametrize("method", ["dr_grpo", "grpo"])
@pytest.mark.parametrize("ranks,cut", LAYOUTS, ids=[f"{r}-{c}{n}" for r, (c, n) in LAYOUTS])
def test_sharded_step_equals_single_batch(method, ranks, cut):
    """Loss and gradient of one optimizer step do not depend on how it is sharded, nor on how
    each rank cuts its share into micro-batches: by count, or by token budget, which reorders
    the rows and gives ranks different numbers of micro-batches.

    Each rank scales its loss by the world size because FSDP/ZeRO average gradients over
    ranks; summing micro-batch gradients on a rank is gradient accumulation.
    """
    weight, feats, old, adv, mask = _random_step()
    batch = feats.shape[0]
    full, _ = policy_loss(_logprobs(weight, feats), old, adv, mask, method, 0.2, 6)
    (full_grad,) = torch.autograd.grad(full, weight)

    rank_grads, total, layouts = [], 0.0, []
    for rank_rows in torch.arange(batch).chunk(ranks):
        if cut[0] == "count":
            layout = list(rank_rows.chunk(cut[1]))
        else:
            lengths = [int(n) for n in mask[rank_rows].sum(-1)]
            layout = [rank_rows[idx] for idx in pack_by_tokens(lengths, cut[1])]
        layouts.append([rows.tolist() for rows in layout])
        grad = torch.zeros_like(weight)
        for rows in layout:
            loss, _ = policy_loss(_logprobs(weight, feats[rows]), old[rows], adv[rows],
                                  mask[rows], method, 0.2, 6, num_responses=batch)
            total += loss.item()
            grad += torch.autograd.grad(loss * ranks, weight)[0]
        rank_grads.append(grad)
    averaged = torch.stack(rank_grads).mean(0)  # what all-reduce(AVG) leaves on every rank

    if cut[0] == "tokens":  # the premise: the token layout is not a contiguous cut
        assert [r for rank in layouts for mb in rank for r in mb] != list(range(batch))
    assert total == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(averaged, full_grad, rtol=1e-6, atol=1e-7)


def test_per_microbatch_mean_would_be_wrong():
    """The trap other ports fell into: averaging each micro-batch on its own (here GRPO-style
    token means per micro-batch) changes the loss with the micro-batch size."""
    weight, feats, old, adv, mask = _random_step()
    lp = _logprobs(weight, feats).detach()
    full, _ = policy_loss(lp, old, adv, mask, "dr_grpo", 0.2, 6)
    token_mean = sum(((-(lp[r] - old[r]).exp() * adv[r, None]) * mask[r]).sum() / mask[r].sum()
                     for r in torch.arange(8).chunk(2)) / 2
    assert abs(token_mean.item() - full.item()) > 1e-3


# --- log-probabilities -----------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_from_logits_equal_naive(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 257, generator=g)
    ids = torch.randint(0, 257, (3, 11), generator=g)
    chunked = token_logprobs(logits, ids, temperature=temperature, chunk_size=4)
    torch.testing.assert_close(chunked, naive_token_logprobs(logits, ids, temperature))


def test_chunked_logprobs_from_model_equal_naive_with_gradients(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)

    chunked = token_logprobs(model, ids, attn, chunk_size=5)
    chunked.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    naive = naive_token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
    naive.sum().backward()
    torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-5)
    for a, p in zip(grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_logprobs_at_some_positions_run_only_those_through_the_head(tiny_model_path):
    """`positions` (a response mask) gives the same log-probs and gradients there as the full
    computation, 0 elsewhere, and only those rows reach the output head: a prompt's positions
    cost the head nothing."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (3, 10), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 7:] = 0  # right padding, as collate makes it
    positions = torch.zeros(3, 9)
    positions[0, 4:] = positions[1, 6:] = positions[2, 3:6] = 1
    rows = []
    model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))

    some = token_logprobs(model, ids, attn, temperature=0.7, chunk_size=4, positions=positions)
    assert sum(rows) == int(positions.sum()) == 11  # (the backward pass recomputes them)
    (some * positions).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert bool((some[positions == 0] == 0).all())

    full = token_logprobs(model, ids, attn, temperature=0.7, chunk_size=4)
    (full * positions).sum().backward()
    torch.testing.assert_close(some[positions == 1], full[positions == 1])
    for a, p in zip(grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
