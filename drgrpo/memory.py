"""What a learner holds on its GPU, in bytes: the memory model behind `python -m launch.plan`.

Arithmetic on a model's shape (from its config.json alone) and a run's settings; nothing here
touches a GPU. Each term names what allocates it:

Model states (parameters, gradients, AdamW's two moments), per learner GPU of N, P parameters:
  fsdp      16P/N: float32 parameters, float32 gradients (reduce dtype float32) and moments, all
            sharded (drgrpo/backends.py, FSDPBackend); plus, while computing, the bf16
            unsharded copies in flight (`gathered`).
  ZeRO-1    2P bf16 parameters + 2P bf16 gradients (not partitioned at stage 1)
            + (4 float32 master + 8 moments + 2 bf16 gradient partition + 4 float32 gradient
            partition made for the step)P/N.
  ZeRO-2    2P + (2 + 4 + 4 + 8)P/N: DeepSpeed's own count (stage_1_and_2.py,
            estimate_zero2_model_states_mem_needs: "2 = params_16bit, 18 = 2_grads_16bit +
            4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit").
  ZeRO-3    (2 + 2 + 4 + 4 + 8)P/N + 4 x the largest module's parameters (its bf16 copy and
            gradient gathered at once, as DeepSpeed's estimate_zero3_model_states_mem_needs
            allows). Stage 3 also keeps its bf16 gradient partition (stage3.py,
            grad_partitions_flat_buffer) beside the float32 one made for the step: 2P/N more
            than DeepSpeed's estimator, which leaves it out.
DeepSpeed also holds its reduce bucket (`reduce_bucket_size`, 5e8 elements by default, in bf16).

Activations per token of a training pass (bf16 compute, h hidden, i intermediate, kv key/value
width), from the tensors autograd saves in a Qwen2/Llama decoder layer: two RMSNorms at 8h each
(their float32 input, the bf16 normalised value, the weighted output), attention 6h + 4kv (rotated
q, k, v, the attention output and o_proj's input), the SwiGLU MLP 8i (gate, its SiLU, up, their
product): 22h + 4kv + 8i per layer. With gradient checkpointing each layer keeps only its input
(2h) and one layer is recomputed at a time; outside the layers the final norm and the head's
input rows add 10h. Calibrated against the H200 rows in docs/gpu/gpu_check.md
(tests/test_plan.py reproduces each within 15%).

The log-prob head (drgrpo.algorithm.token_logprobs) holds three float32 chunk-sized tensors in
a chunk's backward pass (measured, docs/performance.md), and torch's AdamW (foreach, on CUDA)
makes one float32 temporary the size of the moments in its step (`exp_avg_sq_sqrt`).

A learner's peak is the fullest of three phases of an optimizer step: a training pass (states,
gathered copies, activations, the chunk), the end of its backward (FSDP2 reduces the root's
gradients through a float32 copy), and the optimizer step (DeepSpeed's float32 gradient
partition, AdamW's temporary). Gradients are held across passes when a step has several
(`accumulating`); the H200 rows ran one pass a step, so theirs appear during the backward.
The rows with checkpointing are reproduced within 2%; without it this model's slope is 3% high
and its intercept 1.8 GiB low (something that run held which is not named here), so the 1 x
4,096-token row is 12% under. On a CPU, torch's profiler traced the same code paths (FSDP2 and
ZeRO-1/2/3 at one learner, one and two passes a step) within 5% of this model, except FSDP2's
one-pass step, 8% over there because AdamW is not foreach on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30
# DeepSpeed's default reduce bucket, in elements (deepspeed/runtime/zero/config.py).
DEEPSPEED_REDUCE_BUCKET = 500_000_000


@dataclass(frozen=True)
class Shape:
    """A causal LM's sizes, as the memory model needs them."""

    params: int          # distinct parameters (a tied output head counted once)
    root_params: int     # outside the decoder layers: embedding, untied head, final norm
    head_params: int     # the output head's weight (the embedding's, when tied)
    layer_params: int    # one decoder layer
    largest_module: int  # the most parameters any one module holds itself (DeepSpeed's "layer")
    hidden: int
    layers: int
    intermediate: int
    kv_width: int        # key/value heads x head dim
    kv_heads: int
    head_dim: int
    vocab: int
    context: int | None  # max_position_embeddings


def shape_of(hf_config) -> Shape:
    """Count the parameters of `hf_config`'s model built on the meta device: no memory, no
    weights, any architecture transformers knows (tied embeddings are one Parameter)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    params = sum(p.numel() for p in model.parameters())
    layers = model.model.layers
    layer = sum(p.numel() for p in layers[0].parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return Shape(params=params, root_params=params - layer * len(layers),
                 head_params=model.get_output_embeddings().weight.numel(), layer_params=layer,
                 largest_module=largest, hidden=text.hidden_size, layers=len(layers),
                 intermediate=text.intermediate_size, kv_width=kv_heads * head_dim,
                 kv_heads=kv_heads, head_dim=head_dim, vocab=text.vocab_size,
                 context=getattr(text, "max_position_embeddings", None))


@dataclass(frozen=True)
class Learner:
    """One learner's settings, as they bear on its memory."""

    strategy: str         # "fsdp" or "deepspeed"
    zero_stage: int
    world: int            # learners sharing the states
    checkpointing: bool
    tokens: int           # the largest training pass: rows x longest row, padding included
    head_rows: int        # positions of that pass that go through the output head
    accumulating: bool = True   # gradients kept between the passes of an optimizer step
    compute_bytes: int = 2      # model.dtype: 2 (bf16, fp16) or 4 (float32)
    reference: bool = False     # algorithm.kl_coef > 0: a frozen copy in model.dtype


@dataclass(frozen=True)
class LearnerMemory:
    """Bytes on one learner GPU, by item, and its peaks by phase."""

    kept: int            # parameters and moments, kept between optimizer steps
    grads: int           # gradients, kept from the first pass of an optimizer step to its end
    step_grads: int      # the float32 gradient partition DeepSpeed makes for the step
    gathered: int        # unsharded bf16 copies in flight while computing
    bucket: int          # DeepSpeed's reduce bucket
    bucket_kept: bool    # allocated once (stage 3), rather than for each pass's backward
    reference: int       # the KL reference model
    activations: int
    logprob_chunk: int
    step_temp: int       # AdamW's float32 temporary in its step
    root_reduce: int     # FSDP2, end of backward: the root's grads and their float32 copy
    startup: int         # loading: the whole float32 model before it is sharded
    accumulating: bool

    @property
    def model_states(self) -> int:
        """Parameters, gradients and moments, with the bf16 copies gathered in flight (as
        DeepSpeed's estimators count them)."""
        return self.kept + self.grads + self.step_grads + self.gathered

    @property
    def between_steps(self) -> dict[str, int]:
        """What stays on the GPU between optimizer steps (gradients are freed by the step)."""
        return {"model states": self.kept, "reduce bucket": self.bucket * self.bucket_kept,
                "reference model": self.reference}

    @property
    def phases(self) -> dict[str, dict[str, int]]:
        """Each phase of an optimizer step, item by item."""
        grads = self.grads if self.accumulating else 0  # else made during the backward
        return {
            "forward/backward": {
                "model states": self.kept + grads, "gathered bf16 copies": self.gathered,
                "reduce bucket": self.bucket, "activations": self.activations,
                "log-prob chunk": self.logprob_chunk, "reference model": self.reference},
            "end of backward": {
                "model states": self.kept + self.grads, "reduce bucket": self.bucket,
                "root gradients, reduced": self.root_reduce, "reference model": self.reference},
            "optimizer step": {
                "model states": self.kept + self.grads + self.step_grads,
                "AdamW step temporary": self.step_temp,
                "reduce bucket": self.bucket * self.bucket_kept,
                "reference model": self.reference},
        }

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: sum(self.phases[name].values()))

    @property
    def peak(self) -> int:
        return sum(self.phases[self.peak_phase].values())


def rows_per_chunk(vocab: int) -> int:
    from drgrpo.algorithm import _rows_per_chunk

    return _rows_per_chunk(vocab)


def activation_bytes(shape: Shape, run: Learner) -> int:
    """Saved for backward at the start of the backward pass (its peak)."""
    h, b = shape.hidden, run.compute_bytes
    norm = 4 * h + 2 * b * h  # float32 input, normalised value and weighted output
    layer = 2 * norm + 3 * b * h + 2 * b * shape.kv_width + 4 * b * shape.intermediate
    outside = norm + b * h    # the final norm and the head's input rows
    if run.checkpointing:
        per_token = shape.layers * b * h + layer + outside
    else:
        per_token = shape.layers * layer + outside
    return run.tokens * per_token


def learner_memory(shape: Shape, run: Learner) -> LearnerMemory:
    P, N, b = shape.params, run.world, run.compute_bytes
    mixed = b != 4  # float32 master weights and gradients besides the compute copies
    bucket, bucket_kept, root_reduce, step_grads, gathered = 0, False, 0, 0, 0
    if run.strategy == "fsdp":
        kept = (4 + 8) * P // N
        grads = 4 * P // N  # reduce_dtype float32
        gathered = (b * shape.root_params + b * shape.head_params   # root: params, head grad
                    + 2 * b * shape.layer_params                   # computing + prefetched
                    + (b + 4) * shape.layer_params)                # a layer's grad + fp32 copy
        root_reduce = (b + 4) * shape.root_params
        # Sharding copies a group at a time and frees its float32 original: the largest
        # group, the root, is the peak's extra (measured on a CPU with torch's profiler).
        startup = 4 * P + 4 * shape.root_params // N
    else:
        stage = run.zero_stage
        master = 4 * P // N if mixed else 0
        params = b * P if stage < 3 else b * P // N
        kept = params + master + 8 * P // N
        grads = b * P if stage == 1 else b * P // N  # stage 3: grad_partitions_flat_buffer
        step_grads = (4 * P // N if mixed else 0) + (b * P // N if stage == 1 else 0)
        if stage == 3:
            kept, grads = kept + grads, 0  # allocated at start-up, kept between steps
            gathered = 2 * b * shape.largest_module
        bucket, bucket_kept = b * DEEPSPEED_REDUCE_BUCKET, stage == 3
        # Loading: the float32 model, cast to bf16 a parameter at a time; then the optimizer's
        # set-up holds the flat bf16 and float32 partitions with a float32 gradient of zeros
        # (10 bytes a parameter at 1 learner, stage 2, measured on a CPU with torch's profiler).
        startup = max(4 * P + b * shape.largest_module,
                      kept - 8 * P // N + 4 * P // N + bucket * bucket_kept)
    chunk = min(rows_per_chunk(shape.vocab), max(run.head_rows, 1))
    return LearnerMemory(
        kept=kept, grads=grads, step_grads=step_grads, gathered=gathered, bucket=bucket,
        bucket_kept=bucket_kept, reference=b * P if run.reference else 0,
        activations=activation_bytes(shape, run), logprob_chunk=3 * 4 * chunk * shape.vocab,
        step_temp=4 * P // N, root_reduce=root_reduce, startup=startup,
        accumulating=run.accumulating)
