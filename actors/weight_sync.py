"""Weight sync: learner rank 0 streams full parameters to every generator, in buckets.

One protocol and one code path for both machines: a standalone torch.distributed process group
(NCCL on GPUs, gloo on CPUs) made of learner rank 0 (rank 0) and every vLLM worker of every
generator (ranks 1..). It lives beside, not inside, the learners' own group and vLLM's own
groups, so it is built directly from a `TCPStore` rather than through `init_process_group`,
which may only create one default group per process.

Why not vLLM's own transfer engines: they need CUDA and have no gloo backend, and vLLM's
`PyNcclCommunicator` silently turns collectives into no-ops on a CPU. Only control messages
(the manifest) travel through `collective_rpc`: tensors passed there arrive as Python lists.

Buckets: parameters are cast to the generator's dtype and packed, in model order, into flat
buffers of about `bucket_bytes`, so a sync is a few large broadcasts, never one copy of the
whole model and never thousands of tiny messages. The receiving side feeds a generator into a
single `reload_weights` call: vLLM processes each layer once all its tensors arrived, so the
whole update has to be one call (a layer split across calls would be finalised half-loaded).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Manifest:
    """What every sync sends, fixed for the run: names, shapes, the wire dtype, the buckets."""

    specs: tuple[TensorSpec, ...]
    dtype: str  # e.g. "bfloat16": the generator's dtype, so each element travels once, small
    buckets: tuple[tuple[int, ...], ...]  # indices into specs

    @classmethod
    def plan(cls, named_shapes: Iterable[tuple[str, tuple[int, ...]]], dtype: str,
             bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Manifest:
        specs = tuple(TensorSpec(n, tuple(s)) for n, s in named_shapes)
        itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        buckets, current, size = [], [], 0
        for i, spec in enumerate(specs):
            nbytes = spec.numel * itemsize
            if current and size + nbytes > bucket_bytes:
                buckets.append(tuple(current))
                current, size = [], 0
            current.append(i)
            size += nbytes
        if current:
            buckets.append(tuple(current))
        return cls(specs, dtype, tuple(buckets))

    def to_dict(self) -> dict:
        """Plain data for `collective_rpc`, whose serializer turns dataclasses into dicts."""
        return {"names": [s.name for s in self.specs], "shapes": [list(s.shape) for s in self.specs],
                "dtype": self.dtype, "buckets": [list(b) for b in self.buckets]}

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        specs = tuple(TensorSpec(n, tuple(s)) for n, s in zip(d["names"], d["shapes"], strict=True))
        return cls(specs, d["dtype"], tuple(tuple(b) for b in d["buckets"]))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def total_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.torch_dtype).element_size()
        return sum(s.numel for s in self.specs) * itemsize


def open_group(host: str, port: int, rank: int, world_size: int, backend: str,
               timeout_s: float) -> dist.ProcessGroup:
    """Join the weight-sync group; rank 0 (learner rank 0) hosts the rendezvous store.
    Every collective of the group, the first included, fails after `timeout_s`."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout,
                          wait_for_workers=False)
    store = dist.PrefixStore("drgrpo-weight-sync", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout  # without it NCCL waits its own default (10 minutes)
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
    raise ValueError(f"weight sync backend must be 'gloo' or 'nccl', got {backend!r}")


def close_group(group: dist.ProcessGroup | None) -> None:
    """Let go of a weight-sync group before a new one replaces it (a generator was restarted:
    a torch.distributed group cannot take a new member, so every member opens a new one).
    NCCL's communicators are aborted, not waited on: a member may be gone."""
    if group is None:
        return
    for verb in ("abort", "shutdown"):
        if hasattr(group, verb):
            try:
                getattr(group, verb)()
            except Exception:  # a broken group may refuse; it is dropped either way
                pass
            return


def buffer_device(backend: str, model_device: torch.device) -> torch.device:
    """Where bucket buffers live: GPU memory for NCCL, host memory for gloo. Colocated GPU
    runs use gloo too, because NCCL cannot place two ranks (learner 0 and the generator that
    shares its GPU) on one device in a communicator."""
    return model_device if backend == "nccl" else torch.device("cpu")


def _broadcast(group: dist.ProcessGroup, buffer: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([buffer], opts).wait()


def send_buckets(group: dist.ProcessGroup, manifest: Manifest,
                 tensors: Iterable[tuple[str, torch.Tensor]], device: torch.device) -> dict:
    """Rank 0: pack the full tensors (in manifest order) into buckets and broadcast each.

    `tensors` may be a generator that gathers each parameter just in time (FSDP/ZeRO-3), so at
    most one bucket of the model is held in full at once. Returns the bytes sent and the
    seconds spent gathering (waiting on `tensors`), packing and broadcasting.
    """
    it = iter(tensors)
    stats = {"bytes": 0, "gather_s": 0.0, "pack_s": 0.0, "broadcast_s": 0.0}
    for bucket in manifest.buckets:
        numel = sum(manifest.specs[i].numel for i in bucket)
        flat = torch.empty(numel, dtype=manifest.torch_dtype, device=device)
        offset = 0
        for i in bucket:
            spec = manifest.specs[i]
            t0 = time.perf_counter()
            name, tensor = next(it)
            t1 = time.perf_counter()
            if name != spec.name or tuple(tensor.shape) != spec.shape:
                raise RuntimeError(f"weight sync: expected {spec.name}{list(spec.shape)}, "
                                   f"got {name}{list(tensor.shape)}")
            flat[offset:offset + spec.numel].copy_(tensor.reshape(-1))
            offset += spec.numel
            stats["gather_s"] += t1 - t0
            stats["pack_s"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        _broadcast(group, flat)
        stats["broadcast_s"] += time.perf_counter() - t0
        stats["bytes"] += flat.numel() * flat.element_size()
    return stats


def receive_buckets(group: dist.ProcessGroup, manifest: Manifest, device: torch.device,
                    stats: dict | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Ranks >0: receive each bucket and yield its tensors, lazily, as views of the bucket;
    the seconds spent waiting in broadcasts go to stats["broadcast_s"]."""
    for bucket in manifest.buckets:
        numel = sum(manifest.specs[i].numel for i in bucket)
        flat = torch.empty(numel, dtype=manifest.torch_dtype, device=device)
        t0 = time.perf_counter()
        _broadcast(group, flat)
        if stats is not None:
            stats["broadcast_s"] = stats.get("broadcast_s", 0.0) + time.perf_counter() - t0
        offset = 0
        for i in bucket:
            spec = manifest.specs[i]
            yield spec.name, flat[offset:offset + spec.numel].view(spec.shape)
            offset += spec.numel


class WeightSyncExtension:
    """vLLM worker extension (`worker_extension_cls`): runs inside every vLLM worker process.

    Driven by `LLM.collective_rpc("method", args=...)`; `self` is the vLLM worker, so
    `self.rank` (the worker's rank in its engine) and `self.model_runner` are available.
    """

    def init_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int,
                         backend: str, manifest: dict, timeout_s: float) -> int:
        rank = rank_offset + self.rank
        close_group(getattr(self, "_drgrpo_group", None))
        self._drgrpo_group = open_group(host, port, rank, world_size, backend, timeout_s)
        self._drgrpo_manifest = Manifest.from_dict(manifest)
        self._drgrpo_backend = backend
        return rank

    def receive_weights(self) -> dict:
        """Receive one full update from learner rank 0 and load it in place."""
        start = time.perf_counter()
        device = buffer_device(self._drgrpo_backend,
                               next(self.model_runner.get_model().parameters()).device)
        stats = {"broadcast_s": 0.0}
        weights = receive_buckets(self._drgrpo_group, self._drgrpo_manifest, device, stats)
        # On the CPU backend `model.load_weights` fails for repacked linear layers;
        # `reload_weights` restores the checkpoint layout, loads, then re-processes.
        self.reload_weights(weights_iterator=weights)
        refresh_tied_layers(self.model_runner.get_model())
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "bytes": self._drgrpo_manifest.total_bytes,
                "broadcast_s": stats["broadcast_s"], "load_s": seconds - stats["broadcast_s"]}

    def compute_threads(self) -> int:
        """The threads this worker computes with (vLLM takes one worker extension, so the
        generator asks this one; see actors.generator.share_cpu_threads)."""
        return torch.get_num_threads()


def refresh_tied_layers(model: torch.nn.Module) -> None:
    """Re-process the layers that share one weight (tied embeddings: `embed_tokens` and
    `lm_head`) after a reload.

    vLLM reloads a tied weight once, through `embed_tokens`, and never re-processes `lm_head`;
    on the CPU backend `lm_head` computes logits from a packed copy of its weight made when it
    was processed, so without this the generator keeps sampling from the output layer it
    started with, whatever the learners send. Only unquantized layers are redone: their
    processing just rebuilds that copy from the weight (and does nothing on GPUs)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    sharing: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            sharing.setdefault(id(module.weight), []).append(module)
    for modules in sharing.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)
