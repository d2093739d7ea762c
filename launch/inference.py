"""Generators and a reward pool without learners: what evaluating a checkpoint needs.

`InferenceCluster` places vLLM generators and reward workers exactly as `launch.cluster.Cluster`
does for training, and borrows its `generate` and `score` verbs unchanged, so evaluation from
the command line samples and grades with the very code periodic evaluation during training uses.
Leaving the learners out saves their GPUs and memory (a 7B learner holds weights, gradients and
optimizer state) and the weight-sync group nothing would use.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import remove_placement_group

from actors.failures import gather
from actors.fault_log import FaultLog
from actors.placement import end_process_tree
from actors.reward_pool import RewardPool
from launch.cluster import CPU_SHARE, Cluster, create_generators, reserve


class InferenceCluster:
    generate = Cluster.generate  # the training cluster's verbs, shared, not copied
    submit = Cluster.submit
    score = Cluster.score
    generator_names = Cluster.generator_names
    # and its recovery: a generator that dies or hangs is replaced on its bundle
    replace = Cluster.replace
    replace_generator = Cluster.replace_generator

    def __init__(self, model_path: str, *, dtype: str, device: str, num_generators: int = 1,
                 num_reward_workers: int = 2, max_model_len: int = 4096, seed: int = 0,
                 gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False,
                 placement_timeout_s: float = 600.0, generate_timeout_s: float = 1800.0,
                 max_actor_restarts: int = 3):
        gpu = device == "cuda"
        bundle = {"GPU": 1, "CPU": 1} if gpu else {"CPU": CPU_SHARE}
        self.placement_timeout_s, self.generate_timeout_s = placement_timeout_s, generate_timeout_s
        self.faults = FaultLog(max_actor_restarts)
        self.generator_pg = reserve({"generators": ([bundle] * num_generators, {})},
                                    placement_timeout_s)["generators"]
        self._generator_args = dict(
            model_path=model_path, dtype=dtype, device=device, gpus=1 if gpu else 0,
            cpus=0 if gpu else CPU_SHARE, seed=seed, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code,
            cpu_share=num_generators)
        self.weights_version = 0  # the model it was given, never updated
        self.generators = create_generators(self.generator_pg, num_generators,
                                            **self._generator_args)
        self.rewards = RewardPool(num_reward_workers, options={"num_cpus": 0},
                                  faults=self.faults)
        self.actors = dict(zip(self.generator_names, gather(
            [g.ready.remote() for g in self.generators], self.generator_names,
            placement_timeout_s)))

    def resend_weights(self) -> None:
        """Nothing to send: a replaced generator loads the same model from its path."""

    def shutdown(self) -> None:
        for actor in self.generators + self.rewards.workers:
            ray.kill(actor)
        for name in self.generator_names:  # their vLLM engines outlive them otherwise
            record = self.actors.get(name, {})
            end_process_tree(record.get("node"), record.get("processes", []))
        remove_placement_group(self.generator_pg)
