"""The distributed runtime for real: Ray actors, vLLM-CPU, gloo, FSDP2 and DeepSpeed learners."""

import random

import pytest

ray = pytest.importorskip("ray")

from actors.shared_memory import SHM_DIR  # noqa: E402
from drgrpo.batching import Sample, plan_steps  # noqa: E402
from drgrpo.config_load import load_config  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_config(model, tmp_path, **overrides):
    flat = {"model.path": str(model), "model.dtype": "float32", "data.train_path": "unused",
            "rollout.prompts_per_step": 2, "rollout.samples_per_prompt": 4,
            "rollout.max_new_tokens": 16, "learner.lr": 1e-2, "learner.train_batch_size": 8,
            "learner.micro_batch_size": 2, "learner.gradient_checkpointing": False,
            "cluster.device": "cpu", "trainer.output_dir": str(tmp_path), **overrides}
    return load_config(None, [f"--{k}={v}" for k, v in flat.items()])


def random_samples(n=8, vocab=300, seed=0):
    rng = random.Random(seed)
    return [Sample([rng.randrange(vocab) for _ in range(rng.randint(3, 6))],
                   [rng.randrange(vocab) for _ in range(rng.randint(1, 8))],
                   rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0])) for _ in range(n)]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-embeddings"])
def test_weight_sync_makes_generator_match_learner(ray_local, request, tmp_path, tied):
    """After a sync the generator computes the learner's log-probs. With tied embeddings vLLM
    reloads the shared weight through the embedding only, and on CPUs its `lm_head` kept
    computing logits from the weights it started with (actors.weight_transfer.refresh_tied_layers)."""
    from launch.cluster import Cluster

    model = request.getfixturevalue("tied_model_path" if tied else "tiny_model_path")
    cfg = tiny_config(model, tmp_path, **{"cluster.num_generators": 1,
                                           "cluster.num_learners": 1,
                                           "cluster.num_reward_workers": 1})
    cluster = Cluster(cfg, "cpu", max_model_len=256)
    try:
        generator, learner = cluster.generators[0], cluster.learners[0]
        ids = [5, 17, 33, 100, 200, 7, 9, 44, 250, 3]
        before = ray.get(generator.prompt_logprobs.remote(ids))
        learner_before = ray.get(learner.sequence_logprobs.remote(ids))
        assert before == pytest.approx(learner_before, abs=1e-4)

        stats = cluster.train(plan_steps(random_samples(), 8, 1, seed=0))
        assert stats["grad_norm"] > 0
        stale = ray.get(generator.prompt_logprobs.remote(ids))
        assert stale == pytest.approx(before, abs=1e-6)  # nothing changes before a sync

        # A pass without gradients right before a sync (FSDP2 leaves its root unsharded).
        learner_trained = ray.get(learner.sequence_logprobs.remote(ids))
        sync = cluster.sync_weights(version=1)
        # Through vLLM's weight-transfer API, which versions each update it finishes.
        assert ray.get(generator.weight_version.remote()) == "1"
        after = ray.get(generator.prompt_logprobs.remote(ids))
        learner_after = ray.get(learner.sequence_logprobs.remote(ids))
        assert after == pytest.approx(learner_after, abs=1e-4)
        assert learner_trained == learner_after
        assert max(abs(a - b) for a, b in zip(after, before)) > 1e-2
        assert sync["bytes"] > 0
        # One machine: the weights went through shared memory, not a socket, and its
        # file's name was removed as soon as the generator had mapped it.
        assert sync["socket_bytes"] == 0
        assert not list(SHM_DIR.glob("drgrpo-weights-*"))
    finally:
        cluster.shutdown()


def test_every_prompt_draws_its_own_samples(ray_local, tiny_model_path, tmp_path):
    """One seed per step would give sample j of every prompt the same random numbers, so two
    copies of a question would get identical groups. Each prompt gets its own seed instead,
    derived from the step's seed and its position, whichever generator samples it."""
    from actors.generator import Sampling
    from drgrpo.seeds import request_seeds
    from launch.cluster import Cluster

    cfg = tiny_config(tiny_model_path, tmp_path, **{"cluster.num_generators": 2,
                                                     "cluster.num_learners": 1,
                                                     "cluster.num_reward_workers": 1})
    cluster = Cluster(cfg, "cpu", max_model_len=256)
    try:
        sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=1234)
        prompts = ["What is 2 + 3?"] * 4  # generator 0 samples two copies, generator 1 two
        groups = [[c.response_ids for c in g] for g in cluster.generate(prompts, 3, sampling)]
        assert len({tuple(map(tuple, g)) for g in groups}) == 4, groups
        again = [[c.response_ids for c in g] for g in cluster.generate(prompts, 3, sampling)]
        assert again == groups  # reproducible
        alone = ray.get(cluster.generators[1].generate.remote(
            prompts, 3, sampling, request_seeds(sampling.seed, len(prompts))))
        assert [[c.response_ids for c in g] for g in alone.groups] == groups  # placement-free
    finally:
        cluster.shutdown()


def _train_once(cfg, samples):
    from ray.util.placement_group import placement_group, remove_placement_group

    from launch.cluster import create_learners

    n = cfg.cluster.num_learners
    pg = placement_group([{"CPU": 0.25}] * n)
    ray.get(pg.ready())
    learners = create_learners(cfg, "cpu", pg, 0, 0.25)
    try:
        plan = plan_steps(samples, cfg.learner.train_batch_size, n, seed=0)
        stats = ray.get([l.train.remote(p) for l, p in zip(learners, plan)])
        return stats, ray.get([l.full_state.remote() for l in learners])[0]
    finally:
        for l in learners:
            ray.kill(l)
        remove_placement_group(pg)


# The method changes the loss, not how a backend averages its gradients over ranks, so both
# methods run on FSDP and only dr_grpo on each ZeRO stage (each case costs two learner starts).
@pytest.mark.parametrize("strategy,stage,method", [
    ("fsdp", 2, "dr_grpo"), ("fsdp", 2, "grpo"),
    ("deepspeed", 2, "dr_grpo"), ("deepspeed", 3, "dr_grpo"),
], ids=["fsdp-dr_grpo", "fsdp-grpo", "zero2-dr_grpo", "zero3-dr_grpo"])
def test_one_learner_equals_two_learners(ray_local, tiny_model_path, tmp_path, strategy, stage,
                                         method):
    """Same rollout, 1 vs 2 learners (2 optimizer steps, 2 micro-batches per learner): same
    loss, same gradient norm, same updated weights, on FSDP and on DeepSpeed ZeRO-2 (the
    paper configs' backend) and ZeRO-3.

    Adam's update is invariant to a uniform gradient scale, so the weights alone could not
    reveal a missing world-size factor; the loss and the pre-clip gradient norm do.
    """
    samples = random_samples(n=16)
    common = {"algorithm.method": method, "learner.train_batch_size": 8,
              "learner.grad_clip": 1e6, "learner.strategy": strategy,
              "learner.zero_stage": stage}
    (one_stats,), one = _train_once(tiny_config(tiny_model_path, tmp_path, **common,
                                                **{"cluster.num_learners": 1}), samples)
    two_stats, two = _train_once(tiny_config(tiny_model_path, tmp_path, **common,
                                             **{"cluster.num_learners": 2}), samples)
    assert one_stats["loss"] == pytest.approx(sum(s["loss"] for s in two_stats), rel=1e-5)
    assert one_stats["grad_norm"] == pytest.approx(two_stats[0]["grad_norm"], rel=1e-5)
    assert one_stats["grad_norm"] > 0

    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    for name in one:
        update_one, update_two = one[name] - initial[name], two[name] - initial[name]
        assert update_one.norm() > 0, name
        # Relative, because Adam's first step is ~lr * sign(g): an element whose gradient is
        # rounding noise may move either way; a real weighting bug moves whole tensors.
        assert (update_one - update_two).norm() / update_one.norm() < 1e-3, name


def test_one_learner_equals_two_learners_under_token_budget(ray_local, tiny_model_path,
                                                            tmp_path):
    """The same equality with micro-batches packed under a token budget, which makes every
    layout differ: one learner and two group different rows, and the two ranks run different
    numbers of passes, in training and in the old-log-prob pass of the second optimizer step
    (so the None passes that keep their collectives aligned are exercised); zero-advantage
    responses are skipped first. Each learner reports the padding of the passes it ran."""
    from drgrpo.batching import micro_batches, padded_positions

    samples, budget = random_samples(n=16), 16
    common = {"algorithm.method": "grpo", "learner.train_batch_size": 8,
              "learner.grad_clip": 1e6, "learner.max_tokens_per_micro_batch": budget}

    def passes(learners):  # [rank][step] micro-batches of the active (non-zero) responses
        plan = plan_steps(samples, 8, learners, seed=0)
        active = [[[s for s in step if s.advantage != 0] for step in rank] for rank in plan]
        return [[[[step[i] for i in mb] for mb in micro_batches(step, 2, budget)]
                 for step in rank] for rank in active]

    def groups(layout):
        return {frozenset(map(id, mb)) for rank in layout for step in rank for mb in step}

    two_layout = passes(2)
    # The premise: the ranks' pass counts differ in the second step (trained, and whose old
    # log-probs are computed up front), and one learner groups other rows than the two do.
    assert len(two_layout[0][1]) != len(two_layout[1][1])
    assert groups(passes(1)) != groups(two_layout)

    (one_stats,), one = _train_once(tiny_config(tiny_model_path, tmp_path, **common,
                                                **{"cluster.num_learners": 1}), samples)
    two_stats, two = _train_once(tiny_config(tiny_model_path, tmp_path, **common,
                                             **{"cluster.num_learners": 2}), samples)
    assert one_stats["loss"] == pytest.approx(sum(s["loss"] for s in two_stats), rel=1e-5)
    assert one_stats["grad_norm"] == pytest.approx(two_stats[0]["grad_norm"], rel=1e-5)
    assert one_stats["grad_norm"] > 0
    for stats, layout in zip(two_stats, two_layout):
        ran = [padded_positions(mb) for step in layout for mb in step]
        assert (stats["padded_positions"], stats["positions"]) == (
            sum(p for p, _ in ran), sum(t for _, t in ran))

    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    for name in one:
        update_one, update_two = one[name] - initial[name], two[name] - initial[name]
        assert update_one.norm() > 0, name
        assert (update_one - update_two).norm() / update_one.norm() < 1e-3, name
