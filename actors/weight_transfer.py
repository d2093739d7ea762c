"""The two ends of vLLM's weight-transfer API in this project (actors/weight_sync.py says
how a sync goes): the learners' source and trainer engine, and the vLLM worker extension.
Imported by the learners and, through `worker_extension_cls`, by every vLLM worker, where
importing it registers the `broadcast` engine before vLLM creates the worker's engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from vllm.distributed.weight_transfer import WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

from actors import broadcast_engine
from actors.weight_sync import group_backend


class LearnerWeights(WeightSource):
    """The policy's full parameters under their Hugging Face names (`full_parameters`: a
    collective under FSDP and ZeRO-3, so every learner iterates), on the learner's device.

    `metadata()` declares the wire dtype (the generators'). With `cast`, each tensor is cast to
    it as it is yielded (vLLM's engines send what they get); without, the tensors keep the
    learner's dtype and `broadcast` casts while it packs them, saving a copy of each.
    `gather_s`: the last pass's seconds spent gathering (and casting)."""

    def __init__(self, backend, dtype: str, cast: bool):
        self.backend, self.dtype, self.cast = backend, getattr(torch, dtype), cast
        self.gather_s = 0.0

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, self.dtype, shape) for name, shape in self.backend.param_shapes()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        self.gather_s, start = 0.0, time.perf_counter()
        for name, tensor in self.backend.full_parameters():
            if self.cast:
                tensor = tensor.to(self.dtype)
            self.gather_s += time.perf_counter() - start
            yield name, tensor
            start = time.perf_counter()

    @property
    def total_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return sum(_numel(m.shape) for m in self.metadata()) * itemsize


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def trainer_engine(engine: str, *, rank: int, source: LearnerWeights, client, host: str,
                   port: int, world_size: int, device: torch.device, timeout_s: float,
                   shared_memory: bool = False):
    """Learner `rank`'s side of `engine`, joined with the generators' (rank 0 drives them).
    `shared_memory`: every generator is on this machine (`broadcast` then hands them the
    weights in /dev/shm where it has room)."""
    if engine == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        # Packed: each learner stages the weights through one buffer of vLLM's default size
        # (1 GiB), not a second copy of the whole model on its GPU.
        info = IPCTrainerInitInfo(rank=rank, packed=True)
    else:
        backend = group_backend(device.type)
        info = broadcast_engine.BroadcastTrainerInitInfo(
            rank=rank, host=host, port=port, world_size=world_size, group_backend=backend,
            timeout_s=timeout_s, dtype=str(source.dtype).removeprefix("torch."),
            device=str(device) if backend == "nccl" else "cpu",
            shared_memory=shared_memory and backend == "gloo")
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)


class WeightSyncExtension:
    """vLLM worker extension (`worker_extension_cls`): runs inside every vLLM worker process.
    Driven by `LLM.collective_rpc`; `self` is the vLLM worker."""

    def after_weight_update(self) -> dict:
        """Re-process tied layers, and return the engine's timings of the update (ours
        splits receiving from loading; vLLM's engines report none)."""
        refresh_tied_layers(self.model_runner.get_model())
        return dict(getattr(self.weight_transfer_engine, "stats", {}))

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
    processing just rebuilds that copy from the weight (and does nothing on GPUs).

    The first module holding the weight is not redone: the reload loaded the weight through
    it (its name is the parameter's) and processed it then. Where that processing made a CPU
    GEMM from the weight (vLLM's `cpu_linear`, layers/utils.dispatch_cpu_unquantized_gemm),
    the others take that one, made from the same tensor, instead of packing it again: on the
    demo model redoing both took 50-86 ms of a ~0.4 s sync."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    sharing: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            sharing.setdefault(id(module.weight), []).append(module)
    for first, *others in sharing.values():
        for module in others:
            if hasattr(first, "cpu_linear"):
                module.cpu_linear = first.cpu_linear
            else:
                module.quant_method.process_weights_after_loading(module)
