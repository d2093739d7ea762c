"""Learner: one Ray actor per data-parallel rank, holding a shard of the policy.

All learners form one torch.distributed group (NCCL on GPUs, gloo on CPUs) and wrap the policy
with FSDP2 or DeepSpeed ZeRO (`drgrpo.backends`). `train` runs the Dr. GRPO update on this
rank's share of every optimizer step; rank 0 also streams weights to the generators.
"""

from __future__ import annotations

import copy
import datetime
import os
import time
from pathlib import Path

import ray
import torch
import torch.distributed as dist

from actors.placement import start_record
from actors.weight_sync import GeneratorClient, engine_for
from actors.weight_transfer import LearnerWeights, trainer_engine
from drgrpo.algorithm import policy_loss
from drgrpo.backends import Policy, load_policy
from drgrpo.batching import (
    Sample,
    collate,
    micro_batches,
    padded_positions,
    place_response_logprobs,
    response_logprobs,
)
from drgrpo.config import Config
from drgrpo.metrics import LogprobAgreement


class LearnerActor:
    def __init__(self, cfg: Config, rank: int, world_size: int, master_addr: str,
                 master_port: int, device: str):
        self.started_at = time.time()
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        if device == "cuda":
            torch.cuda.set_device(0)  # Ray exposes exactly this actor's GPU as device 0
            self.device = torch.device("cuda", 0)
        else:
            self.device = torch.device("cpu")
            cores = cfg.cluster.learner_cores
            if cores:  # the learners' own cores, apart from the generators' (CPU clusters)
                os.sched_setaffinity(0, cores)
            # Ray sets one thread for a fractional-CPU actor; learners train while the
            # generators idle, so they share the machine's (or their own) cores between them.
            torch.set_num_threads(max(1, (len(cores) or os.cpu_count() or 1) // world_size))
        # DeepSpeed reads these; torch.distributed gets them explicitly below.
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        dist.init_process_group(
            backend="nccl" if device == "cuda" else "gloo",
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30))
        torch.manual_seed(cfg.trainer.seed)

        self.backend = load_policy(cfg, self.device)
        self.reference = None
        if cfg.algorithm.kl_coef > 0:  # the paper's setting is 0: then no reference is loaded
            from transformers import AutoModelForCausalLM

            ref = AutoModelForCausalLM.from_pretrained(
                cfg.model.path, dtype=getattr(torch, cfg.model.dtype),
                trust_remote_code=cfg.model.trust_remote_code)
            self.reference = Policy(ref, cfg.rollout.temperature).to(self.device).eval()
            self.reference.requires_grad_(False)
        self.transfer = None  # the trainer side of the weight-transfer engine
        self.ready_at = time.time()

    def ready(self) -> dict:
        return start_record(self.started_at, self.ready_at)

    # --- the Dr. GRPO update -----------------------------------------------------------------

    def train(self, steps: list[list[Sample]]) -> dict:
        """This rank's share of each optimizer step of one rollout (see drgrpo.batching)."""
        cfg, start = self.cfg, time.perf_counter()
        # A response whose advantage is 0 (its whole group scored alike) adds exactly nothing
        # to the PPO-clip loss or its gradient, so it is not run; it still counts in
        # num_responses, the normaliser. With a KL term it is not zero, so it is kept.
        active = [[s for s in step if s.advantage != 0.0 or cfg.algorithm.kl_coef > 0]
                  for step in steps]
        # Old log-probs come from the learner's own weights, not vLLM's (their numerics
        # differ). The first optimizer step runs on the unchanged weights, so its old
        # log-probs are the current ones, detached; later steps' are computed now, packed
        # together (without gradients, a pass need not stay within one optimizer step).
        epochs = cfg.algorithm.epochs_per_step
        later = [s for step in (active if epochs > 1 else active[1:]) for s in step]
        old = dict(zip(map(id, later), self._logprobs(later)))
        everyone = [s for step in active for s in step]
        ref = (dict(zip(map(id, everyone), self._logprobs(everyone, self.reference)))
               if self.reference is not None else None)

        totals = {"loss": 0.0, "clipped_tokens": 0.0, "tokens": 0.0, "kl": 0.0,
                  "tis_weight": 0.0, "tis_clipped_tokens": 0.0,
                  "padded_positions": 0, "positions": 0}
        # vLLM's log-probs against pi_old (these weights, before the update), over the
        # on-policy tokens trained below; if no learner trains one, over untrained ones now.
        agreement = LogprobAgreement()
        if not self._trains_on_policy(everyone):
            self._measure_untrained(agreement, [s for step in steps for s in step])
        grad_norms = []
        for epoch in range(epochs):
            for k, step in enumerate(active):
                for indices in self._aligned_micro_batches(step):
                    if indices is None:  # another rank has more to run: join its collectives
                        self.backend.backward(self._idle_forward(self.backend.module) * 0.0)
                        continue
                    mb = [step[i] for i in indices]
                    padded, positions = padded_positions(mb)  # for learner/padding_fraction
                    totals["padded_positions"] += padded
                    totals["positions"] += positions
                    batch = collate(mb).to(self.device)
                    logprobs = self.backend.module(batch.input_ids, batch.attention_mask,
                                                   batch.response_mask)
                    old_lp = (logprobs.detach() if epoch == 0 and k == 0 else
                              place_response_logprobs([old[id(s)] for s in mb], batch))
                    ref_lp = (place_response_logprobs([ref[id(s)] for s in mb], batch)
                              if ref is not None else None)
                    mu_lp = _behaviour(mb, batch)
                    if epoch == 0 and mu_lp is not None:
                        agreement.add(old_lp, mu_lp, _on_policy_tokens(mb, batch))
                    loss, stats = policy_loss(
                        logprobs, old_lp, batch.advantages, batch.response_mask,
                        cfg.algorithm.method, cfg.algorithm.clip_eps, cfg.rollout.max_new_tokens,
                        num_responses=cfg.learner.train_batch_size,
                        ref_logprobs=ref_lp, kl_coef=cfg.algorithm.kl_coef,
                        behaviour_logprobs=mu_lp if cfg.algorithm.tis_cap > 0 else None,
                        tis_cap=cfg.algorithm.tis_cap)
                    # FSDP and ZeRO average gradients over ranks; the loss is already a share
                    # of the global sum, so scale it back (drgrpo.algorithm.policy_loss).
                    self.backend.backward(loss * self.world_size)
                    totals["loss"] += loss.item()
                    for key in ("clipped_tokens", "tokens", "kl", "tis_weight",
                                "tis_clipped_tokens"):
                        totals[key] += stats[key].item()
                grad_norms.append(self.backend.step())
        totals.update(agreement.totals())
        totals["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        totals["optimizer_steps"] = len(grad_norms)
        totals["trained_responses"] = len(everyone)
        totals["seconds"] = time.perf_counter() - start
        self._release_cached_memory()
        return totals

    def _trains_on_policy(self, trained: list[Sample]) -> bool:
        """Whether any learner trains a response sampled by these weights, with vLLM's
        log-probs (collective)."""
        count = sum(s.on_policy and s.behaviour_logprobs is not None for s in trained)
        count = torch.tensor([count], device=self.device)
        dist.all_reduce(count)
        return bool(count.item())

    def _measure_untrained(self, agreement: LogprobAgreement, samples: list[Sample]) -> None:
        """No learner trains an on-policy token (every group scored alike): measure the
        agreement on a micro-batch of untrained ones instead, so every step has it.
        Collective: every learner calls it, with its own samples (possibly none)."""
        probe = [s for s in samples if s.on_policy and s.behaviour_logprobs is not None]
        probe = probe[:self.cfg.learner.micro_batch_size]
        for sample, learner in zip(probe, self._logprobs(probe)):
            vllm = torch.tensor(sample.behaviour_logprobs)
            agreement.add(learner, vllm, torch.ones_like(vllm))

    def _aligned_micro_batches(self, samples: list[Sample]) -> list[list[int] | None]:
        """Indices of `samples` per micro-batch (drgrpo.batching.micro_batches), padded with
        None to the largest count on any rank (at least one): counts differ between ranks
        under a token budget, or when zero-advantage responses are skipped, and every rank
        must run the same number of forward/backward collectives; every optimizer step then
        sees a gradient, zero if nothing was active."""
        learner = self.cfg.learner
        mbs = micro_batches(samples, learner.micro_batch_size, learner.max_tokens_per_micro_batch)
        count = torch.tensor([max(len(mbs), 1)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return mbs + [None] * (int(count.item()) - len(mbs))

    def _idle_forward(self, model) -> torch.Tensor:
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        return model(ids, torch.ones_like(ids)).sum()

    @torch.no_grad()
    def _logprobs(self, samples: list[Sample], model=None) -> list[torch.Tensor]:
        """Response-token log-probs of each sample, in order (collective under FSDP/ZeRO-3)."""
        model = model if model is not None else self.backend.module
        values: list = [None] * len(samples)
        for indices in self._aligned_micro_batches(samples):
            if indices is None:
                self._idle_forward(model)
                continue
            batch = collate([samples[i] for i in indices]).to(self.device)
            # A token budget packs by length: put each row back at its sample's place.
            rows = response_logprobs(
                model(batch.input_ids, batch.attention_mask, batch.response_mask), batch)
            for i, row in zip(indices, rows):
                values[i] = row
        return values

    def sequence_logprobs(self, token_ids: list[int]) -> list[float]:
        """log p(token_t | tokens_<t) under the current weights (collective under FSDP)."""
        sample = Sample(token_ids[:1], token_ids[1:], 0.0)
        return self._logprobs([sample])[0].tolist()

    def sequence_logprobs_at(self, token_ids: list[int], temperature: float) -> list[float]:
        """`sequence_logprobs` at `temperature` instead of the rollout's: 1.0 is what vLLM's
        prompt log-probs are computed at (launch/doctor.py compares the two). Collective."""
        policy = getattr(self.backend.module, "module", self.backend.module)  # DeepSpeed wraps it
        rollout_temperature, policy.temperature = policy.temperature, temperature
        try:
            return self.sequence_logprobs(token_ids)
        finally:
            policy.temperature = rollout_temperature

    # --- `python -m launch.doctor`: one real optimizer step, then everything put back ------

    def trial_step(self, samples: list[Sample]) -> dict:
        """One real optimizer step (`train`) on this rank's share `samples`, after which the
        weights and the optimizer are put back exactly as they were, so the doctor can show
        that the learners train without changing the run. Collective: every learner calls it.

        Returns the step's `loss` and `grad_norm`, `moved` (the largest change it made to a
        weight this rank holds), and the proof that all is back: `checksum_before` and
        `checksum_after` (the float64 sum of |x| over every tensor it restored) and `restored`
        (each of them bit for bit what it was). The copies live in host memory meanwhile:
        this rank's share of the weights, master weights and optimizer state."""
        self._reshard()
        weights, state = self._trial_tensors()
        kept = weights + state
        copies = [self._local(t).detach().to("cpu", copy=True) for t in kept]
        checksum_before = self._checksum(copies)
        optimizer = self._torch_optimizer()
        held = {p: dict(s) for p, s in optimizer.state.items()}  # AdamW's state, key by key
        engine = self.backend.module
        counters = {k: getattr(engine, k) for k in ("global_steps", "global_samples",
                                                    "micro_steps", "skipped_steps")
                    if hasattr(engine, k)}  # DeepSpeed's step counts

        stats = self.train([samples])
        self._reshard()
        with torch.no_grad():
            moved = max((float((self._local(t).detach().cpu().double() - c.double()).abs().max())
                         for t, c in zip(weights, copies) if c.numel()), default=0.0)
            for t, c in zip(kept, copies):
                self._local(t).copy_(c)
            for p in [p for p in optimizer.state if p not in held]:
                del optimizer.state[p]  # state the step created: the first step's
            for p, s in held.items():
                optimizer.state[p] = s
            for k, v in counters.items():
                setattr(engine, k, v)
            self._regather_zero3()
        weights, state = self._trial_tensors()
        now = [self._local(t).detach().cpu() for t in weights + state]
        restored = len(now) == len(copies) and all(
            a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(now, copies))
        return {"loss": stats["loss"], "grad_norm": stats["grad_norm"],
                "optimizer_steps": stats["optimizer_steps"], "moved": moved,
                "checksum_before": checksum_before, "checksum_after": self._checksum(now),
                "restored": restored, "tensors": len(copies)}

    def _torch_optimizer(self) -> torch.optim.Optimizer:
        """torch's AdamW itself: DeepSpeed's ZeRO optimizer wraps it (and its parameters are
        the float32 master partitions); FSDP's is the optimizer of the sharded parameters."""
        optimizer = self.backend.optimizer
        return getattr(optimizer, "optimizer", optimizer)

    def _trial_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """What an optimizer step writes on this rank: (weights, optimizer state). Weights:
        the module's parameters as this rank holds them (FSDP: a DTensor's local shard; ZeRO-3:
        its partition; ZeRO-1/2: the whole compute-dtype copy) and the optimizer's own (ZeRO's
        float32 masters; FSDP's are the same tensors, kept once)."""
        optimizer = self._torch_optimizer()
        weights, seen = [], set()
        params = [p.ds_tensor if hasattr(p, "ds_tensor") else p
                  for p in self.backend.module.parameters()]
        params += [p for group in optimizer.param_groups for p in group["params"]]
        # ZeRO-3 hands torch's optimizer its float32 partitions only while it steps.
        params += getattr(self.backend.optimizer, "fp32_partitioned_groups_flat", [])
        for t in params:
            local = self._local(t)
            key = (local.data_ptr(), local.numel(), local.dtype)
            if key not in seen:
                seen.add(key)
                weights.append(t)
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return weights, state

    def _reshard(self) -> None:
        """FSDP2 leaves the root module's parameters gathered after a forward pass without
        gradients: reshard every module, so that its parameters are the shards the optimizer
        steps, and the next forward gathers them again (from restored shards, after a trial)."""
        from torch.distributed.fsdp import FSDPModule

        for module in self.backend.module.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def _regather_zero3(self) -> None:
        """ZeRO-3 keeps small parameters gathered between steps: drop those whole copies,
        which hold the trial step's values, and gather them again from the restored
        partitions (as DeepSpeed's own step does)."""
        gathered = [p for p in self.backend.module.parameters()
                    if hasattr(p, "ds_tensor") and p.data.numel()]
        if gathered:
            gathered[0].partition(gathered)
            gathered[0].all_gather(gathered)

    @staticmethod
    def _local(t: torch.Tensor) -> torch.Tensor:
        """This rank's part of `t`: a DTensor's local shard (a view: writing it writes `t`)."""
        return t.to_local() if hasattr(t, "to_local") else t

    @staticmethod
    def _checksum(tensors: list[torch.Tensor]) -> float:
        return sum(float(t.double().abs().sum()) for t in tensors)

    # --- weight sync, rank 0 -> generators (actors/weight_sync.py) ------------------------

    def init_weight_sync(self, generators: list, tp: int, host: str, port: int,
                         world_size: int, timeout_s: float, client_timeout_s: float,
                         same_machine: bool = False) -> str:
        """Join the weight-transfer engine with `generators` (every learner builds its side;
        rank 0 drives the generators'); again after a generator was replaced.
        `same_machine`: every generator runs on learner 0's machine. Returns how the weights
        travel ("CUDA IPC", "shared memory", "broadcast over gloo" or "... nccl")."""
        if self.transfer is not None:
            self.transfer.shutdown()
        engine = engine_for(self.device.type, self.cfg.cluster.colocate)
        source = LearnerWeights(self.backend, self.cfg.model.rollout_dtype,
                                cast=engine != "broadcast")
        client = GeneratorClient(generators, tp, client_timeout_s) if self.rank == 0 else None
        self.transfer = trainer_engine(engine, rank=self.rank, source=source, client=client,
                                       host=host, port=port, world_size=world_size,
                                       device=self.device, timeout_s=timeout_s,
                                       shared_memory=same_machine)
        return getattr(self.transfer, "transport", "CUDA IPC")

    def send_weights(self, version: int) -> dict:
        """Collective over learners (gathering shards): rank 0 sends the weights of update
        `version` and returns where the time went, its own and the slowest generator's."""
        start = time.perf_counter()
        transfer = self.transfer
        if self.rank == 0:
            transfer.client.version = version
        transfer.send_weights()
        self._release_cached_memory()
        if self.rank != 0:
            return {}
        seconds = time.perf_counter() - start
        mine = {"bytes": transfer.source.total_bytes, "gather_s": transfer.source.gather_s,
                **getattr(transfer, "stats", {})}
        mine.setdefault("send_s", seconds - mine["gather_s"])  # vLLM's engines: the rest
        slowest = max(transfer.client.results["finish_weight_update"],
                      key=lambda r: sum(r.values()))
        return {"seconds": seconds, **mine, **slowest}

    def _release_cached_memory(self) -> None:
        """Colocated GPUs: hand the blocks torch's allocator keeps cached back to the GPU, so
        the sleeping engine beside this learner can take its memory back when it wakes."""
        if self.device.type == "cuda" and self.cfg.cluster.colocate:
            torch.cuda.empty_cache()

    # --- checkpoints ---------------------------------------------------------------------------

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The full model state in cfg.model.dtype on CPU, on rank 0 (None elsewhere).
        Collective: every rank must call it."""
        dtype = getattr(torch, self.cfg.model.dtype)
        state = {}
        for name, tensor in self.backend.full_parameters():
            if self.rank == 0:
                state[name] = tensor.to("cpu", dtype).clone()
        return state if self.rank == 0 else None

    def save(self, folder: str) -> None:
        """Write a Hugging Face model (rank 0) and every rank's optimizer state into `folder`."""
        folder_path = Path(folder)
        state = self.full_state()
        if self.rank == 0:
            self._save_model(folder_path / "model", state)
        dist.barrier()
        self.backend.save_optimizer(folder_path / "optimizer")
        dist.barrier()

    def _save_model(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        """The model as a user loads it, not as the learner trains it: its config says the
        dtype of the saved tensors (transformers loads in that dtype by default) and
        `use_cache` true (the learner trains without a KV cache; whoever loads this
        generates), with the base model's generation config (its stop tokens, for vLLM)."""
        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(self.backend.hf_config)  # from_config and saving write into it
        config.use_cache = True
        with torch.device("meta"):
            shell = AutoModelForCausalLM.from_config(config,
                                                     dtype=getattr(torch, self.cfg.model.dtype))
        shell.generation_config = copy.deepcopy(self.backend.generation_config)
        shell.save_pretrained(folder, state_dict=state, safe_serialization=True)

    def load_optimizer(self, folder: str) -> None:
        self.backend.load_optimizer(Path(folder) / "optimizer")


def _behaviour(mb: list[Sample], batch) -> torch.Tensor | None:
    """vLLM's log-probs of a micro-batch's sampled tokens, placed as the learner's are; None
    unless every sample carries them."""
    if any(s.behaviour_logprobs is None for s in mb):
        return None
    return place_response_logprobs([torch.tensor(s.behaviour_logprobs) for s in mb], batch)


def _on_policy_tokens(mb: list[Sample], batch) -> torch.Tensor:
    rows = torch.tensor([float(s.on_policy) for s in mb], device=batch.response_mask.device)
    return batch.response_mask * rows[:, None]


# Ray pickles a decorated class's methods by value; wrapping a plain importable class keeps
# them pickled by reference (and the class usable without Ray).
Learner = ray.remote(LearnerActor)
