"""Weight sync: learner rank 0 sends the weights of each update to every generator, through
vLLM's weight-transfer API (`vllm.distributed.weight_transfer`) on every machine.

One protocol, one code path; only the engine differs (`engine_for`):

- `ipc`, vLLM's own, when each generator shares its learner's GPU (`cluster.colocate` on
  CUDA): every learner gathers the full parameters on its GPU and hands the generator on that
  GPU CUDA IPC handles to them, so the weights go from the learner's GPU memory to vLLM's
  without a copy through the host or a socket.
- `broadcast` (actors/broadcast_engine.py), ours, registered with the same factories: a
  torch.distributed broadcast in buckets, NCCL between GPUs of their own and gloo on CPUs.

The learners build the trainer side (actors/weight_transfer.py) with their parameters as the
source and a `GeneratorClient`, through which rank 0's engine drives every generator's:
`init_weight_transfer_engine` once per group, then `start_weight_update`, `update_weights` and
`finish_weight_update` (with the update's number, the version) per sync. A failed call names
each generator's outcome (`GeneratorsFailed`), so the driver restarts the right ones.

This module imports no vLLM: the driver uses it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from actors.failures import Outcome, settle

BROADCAST = "broadcast"


def engine_for(device: str, colocate: bool) -> str:
    """The transfer engine of a run: CUDA IPC between processes sharing a GPU, else ours."""
    return "ipc" if device == "cuda" and colocate else BROADCAST


def group_backend(device: str) -> str:
    """The `broadcast` engine's torch.distributed backend."""
    return "nccl" if device == "cuda" else "gloo"


def generator_env(engine: str) -> None:
    """What a generator's process needs for `engine`, set before its vLLM starts.

    IPC handles hold the storage's Python types, which vLLM's messages to its engine-core
    process carry only by pickle, refused unless this is set. They come from the run's own
    learners, on the same GPU."""
    if engine == "ipc":
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"


class GeneratorsFailed(Exception):
    """A call of the weight-sync protocol failed on some generators: `outcomes[i]` is
    generator i's (actors.failures.Outcome), so the driver can blame the right ones."""

    def __init__(self, verb: str, outcomes: list[Outcome]):
        self.verb, self.outcomes = verb, [Outcome(o.value, o.failure, o.reason) for o in outcomes]
        failed = [f"generator {i}: {o.reason}" for i, o in enumerate(outcomes) if o.failure]
        super().__init__(f"{verb} failed on " + "; ".join(failed))

    def __reduce__(self):
        return type(self), (self.verb, self.outcomes)


class GeneratorClient:
    """vLLM's `VLLMWeightSyncClient` protocol over the run's generator actors: each call goes
    to every generator and waits for all of them, at most `timeout_s`; any failure is a
    `GeneratorsFailed` naming each generator's outcome.

    Generator i's workers sit after those of generators 0..i-1 in a transfer group
    (`rank_offset`), as vLLM numbers the workers of data-parallel replicas. `version` is the
    update being sent: `finish_weight_update` tells the generators which weights they hold."""

    def __init__(self, generators: list, tp: int, timeout_s: float):
        self.generators, self.tp, self.timeout_s = generators, tp, timeout_s
        self.version = 0
        self.results: dict[str, list] = {}  # verb -> each generator's answer to the last call

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        def of(i: int) -> dict:
            if "rank_offset" not in init_info:
                return init_info
            return {**init_info, "rank_offset": init_info["rank_offset"] + i * self.tp}
        self._all("init_weight_transfer_engine", lambda i: (of(i),))

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        self._all("update_weights", lambda i: (update_info,))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update", lambda i: (self.version,))

    def _all(self, verb: str, args: Callable[[int], tuple] = lambda i: ()) -> None:
        refs = [getattr(g, verb).remote(*args(i)) for i, g in enumerate(self.generators)]
        outcomes = settle(refs, self.timeout_s)
        if any(o.failure for o in outcomes):
            raise GeneratorsFailed(verb, outcomes)
        self.results[verb] = [o.value for o in outcomes]
