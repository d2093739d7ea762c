"""Data-parallel training backends: torch FSDP2 (`fully_shard`) and DeepSpeed ZeRO.

`load_policy` builds the model to train and wraps it in the configured backend: the one place
that setup lives, so whatever runs it trains the model the learner trains. Both backends wrap
the same `Policy` module and expose the few operations a learner needs: backward, an optimizer
step (with gradient clipping, returning the global grad norm), an iterator over full (gathered)
parameters for weight sync and saving, and optimizer-state checkpoints.

Normalisation contract (see `drgrpo.algorithm.policy_loss`): both frameworks average gradients
over data-parallel ranks, so the learner multiplies its loss by the world size; DeepSpeed's
own division by gradient-accumulation steps is turned off (`scale_wrt_gas=False`) because the
loss is already divided by the number of responses in the whole optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from drgrpo.algorithm import token_logprobs
from drgrpo.config import Config


class Policy(nn.Module):
    """A causal LM whose forward returns per-token log-probs, so the sharding framework's
    forward hooks cover the whole computation (including the chunked `lm_head`)."""

    def __init__(self, lm: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.lm = lm
        self.temperature = temperature

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probs [batch, seq - 1]; with `positions` (a response mask) only those, 0
        elsewhere (drgrpo.algorithm.token_logprobs)."""
        return token_logprobs(self.lm, input_ids, attention_mask, temperature=self.temperature,
                              positions=positions)


def _hf_name(name: str) -> str:
    return name.removeprefix("lm.")


def build_policy_model(cfg: Config) -> nn.Module:
    """The Hugging Face causal LM to train, set up for RL training: fp32 master weights (the
    backend computes in cfg.model.dtype), no KV cache, optional gradient checkpointing, train
    mode and no dropout."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(
        cfg.model.path, dtype=torch.float32, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.learner.gradient_checkpointing:
        # Non-reentrant: works with FSDP2's hooks and with inputs that do not require grad.
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    disable_dropout(lm)
    # from_pretrained returns the model in eval mode, and transformers' checkpointed layers
    # only recompute when `self.training` is true: without this, gradient checkpointing is
    # silently off and long responses run out of memory.
    lm.train()
    return lm


def disable_dropout(lm: nn.Module) -> None:
    """Set every dropout probability to 0, as TRL and OpenRLHF do for RL.

    Dropout would make each log-prob pass a different random function: the first optimizer
    step's "old" log-probs (the training forward, detached) would no longer equal a no-grad
    pass, and the PPO ratio would carry noise. Hugging Face attention modules copy
    `config.attention_dropout` into a float attribute when built, so both the config and the
    modules' attributes are zeroed, as well as any `nn.Dropout`.
    """
    for key, value in list(vars(lm.config).items()):
        if _is_dropout_rate(key, value):
            setattr(lm.config, key, 0.0)
    for module in lm.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if _is_dropout_rate(key, value):
                setattr(module, key, 0.0)


def _is_dropout_rate(name: str, value) -> bool:
    # `*dropout*` (attention_dropout, hidden_dropout, ...) and GPT-2's `*_pdrop`; not flags.
    return (("dropout" in name or name.endswith("pdrop"))
            and isinstance(value, (int, float)) and not isinstance(value, bool))


def load_policy(cfg: Config, device: torch.device):
    """Build the policy (`build_policy_model`) and wrap it in the configured backend.
    torch.distributed must already be initialised."""
    lm = build_policy_model(cfg)
    return make_backend(Policy(lm, cfg.rollout.temperature), cfg, device)


class FSDPBackend:
    def __init__(self, policy: Policy, cfg: Config, device: torch.device):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Written next to checkpoints (actors.learner.LearnerActor.save).
        self.hf_config, self.generation_config = policy.lm.config, policy.lm.generation_config
        compute = getattr(torch, cfg.model.dtype)
        mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
        policy.to(device)
        for layer in policy.lm.model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(policy, mp_policy=mp)
        self.module = policy
        self.grad_clip = cfg.learner.grad_clip
        self.optimizer = torch.optim.AdamW(
            policy.parameters(), lr=cfg.learner.lr, betas=tuple(cfg.learner.adam_betas),
            weight_decay=cfg.learner.weight_decay, eps=1e-8)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(_hf_name(n), tuple(p.shape)) for n, p in self.module.named_parameters()]

    def full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Collective: every rank must iterate to the end; each tensor is complete on all."""
        # A forward without a backward (log-probs without gradients) leaves the root module
        # unsharded: its parameters are then plain tensors, not the sharded DTensors.
        for module in self.module.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        for name, param in self.module.named_parameters():
            # On a mesh of one rank the local shard is the whole tensor: `to_local` is it,
            # without `full_tensor`'s redistribution (a fifth of the time on the demo model).
            whole = param.to_local() if param.device_mesh.size() == 1 else param.full_tensor()
            yield _hf_name(name), whole.detach()

    def save_optimizer(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))

    def load_optimizer(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])


class DeepSpeedBackend:
    def __init__(self, policy: Policy, cfg: Config, device: torch.device):
        import deepspeed

        self.stage = cfg.learner.zero_stage
        # Written next to checkpoints (actors.learner.LearnerActor.save).
        self.hf_config, self.generation_config = policy.lm.config, policy.lm.generation_config
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: we feed our own batches
            "gradient_accumulation_steps": 1,
            # step() is the accumulation boundary: we call it once per optimizer step.
            "managed_gradient_accumulation": False,
            "gradient_clipping": cfg.learner.grad_clip,
            "zero_optimization": {"stage": self.stage},
            "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
            "fp16": {"enabled": cfg.model.dtype == "float16"},
            # torch's AdamW: DeepSpeed's fused Adam needs CUDA, and the same optimizer on both
            # backends keeps FSDP and ZeRO runs comparable.
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }
        policy.to(device)
        optimizer = torch.optim.AdamW(
            policy.parameters(), lr=cfg.learner.lr, betas=tuple(cfg.learner.adam_betas),
            weight_decay=cfg.learner.weight_decay, eps=1e-8)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=policy, optimizer=optimizer, config=ds_config, dist_init_required=False)
        self.module = self.engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def _named(self):
        return self.engine.module.named_parameters()

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(_hf_name(n), tuple(getattr(p, "ds_shape", p.shape))) for n, p in self._named()]

    def full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Collective under ZeRO-3 (each parameter is gathered in turn); local otherwise."""
        import deepspeed

        for name, param in self._named():
            if self.stage == 3:
                with deepspeed.zero.GatheredParameters([param]):
                    yield _hf_name(name), param.data.detach().clone()
            else:
                yield _hf_name(name), param.data.detach()

    def save_optimizer(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag="state")

    def load_optimizer(self, path: Path) -> None:
        self.engine.load_checkpoint(str(path), tag="state")


def make_backend(policy: Policy, cfg: Config, device: torch.device):
    if not dist.is_initialized():
        raise RuntimeError("initialise torch.distributed before building a backend")
    if cfg.learner.strategy == "fsdp":
        return FSDPBackend(policy, cfg, device)
    return DeepSpeedBackend(policy, cfg, device)
