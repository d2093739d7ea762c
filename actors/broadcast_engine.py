"""The `broadcast` weight-transfer engine: vLLM's weight-transfer API over a torch.distributed
broadcast, gloo on CPUs and NCCL on GPUs.

vLLM 0.32 moves weights from a trainer into its workers through engines made in pairs, one in
the trainer (`TrainerWeightTransferEngine`) and one in each vLLM worker
(`WeightTransferEngine`), registered with its factories and driven by versioned calls:
`init_weight_transfer_engine`, then per update `start_weight_update`, `update_weights` and
`finish_weight_update`. Its own engines are `ipc` (CUDA IPC handles; what colocated GPUs use,
actors/weight_sync.py) and `nccl`. This module registers one more pair under `broadcast`,
for what theirs do not serve:

- CPUs (gloo): vLLM's engines need CUDA.
- Generators on GPUs of their own (NCCL), in place of vLLM's `nccl` engine, because its
  trainer side puts every worker at rank offset 1 (one engine and its data-parallel
  replicas), while a run has several independent engines, each at its own offset; and its
  `PyNcclCommunicator` has no timeout and no abort, while a member that died must fail the
  others' collectives within `cluster.sync_timeout_s` and leave a group that can be dropped
  and rebuilt (launch/recovery.py). One engine on both machines is also what lets the CPU
  suite run the GPU path. (Not measured against vLLM's `nccl` on a GPU: none was at hand.)

The group (actors/sync_group.py) holds the sender (rank 0) and every vLLM worker of every
generator (ranks 1..).

Shared memory: where learner 0 and every generator share a machine (a CPU run on one node:
launch/cluster.py asks for it), the buckets are one file in /dev/shm (actors/shared_memory.py)
that the sender packs and every worker loads from, and no group is built: nothing crosses a
socket and no worker holds a copy. The versioned calls and the layerwise load are the same.

Buckets: parameters are cast to the generators' dtype and packed, in model order, into flat
buffers of about `bucket_bytes`, so an update is a few large broadcasts, never one copy of the
whole model and never thousands of tiny messages. Each side keeps one bucket in flight while
it works on the previous one (the sender packs the next, a receiver loads the last), and
vLLM's layerwise reload, opened by `start_weight_update` and closed by
`finish_weight_update`, processes each layer once all its tensors arrived, whichever bucket
brought them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import (
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)

from actors import shared_memory
from actors.sync_group import close_group, open_group, start_broadcast, wait
from actors.weight_sync import BROADCAST

DEFAULT_BUCKET_BYTES = 256 * 2**20


# --- the wire: which tensors, in which dtype, in which buckets ------------------------------

@dataclass
class BroadcastUpdateInfo(WeightTransferUpdateInfo):
    """One update's plan, the same on both sides: names and shapes in send order, the wire
    dtype (the generators', so each element travels once, small), buckets as indices."""

    names: list[str]
    shapes: list[list[int]]
    dtype: str
    buckets: list[list[int]]

    @classmethod
    def plan(cls, named_shapes: Iterable[tuple[str, tuple[int, ...]]], dtype: str,
             bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> BroadcastUpdateInfo:
        names, shapes = [], []
        for name, shape in named_shapes:
            names.append(name)
            shapes.append(list(shape))
        itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        buckets, current, size = [], [], 0
        for i, shape in enumerate(shapes):
            nbytes = _numel(shape) * itemsize
            if current and size + nbytes > bucket_bytes:
                buckets.append(current)
                current, size = [], 0
            current.append(i)
            size += nbytes
        if current:
            buckets.append(current)
        return cls(names, shapes, dtype, buckets)

    def to_dict(self) -> dict:
        return {"names": self.names, "shapes": self.shapes, "dtype": self.dtype,
                "buckets": self.buckets}

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def total_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.torch_dtype).element_size()
        return sum(_numel(s) for s in self.shapes) * itemsize

    def bucket_numel(self, bucket: list[int]) -> int:
        return sum(_numel(self.shapes[i]) for i in bucket)


class Buckets:
    """A flat buffer for each bucket of a plan, on `device`, or slices of a shared-memory
    `region` (one after the other). In host memory they are kept from one update to the next:
    freed, buffers this large go back to the OS and are faulted in again, page by page,
    inside the next update's broadcasts. GPU memory is not kept (torch's allocator caches the
    blocks itself, and a whole model's copy would stay on the GPU)."""

    def __init__(self, plan: BroadcastUpdateInfo, device: torch.device,
                 region: shared_memory.Region | None = None):
        self.plan, self.device, self.kept = plan, device, {}
        if region is not None:
            flat, offset = region.flat[:plan.total_bytes].view(plan.torch_dtype), 0
            for k, bucket in enumerate(plan.buckets):
                n = plan.bucket_numel(bucket)
                self.kept[k], offset = flat[offset:offset + n], offset + n

    def __getitem__(self, k: int) -> torch.Tensor:
        if k in self.kept:
            return self.kept[k]
        flat = torch.empty(self.plan.bucket_numel(self.plan.buckets[k]),
                           dtype=self.plan.torch_dtype, device=self.device)
        if self.device.type == "cpu":
            self.kept[k] = flat
        return flat


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# --- the generator's side: one engine in each vLLM worker ---------------------------------

@dataclass
class BroadcastInitInfo(WeightTransferInitInfo):
    host: str
    port: int
    rank_offset: int  # of this engine's first worker: generator i's follow those of 0..i-1
    world_size: int
    group_backend: str  # "gloo" or "nccl"
    timeout_s: float
    shared_path: str | None = None  # the sender's shared-memory file: no group then


class BroadcastEngine(WeightTransferEngine[BroadcastInitInfo, BroadcastUpdateInfo]):
    init_info_cls = BroadcastInitInfo
    update_info_cls = BroadcastUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: dist.ProcessGroup | None = None
        self.backend = "gloo"
        self.stats: dict = {}
        self.buffers: Buckets | None = None
        self.region: shared_memory.Region | None = None

    def init_transfer_engine(self, init_info: BroadcastInitInfo) -> None:
        close_group(self.group)
        self.group, self.buffers = None, None
        self.backend = init_info.group_backend
        if init_info.shared_path is not None:
            self.region = shared_memory.attach(init_info.shared_path)
            return
        self.region = None
        # This worker's rank in its engine, as vLLM numbers workers across replicas.
        p = self.parallel_config
        rank = init_info.rank_offset + p.data_parallel_index * p.world_size + p.rank
        self.group = open_group(init_info.host, init_info.port, rank, init_info.world_size,
                                init_info.group_backend, init_info.timeout_s)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)
        self.stats = {"receive_s": 0.0, "load_s": 0.0}

    def update_weights(self, update_info: dict) -> None:
        # vLLM's own waits for the accelerator, which raises where there is none (CPUs).
        self.receive_weights(self.parse_update_info(update_info))
        if self.device.type != "cpu":
            torch.accelerator.synchronize()

    def receive_weights(self, update_info: BroadcastUpdateInfo) -> None:
        """Receive every bucket and load its tensors; bucket k+1 arrives while bucket k loads.
        From shared memory, the sender has packed them all already: each is loaded in turn."""
        if self.group is None and self.region is None:
            raise RuntimeError("weight transfer: receive before init_weight_transfer_engine")
        if self.buffers is None or self.buffers.plan != update_info:
            device = self.device if self.backend == "nccl" else torch.device("cpu")
            self.buffers = Buckets(update_info, device, self.region)
        buckets = update_info.buckets
        if self.region is not None:
            start = time.perf_counter()
            for k, bucket in enumerate(buckets):
                self.model.load_weights(_views(update_info, bucket, self.buffers[k]))
            self.stats["load_s"] += time.perf_counter() - start
            return
        pending = None
        for k in range(len(buckets) + 1):
            if k < len(buckets):
                flat = self.buffers[k]
                work = start_broadcast(self.group, flat)
            if pending is not None:
                start = time.perf_counter()
                self.model.load_weights(_views(update_info, *pending))
                self.stats["load_s"] += time.perf_counter() - start
            if k < len(buckets):
                start = time.perf_counter()
                wait(work)
                self.stats["receive_s"] += time.perf_counter() - start
                pending = (buckets[k], flat)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        start = time.perf_counter()
        finalize_layerwise_reload(self.model, self.model_config)
        self.stats["load_s"] += time.perf_counter() - start

    def shutdown(self) -> None:
        close_group(self.group)
        self.group, self.region, self.buffers = None, None, None


def _views(info: BroadcastUpdateInfo, bucket: list[int],
           flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    offset = 0
    for i in bucket:
        n = _numel(info.shapes[i])
        yield info.names[i], flat[offset:offset + n].view(info.shapes[i])
        offset += n


# --- the learners' side ---------------------------------------------------------------------

@dataclass
class BroadcastTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = BROADCAST
    host: str
    port: int
    world_size: int
    group_backend: str
    timeout_s: float
    dtype: str  # the generators'
    device: str  # where the sender's buckets live: its GPU for NCCL, "cpu" for gloo
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    # Every generator is on the sender's machine (and on CPUs): hand them the buckets in
    # shared memory, where /dev/shm has room for them, instead of broadcasting.
    shared_memory: bool = False


class BroadcastTrainerEngine(TrainerWeightTransferEngine[BroadcastTrainerInitInfo]):
    """Every learner makes one; rank 0 sends, the others only take part in gathering full
    parameters (the source's iteration is a collective under FSDP and ZeRO-3)."""

    init_info_cls = BroadcastTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info: BroadcastTrainerInitInfo, *, client, source=None):
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        engine.plan = BroadcastUpdateInfo.plan(((m.name, m.shape) for m in source.metadata()),
                                               init_info.dtype, init_info.bucket_bytes)
        engine.region = (shared_memory.create(engine.plan.total_bytes)
                         if init_info.shared_memory and engine.is_sender else None)
        engine.buffers = Buckets(engine.plan, torch.device(init_info.device), engine.region)
        engine.group, engine.stats = None, {}
        engine.transport = ("shared memory" if engine.region is not None
                            else f"broadcast over {init_info.group_backend}")
        if engine.is_sender:
            worker_info = {"host": init_info.host, "port": init_info.port, "rank_offset": 1,
                           "world_size": init_info.world_size,
                           "group_backend": init_info.group_backend,
                           "timeout_s": init_info.timeout_s}
            if engine.region is not None:
                try:  # every worker maps the file, then no name is left to leak
                    client.init_weight_transfer_engine(
                        {**worker_info, "shared_path": engine.region.path})
                finally:
                    engine.region.unlink()
                return engine
            # The workers join inside their init call, the sender here: both at once.
            with ThreadPoolExecutor(max_workers=1) as pool:
                joined = pool.submit(client.init_weight_transfer_engine, worker_info)
                engine.group = open_group(init_info.host, init_info.port, 0,
                                          init_info.world_size, init_info.group_backend,
                                          init_info.timeout_s)
                joined.result()
        return engine

    def send_weights(self) -> None:
        tensors = iter(self.source)
        if not self.is_sender:
            for _ in tensors:
                pass
            return
        self.client.start_weight_update()
        if self.region is not None:
            self.stats = {"pack_s": 0.0, "send_s": 0.0, "socket_bytes": 0}
            try:
                for k, bucket in enumerate(self.plan.buckets):
                    _pack(self.buffers[k], bucket, self.plan, tensors, self.stats)
            finally:
                for _ in tensors:  # the other learners are gathering with this one: finish
                    pass
            self.client.update_weights(self.plan.to_dict())
            self.client.finish_weight_update()
            return
        pool = ThreadPoolExecutor(max_workers=1)
        # The generators receive while this sends: both inside the same broadcasts.
        received = pool.submit(self.client.update_weights, self.plan.to_dict())
        try:
            self.stats = send_buckets(self.group, self.plan, tensors, self.buffers,
                                      give_up=lambda: _failed(received))
            self.stats["socket_bytes"] = self.plan.total_bytes
        except BaseException:
            # The group is broken: dropped now, before its collectives time out (NCCL's
            # watchdog would end this process); the next init builds a new one.
            close_group(self.group)
            self.group = None
            for _ in tensors:  # the other learners are gathering with this one: finish
                pass
            # A receiver that died or hung is the cause; the client names it.
            received.result()
            raise
        finally:
            # Never wait for the receiving call on error: it may be stuck in a broadcast.
            pool.shutdown(wait=False)
        received.result()
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        close_group(self.group)
        self.group, self.region = None, None


def _failed(future: Future) -> BaseException | None:
    return future.exception() if future.done() else None


def send_buckets(group: dist.ProcessGroup, plan: BroadcastUpdateInfo,
                 tensors: Iterator[tuple[str, torch.Tensor]], buffers: Buckets,
                 give_up: Callable[[], BaseException | None] | None = None) -> dict:
    """Rank 0: pack the full tensors (in plan order) into buckets, cast to the wire dtype, and
    broadcast each, packing bucket k+1 while bucket k is on the wire.

    `tensors` may gather each parameter just in time (FSDP, ZeRO-3; the source times that),
    so at most two buckets of the model are held in full at once. Returns the seconds spent
    packing and waiting for the wire."""
    stats = {"pack_s": 0.0, "send_s": 0.0}
    in_flight = None
    for k, bucket in enumerate(plan.buckets):
        flat = buffers[k]
        _pack(flat, bucket, plan, tensors, stats)
        if in_flight is not None:
            _timed_wait(in_flight, stats, give_up)
        in_flight = start_broadcast(group, flat), flat
    if in_flight is not None:
        _timed_wait(in_flight, stats, give_up)
    return stats


def _pack(flat: torch.Tensor, bucket: list[int], plan: BroadcastUpdateInfo,
          tensors: Iterator[tuple[str, torch.Tensor]], stats: dict) -> None:
    """Copy the bucket's tensors, cast to the wire dtype, one after the other into `flat`."""
    offset = 0
    for i in bucket:
        name, tensor = next(tensors)
        start = time.perf_counter()
        if name != plan.names[i] or list(tensor.shape) != plan.shapes[i]:
            raise RuntimeError(f"weight sync: expected {plan.names[i]}{plan.shapes[i]}, "
                               f"got {name}{list(tensor.shape)}")
        n = tensor.numel()
        flat[offset:offset + n].copy_(tensor.reshape(-1))
        offset += n
        stats["pack_s"] += time.perf_counter() - start


def _timed_wait(in_flight, stats: dict, give_up) -> None:
    start = time.perf_counter()
    wait(in_flight[0], give_up)
    stats["send_s"] += time.perf_counter() - start


def register() -> None:
    """Make `broadcast` known to vLLM's factories in this process (the learners', and each
    vLLM worker's through actors/weight_transfer.py, its worker extension)."""
    for factory, cls in ((WeightTransferEngineFactory, BroadcastEngine),
                         (WeightTransferTrainerFactory, BroadcastTrainerEngine)):
        try:
            factory.register_engine(BROADCAST, cls)
        except ValueError:  # registered already (this module imported twice)
            pass


register()
