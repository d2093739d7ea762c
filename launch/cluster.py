"""The actors of one run, placed on Ray placement groups, and the verbs the driver uses.

Placement: on GPUs each learner gets one GPU and each generator `generator_tp` GPUs (bundles
packed per role); with `colocate` (GPU only) generator i shares learner i's GPU and sleeps
(vLLM sleep mode, weights offloaded and KV cache freed) while the learners train. On CPUs the
bundles hold fractional CPUs so a laptop fits the whole system.
"""

from __future__ import annotations

import socket
import time

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.generator import Completion, Generator, Sampling
from actors.learner import Learner
from actors.reward_pool import RewardPool
from drgrpo.batching import Sample
from drgrpo.config import Config

CPU_SHARE = 0.25  # per actor on a CPU machine: 2 cores hold 2 generators, 2 learners, 2 graders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@ray.remote(num_cpus=0)
def _address_and_port() -> tuple[str, int]:
    return ray.util.get_node_ip_address(), _free_port()


def _on(pg, bundle: int) -> dict:
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=bundle)}


def create_learners(cfg: Config, device: str, pg, gpus: float, cpus: float) -> list:
    """One learner per bundle of `pg`, joined into one torch.distributed group."""
    addr, port = ray.get(_address_and_port.options(**_on(pg, 0)).remote())
    n = cfg.cluster.num_learners
    return [Learner.options(num_gpus=gpus, num_cpus=cpus, **_on(pg, r))
            .remote(cfg, r, n, addr, port, device) for r in range(n)]


class Cluster:
    def __init__(self, cfg: Config, device: str, model_path: str | None = None,
                 max_model_len: int = 4096):
        c = cfg.cluster
        self.cfg, self.device = cfg, device
        model_path = model_path or cfg.model.path
        gpu = device == "cuda"
        if gpu:
            learner_bundle, gen_bundle = {"GPU": 1, "CPU": 1}, {"GPU": c.generator_tp, "CPU": 1}
        else:
            learner_bundle = gen_bundle = {"CPU": CPU_SHARE}
        if c.colocate:
            # One GPU per learner; generator i runs on learner i's GPU (half of it each).
            self.learner_pg = placement_group([learner_bundle] * c.num_learners, strategy="PACK")
            self.generator_pg, learner_gpus, gen_gpus = self.learner_pg, 0.5, 0.5
        else:
            self.learner_pg = placement_group([learner_bundle] * c.num_learners, strategy="PACK")
            self.generator_pg = placement_group([gen_bundle] * c.num_generators, strategy="PACK")
            learner_gpus, gen_gpus = (1, c.generator_tp) if gpu else (0, 0)
        ray.get([self.learner_pg.ready(), self.generator_pg.ready()])
        cpus = 0 if gpu else CPU_SHARE

        self.learners = create_learners(cfg, device, self.learner_pg, learner_gpus, cpus)
        self.generators = [
            Generator.options(num_gpus=gen_gpus, num_cpus=cpus, **_on(self.generator_pg, i))
            .remote(model_path, cfg.model.dtype, tp=c.generator_tp, seed=cfg.trainer.seed + i,
                    max_model_len=max_model_len, device=device,
                    gpu_memory_utilization=c.gpu_memory_utilization, sleep_mode=c.colocate,
                    trust_remote_code=cfg.model.trust_remote_code)
            for i in range(c.num_generators)
        ]
        self.rewards = RewardPool(c.num_reward_workers, options={"num_cpus": 0})
        ray.get([a.ready.remote() for a in self.learners + self.generators])
        self._init_weight_sync()

    def _init_weight_sync(self) -> None:
        tp = self.cfg.cluster.generator_tp
        world = 1 + len(self.generators) * tp
        addr, port = ray.get(_address_and_port.options(**_on(self.learner_pg, 0)).remote())
        manifest = ray.get(self.learners[0].weight_manifest.remote())
        ray.get([l.init_weight_sync.remote(addr, port, world, self._sync_backend)
                 for l in self.learners] + [
            g.init_weight_sync.remote(addr, port, 1 + i * tp, world, self._sync_backend, manifest)
            for i, g in enumerate(self.generators)])

    @property
    def _sync_backend(self) -> str:
        # Colocated: NCCL cannot hold two ranks on one GPU (see actors/weight_sync.py).
        return "nccl" if self.device == "cuda" and not self.cfg.cluster.colocate else "gloo"

    # --- the verbs of the training loop ---------------------------------------------------------

    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[Completion]]:
        """Split prompts evenly across generators; result[i] holds prompt i's n samples."""
        k = len(self.generators)
        size = -(-len(prompts) // k)
        refs = [g.generate.remote(prompts[i * size:(i + 1) * size], n, sampling)
                for i, g in enumerate(self.generators) if prompts[i * size:(i + 1) * size]]
        return [group for part in ray.get(refs) for group in part]

    def score(self, responses: list[str], answers: list, template: str, truncated: list[bool]):
        return self.rewards.score(responses, answers, template, truncated)

    def train(self, plan: list[list[list[Sample]]]) -> dict:
        """plan[rank][step]: each learner's share of each optimizer step (drgrpo.batching)."""
        if self.cfg.cluster.colocate:
            ray.get([g.sleep.remote() for g in self.generators])
        results = ray.get([l.train.remote(p) for l, p in zip(self.learners, plan)])
        if self.cfg.cluster.colocate:
            ray.get([g.wake_up.remote() for g in self.generators])
        tokens = sum(r["tokens"] for r in results)
        return {
            "loss": sum(r["loss"] for r in results) / max(results[0]["optimizer_steps"], 1),
            "grad_norm": results[0]["grad_norm"],
            "clip_fraction": sum(r["clipped_tokens"] for r in results) / max(tokens, 1.0),
            "kl": sum(r["kl"] for r in results) / max(tokens, 1.0),
        }

    def sync_weights(self) -> dict:
        start = time.perf_counter()
        results = ray.get([l.send_weights.remote() for l in self.learners]
                          + [g.receive_weights.remote() for g in self.generators])
        return {"seconds": time.perf_counter() - start, "bytes": results[0]["bytes"]}

    def save(self, folder: str) -> None:
        ray.get([l.save.remote(folder) for l in self.learners])

    def load_optimizer(self, folder: str) -> None:
        ray.get([l.load_optimizer.remote(folder) for l in self.learners])

    def shutdown(self) -> None:
        for actor in self.learners + self.generators + self.rewards.workers:
            ray.kill(actor)
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.learner_pg)
        if self.generator_pg is not self.learner_pg:  # colocated runs share one
            remove_placement_group(self.generator_pg)
