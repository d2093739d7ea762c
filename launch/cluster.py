"""The actors of one run, placed on Ray placement groups, and the verbs the driver uses.

Placement: on GPUs each learner gets one GPU and each generator `generator_tp` GPUs (bundles
packed per role, optionally restricted to nodes by Ray node labels); with `colocate` generator
i shares learner i's bundle and, on GPUs, sleeps (vLLM sleep mode, weights offloaded and KV
cache freed) while the learners train. On CPUs the bundles hold fractional CPUs so a laptop
fits the whole system.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.failures import RunError, actor_failure, gather, restartable, settle
from actors.fault_log import FaultLog
from actors.generator import Completion, Generated, Generator, Sampling
from actors.learner import Learner
from actors.placement import end_process_tree
from actors.reward_pool import RewardPool
from actors.weight_sync import engine_for
from drgrpo.batching import Sample
from drgrpo.config import Config
from drgrpo.metrics import logprob_agreement
from drgrpo.seeds import request_seeds
from launch import recovery

CPU_SHARE = 0.25  # per actor on a CPU machine: 2 cores hold 2 generators, 2 learners, 2 graders
NOTICE_AFTER_S = 10.0  # say what the run waits for when placing it takes longer than this
# The waits of a weight sync, shortest first: learner rank 0 waits cluster.sync_timeout_s for
# the generators' calls and names those that did not answer; the group's collectives fail
# this much later, so NCCL's watchdog (which ends the whole process of a member whose
# collective timed out) never takes learner 0 down before the generator to blame is named,
# and learner 0 aborts the group before that; the driver waits for the learners this much
# later again. (NCCL's timeout does not fire at all when a member never joins: measured on an
# H200. The first two waits are the ones that hold.)
SYNC_MARGIN_S = 30.0


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


def reserve(groups: dict[str, tuple[list[dict], dict[str, str]]], timeout_s: float) -> dict:
    """One placement group per role ({role: (bundles, node label selector)}), or a one-line
    `RunError` saying what was asked and what the cluster has, instead of waiting forever.
    (An autoscaling cluster may need minutes to add nodes: hence a wait, not a refusal.)"""
    pgs = {role: placement_group(bundles, strategy="PACK",
                                 bundle_label_selector=[labels] * len(bundles) if labels else None)
           for role, (bundles, labels) in groups.items()}
    asked = "; ".join(f"{len(bundles)} {role} x {_resources(bundles[0])}"
                      + (f" on nodes labelled {labels}" if labels else "")
                      for role, (bundles, labels) in groups.items())
    refs, start = [pg.ready() for pg in pgs.values()], time.monotonic()
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=min(NOTICE_AFTER_S, timeout_s))
    if len(ready) < len(refs) and timeout_s > NOTICE_AFTER_S:
        print(f"waiting for the Ray cluster to place {asked}; it has "
              f"{_resources(ray.cluster_resources())} (cluster.placement_timeout_s "
              f"{timeout_s:g})", file=sys.stderr, flush=True)
        ready, _ = ray.wait(refs, num_returns=len(refs),
                            timeout=timeout_s - (time.monotonic() - start))
    if len(ready) < len(refs):
        for pg in pgs.values():
            remove_placement_group(pg)
        raise RunError(f"cluster: the Ray cluster cannot place {asked} (waited {timeout_s:g} s, "
                       f"cluster.placement_timeout_s); it has {_resources(ray.cluster_resources())}")
    return pgs


def _resources(resources: dict) -> str:
    shown = {k: v for k, v in sorted(resources.items()) if k in ("CPU", "GPU")}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shown.items()) + "}"


def create_learners(cfg: Config, device: str, pg, gpus: float, cpus: float) -> list:
    """One learner per bundle of `pg`, joined into one torch.distributed group."""
    addr, port = ray.get(_address_and_port.options(**_on(pg, 0)).remote())
    n = cfg.cluster.num_learners
    return [Learner.options(num_gpus=gpus, num_cpus=cpus, **_on(pg, r))
            .remote(cfg, r, n, addr, port, device) for r in range(n)]


def create_generators(pg, n: int, model_path: str, *, cpu_share: int | None = None,
                      **kwargs) -> list:
    """Generator i on bundle i of `pg`, each engine seeded apart (seed + i); `kwargs` are
    `create_generator`'s and the actor's (`version`: the weight update `model_path` holds).
    On a CPU without `cpu_cores`, the engines split the machine's cores among `cpu_share`
    processes computing at once (default: the n engines)."""
    return [create_generator(pg, i, model_path, cpu_share=cpu_share or n, **kwargs)
            for i in range(n)]


def create_generator(pg, i: int, model_path: str, *, dtype: str, gpus: float, cpus: float,
                     seed: int, **kwargs):
    """Generator i of `create_generators` alone: also how a failed one is replaced."""
    return Generator.options(num_gpus=gpus, num_cpus=cpus, **_on(pg, i)).remote(
        model_path, dtype, seed=seed + i, **kwargs)


@dataclass
class Part:
    """One generator's share of a generate call: enough to ask for it again, the same way."""
    index: int  # of the generator
    prompts: list[str]
    n: int
    sampling: Sampling
    seeds: list[int] | None
    actor: object = None
    ref: object = None

    def send(self, actor) -> None:
        self.actor, self.ref = actor, actor.generate.remote(self.prompts, self.n, self.sampling,
                                                            self.seeds)


@dataclass
class PendingGeneration:
    """Generate calls in flight, one per generator; `result()` waits for all of them. A part
    whose generator died or did not answer within `timeout_s` is sampled again, with its own
    seeds, by the generator `cluster` replaces it with; a generator that raised is an
    `ActorFailure` naming it."""
    parts: list[Part]
    cluster: object
    timeout_s: float | None = None

    def result(self) -> Generated:
        names = [f"generator {p.index}" for p in self.parts]
        while True:
            outcomes = settle([p.ref for p in self.parts], self.timeout_s)
            lost = [(p, o) for p, o in zip(self.parts, outcomes) if o.failure]
            if not lost:
                break
            for part, outcome in lost:
                if not restartable(outcome):
                    raise actor_failure(outcomes, names, self.parts.index(part))
                reason = outcome.reason + (" (cluster.generate_timeout_s)"
                                           if outcome.failure == "late" else "")
                self.cluster.replace_generator(part.index, part.actor, reason,
                                               f", {len(part.prompts)} prompts re-run")
                part.send(self.cluster.generators[part.index])
        parts = [o.value for o in outcomes]
        return Generated([group for part in parts for group in part.groups],
                         min(p.started for p in parts), max(p.finished for p in parts),
                         sum(p.wait_s for p in parts) / len(parts))


class Cluster:
    def __init__(self, cfg: Config, device: str, model_path: str | None = None,
                 max_model_len: int = 4096, weights_version: int = 0,
                 faults: FaultLog | None = None):
        c = cfg.cluster
        self.cfg, self.device = cfg, device
        self.placement_timeout_s, self.generate_timeout_s = (c.placement_timeout_s,
                                                             c.generate_timeout_s)
        # Restarts of generators and reward workers (actors/fault_log.py); a run passes its own,
        # so that counts outlive this cluster.
        self.faults = faults or FaultLog(c.max_actor_restarts)
        self.weights_version = weights_version  # the update the generators hold
        self.kv_cache_asleep = False  # colocated: woken after the next sync (see `train`)
        self.sync_group_stale = False  # a generator was replaced since the group was built
        self.sync_transport = ""  # how the weights travel (the learners' engine says)
        gpu = device == "cuda"
        if gpu:
            learner_bundle, gen_bundle = {"GPU": 1, "CPU": 1}, {"GPU": c.generator_tp, "CPU": 1}
        else:
            learner_bundle = gen_bundle = {"CPU": CPU_SHARE}
        groups = {"learners": ([learner_bundle] * c.num_learners, c.learner_labels)}
        if not c.colocate:
            groups["generators"] = ([gen_bundle] * c.num_generators, c.generator_labels)
        pgs = reserve(groups, c.placement_timeout_s)
        # Colocated: generator i runs on learner i's bundle (half of its GPU each).
        self.learner_pg = pgs["learners"]
        self.generator_pg = pgs.get("generators", self.learner_pg)
        # Colocated, generator i and learner i split bundle i between them.
        share = 0.5 if c.colocate else 1.0
        learner_gpus, gen_gpus = (share, share * c.generator_tp) if gpu else (0, 0)
        cpus = 0 if gpu else CPU_SHARE * share

        self._generator_args = dict(
            model_path=model_path or cfg.model.path, dtype=cfg.model.rollout_dtype,
            device=device, gpus=gen_gpus, cpus=cpus, tp=c.generator_tp, seed=cfg.trainer.seed,
            max_model_len=max_model_len, gpu_memory_utilization=c.gpu_memory_utilization,
            sleep_mode=c.colocate and gpu, trust_remote_code=cfg.model.trust_remote_code,
            cpu_cores=c.generator_cores, weight_transfer=engine_for(device, c.colocate),
            # Synchronous, engines sample while the learners wait; asynchronous, both at once.
            cpu_share=c.num_generators + (c.num_learners if cfg.rollout.max_staleness else 0))
        self.generators = create_generators(self.generator_pg, c.num_generators,
                                            version=weights_version, **self._generator_args)
        names = [f"generator {i}" for i in range(c.num_generators)]
        info = {}
        if c.colocate:
            # vLLM sizes its KV cache from the GPU memory it sees free while it profiles: the
            # learners sharing those GPUs load their weights only after every engine is up.
            info.update(zip(names, gather([g.ready.remote() for g in self.generators], names,
                                          c.placement_timeout_s)))
        self.learners = create_learners(cfg, device, self.learner_pg, learner_gpus, cpus)
        self.rewards = RewardPool(c.num_reward_workers, c.reward_timeout_s, options={"num_cpus": 0},
                                  faults=self.faults)
        pending = [(f"learner {r}", l) for r, l in enumerate(self.learners)]
        if not c.colocate:
            pending += list(zip(names, self.generators))
        info.update(zip([n for n, _ in pending],
                        gather([a.ready.remote() for _, a in pending], [n for n, _ in pending],
                               c.placement_timeout_s)))
        self.actors = info  # name -> {"node", "pid", "started", "ready"}: summary.json shows it
        self.sync_group_stale = True
        self._open_sync_group()

    def _open_sync_group(self) -> None:
        """Every member opens a new weight-sync group (on a new port) when a generator was
        replaced since the last one was built (again if one fails meanwhile)."""
        while self.sync_group_stale:
            self.sync_group_stale = False  # a restart in _init_weight_sync sets it again
            self._init_weight_sync()

    def _init_weight_sync(self) -> None:
        tp = self.cfg.cluster.generator_tp
        world = 1 + len(self.generators) * tp
        addr, port = ray.get(_address_and_port.options(**_on(self.learner_pg, 0)).remote())
        timeout = self.cfg.cluster.sync_timeout_s
        nodes = {self.actors[f"generator {i}"]["node"] for i in range(len(self.generators))}
        same_machine = nodes == {self.actors["learner 0"]["node"]}
        joined = self._on_learners(lambda l: l.init_weight_sync.remote(
            self.generators, tp, addr, port, world, timeout + SYNC_MARGIN_S, timeout,
            same_machine))
        if joined is not None:
            self.sync_transport = joined[0]

    def _on_learners(self, call) -> list | None:
        """A weight-sync call on every learner (rank 0 drives the generators' part), waited
        for within cluster.sync_timeout_s and margins: the answers, or None when generators
        failed in it and were restarted (the caller redoes it). A failed learner, or a
        generator that raised, is an `ActorFailure`."""
        refs = [call(l) for l in self.learners]
        outcomes = settle(refs, self.cfg.cluster.sync_timeout_s + 2 * SYNC_MARGIN_S)
        restart = recovery.sync_culprits(outcomes, self.learner_names, len(self.generators))
        for i in restart:
            outcome = next(o for o in outcomes if o.cause is not None).cause.outcomes[i]
            reason = outcome.reason + (" in a weight sync (cluster.sync_timeout_s)"
                                       if outcome.failure == "late" else "")
            recovery.restart_generator(self, i, reason, ", weight sync redone",
                                       send_weights=False)
        return None if restart else [o.value for o in outcomes]

    # --- the verbs of recovery (launch/recovery.py) --------------------------------------------

    def replace(self, i: int) -> None:
        """Generator i again, on its own bundle: what is left of it killed, its vLLM engine
        included, and a new one started from the weights last sent. Every member of the
        weight sync then opens a new group before the next sync (a torch.distributed group
        cannot take a new member)."""
        name = f"generator {i}"
        ray.kill(self.generators[i])
        lost = self.actors.get(name, {})
        end_process_tree(lost.get("node"), lost.get("processes", []))
        self.generators[i] = create_generator(self.generator_pg, i, version=self.weights_version,
                                              **self._generator_args)
        self.actors[name] = gather([self.generators[i].ready.remote()], [name],
                                   self.placement_timeout_s)[0]
        self.sync_group_stale = True

    def resend_weights(self) -> None:
        """The weights last sent, again (to a generator just replaced)."""
        self.sync_weights(self.weights_version)

    def replace_generator(self, i: int, actor, reason: str, then: str) -> None:
        """Restart generator i, which `actor` was, unless it was already replaced (several
        calls in flight on it fail together)."""
        if self.generators[i] is actor:
            recovery.restart_generator(self, i, reason, then)

    @property
    def learner_names(self) -> list[str]:
        return [f"learner {r}" for r in range(len(self.learners))]

    @property
    def generator_names(self) -> list[str]:
        return [f"generator {i}" for i in range(len(self.generators))]

    def _names(self) -> list[str]:
        return self.learner_names + self.generator_names

    @property
    def _sleeps(self) -> bool:
        return self.cfg.cluster.colocate and self.device == "cuda"

    # --- the verbs of the training loop ---------------------------------------------------------

    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[Completion]]:
        """result[i] holds prompt i's n samples (see `submit`)."""
        return self.submit(prompts, n, sampling).result().groups

    def submit(self, prompts: list[str], n: int, sampling: Sampling) -> PendingGeneration:
        """Ask the generators for n samples of each prompt, split evenly across them, and
        return at once. Each generator runs its calls in order, so these are sampled with the
        weights of the last `sync_weights` asked for before this call.

        Prompt i is sampled with its own seed, derived from `sampling.seed` and i, so the
        samples do not depend on how the prompts are split across generators."""
        seeds = request_seeds(sampling.seed, len(prompts)) if sampling.seed is not None else None
        k = len(self.generators)
        size = -(-len(prompts) // k)
        parts = [Part(i, prompts[i * size:(i + 1) * size], n, sampling,
                      seeds[i * size:(i + 1) * size] if seeds else None)
                 for i in range(k) if prompts[i * size:]]
        for part in parts:
            part.send(self.generators[part.index])
        return PendingGeneration(parts, self, self.generate_timeout_s)

    def score(self, responses: list[str], answers: list, template: str, truncated: list[bool]):
        return self.rewards.score(responses, answers, template, truncated)

    def train(self, plan: list[list[list[Sample]]]) -> dict:
        """plan[rank][step]: each learner's share of each optimizer step (drgrpo.batching).
        Colocated on GPUs, the generators sleep meanwhile and wake their weights' memory
        after it; their KV cache wakes only once the sync has refilled the weights."""
        if self._sleeps:
            gather([g.sleep.remote() for g in self.generators], self.generator_names,
                   self.cfg.cluster.sync_timeout_s)
        results = gather([l.train.remote(p) for l, p in zip(self.learners, plan)],
                         self.learner_names)
        if self._sleeps:
            gather([g.wake_up.remote(["weights"]) for g in self.generators],
                   self.generator_names, self.cfg.cluster.sync_timeout_s)
            self.kv_cache_asleep = True
        tokens = sum(r["tokens"] for r in results)
        return {
            "loss": sum(r["loss"] for r in results) / max(results[0]["optimizer_steps"], 1),
            "grad_norm": results[0]["grad_norm"],
            "clip_fraction": sum(r["clipped_tokens"] for r in results) / max(tokens, 1.0),
            "kl": sum(r["kl"] for r in results) / max(tokens, 1.0),
            # Truncated importance sampling (algorithm.tis_cap): the mean weight pi_old/mu
            # over trained tokens, and the share of tokens whose weight hit the cap.
            "tis/mean_weight": sum(r["tis_weight"] for r in results) / max(tokens, 1.0),
            "tis/clipped_fraction": sum(r["tis_clipped_tokens"] for r in results)
            / max(tokens, 1.0),
            # Share of the training passes' positions (prompt + response, every micro-batch of
            # every learner) that were right-padding: compute spent on nothing.
            "learner/padding_fraction": sum(r["padded_positions"] for r in results)
            / max(sum(r["positions"] for r in results), 1),
            # vLLM's log-probs of the sampled tokens against the learners' (drgrpo.metrics).
            **logprob_agreement(results),
        }

    def sync_weights(self, version: int) -> dict:
        """Learner rank 0 sends the weights of its `version`-th update to every generator
        (after whatever each generator is doing now; actors/weight_sync.py). Returns the
        bytes sent and where the time went: on learner 0 gathering shards (`gather_s`) and
        sending (`send_s`; `pack_s` apart, for `broadcast`); on the slowest generator
        receiving (`receive_s`, for `broadcast`), loading into vLLM (`load_s`: its layerwise
        reload, processing included) and resetting the prefix cache (`cache_reset_s`)."""
        while True:  # redone after a generator that failed in it is restarted
            self._open_sync_group()
            results = self._on_learners(lambda l: l.send_weights.remote(version))
            if results is not None:
                break
        self.weights_version = version
        if self.kv_cache_asleep:
            gather([g.wake_up.remote(["kv_cache"]) for g in self.generators],
                   self.generator_names, self.cfg.cluster.sync_timeout_s)
            self.kv_cache_asleep = False
        sender = results[0]
        return {k: v for k, v in sender.items() if k != "seconds"}

    def save(self, folder: str) -> None:
        gather([l.save.remote(folder) for l in self.learners], self.learner_names,
               self.cfg.cluster.save_timeout_s)

    def load_optimizer(self, folder: str) -> None:
        gather([l.load_optimizer.remote(folder) for l in self.learners], self.learner_names,
               self.cfg.cluster.save_timeout_s)

    def shutdown(self) -> None:
        for actor in self.learners + self.generators + self.rewards.workers:
            ray.kill(actor)
        for name in self.generator_names:  # their vLLM engines outlive them otherwise
            record = self.actors.get(name, {})
            end_process_tree(record.get("node"), record.get("processes", []))
        remove_placement_group(self.learner_pg)
        if self.generator_pg is not self.learner_pg:  # colocated runs share one
            remove_placement_group(self.generator_pg)
