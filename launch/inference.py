"""Generators and a reward pool without learners: what evaluating a checkpoint needs.

`InferenceCluster` places vLLM generators and reward workers exactly as `launch.cluster.Cluster`
does for training, and borrows its `generate` and `score` verbs unchanged, so evaluation from
the command line samples and grades with the very code periodic evaluation during training uses.
Leaving the learners out saves their GPUs and memory (a 7B learner holds weights, gradients and
optimizer state) and the weight-sync group nothing would use.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from actors.generator import Generator
from actors.reward_pool import RewardPool
from launch.cluster import CPU_SHARE, Cluster, _on


class InferenceCluster:
    generate = Cluster.generate  # the training cluster's verbs, shared, not copied
    score = Cluster.score

    def __init__(self, model_path: str, *, dtype: str, device: str, num_generators: int = 1,
                 num_reward_workers: int = 2, max_model_len: int = 4096, seed: int = 0,
                 gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False):
        gpu = device == "cuda"
        bundle = {"GPU": 1, "CPU": 1} if gpu else {"CPU": CPU_SHARE}
        self.generator_pg = placement_group([bundle] * num_generators, strategy="PACK")
        ray.get(self.generator_pg.ready())
        self.generators = [
            Generator.options(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else CPU_SHARE,
                              **_on(self.generator_pg, i))
            .remote(model_path, dtype, seed=seed + i, max_model_len=max_model_len,
                    device=device, gpu_memory_utilization=gpu_memory_utilization,
                    trust_remote_code=trust_remote_code)
            for i in range(num_generators)
        ]
        self.rewards = RewardPool(num_reward_workers, options={"num_cpus": 0})
        ray.get([g.ready.remote() for g in self.generators])

    def shutdown(self) -> None:
        for actor in self.generators + self.rewards.workers:
            ray.kill(actor)
        remove_placement_group(self.generator_pg)
