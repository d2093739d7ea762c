"""Actor-level recovery: a generator or reward worker that dies or hangs is replaced, and the
step goes on with exactly the work that was lost.

The verbs (used by launch/cluster.py; the training loop never sees them):

- `settle(refs, timeout_s)`: every call's outcome, waited for together up to a deadline,
  without stopping at the first failure (a broadcast's other members fail *because* one
  died: the one to blame is the one that died or never answered).
- `restart_generator(cluster, i, reason)`: kill what is left of generator i, start a new
  one on the same placement-group bundle with the same seed, rebuild the weight-sync group
  with every member (a torch.distributed group cannot replace one member), and send the
  current weights. The caller then re-runs the lost prompts with their own seeds.
- `FaultLog` (actors/fault_log.py): what failed, why, and how long recovery took, and the
  limit (`cluster.max_actor_restarts` per actor) past which the run stops with one line.

A learner that fails is not recovered here: its state is gone, and the run-level restart
from the latest checkpoint takes over (`actors.failures.ActorFailure` is raised as before).
"""

from __future__ import annotations

from collections.abc import Sequence

from actors.failures import ActorFailure, Outcome
from actors.weight_sync import GeneratorsFailed


def culprits(outcomes: Sequence[Outcome], names: Sequence[str]) -> list[int]:
    """Of one collective's members, the generators to restart (indices into `names`), or
    `ActorFailure` for a learner to blame. Blamed first: members that died or never answered
    (the others' errors follow from theirs), generators before learners (a learner blocked in
    a broadcast is late because a generator is gone); failing that, the first member that
    raised, which is not restarted: the same work would raise the same error again."""
    def failed(kinds):
        return [k for k, o in enumerate(outcomes) if o.failure in kinds]

    generators = [k for k in failed(("died", "late")) if names[k].startswith("generator")]
    if generators:
        return generators
    for k in failed(("died", "late")) + failed(("raised",)):
        raise ActorFailure(names[k], outcomes[k].reason, lost=outcomes[k].failure != "raised")
    return []


def sync_culprits(outcomes: Sequence[Outcome], learner_names: Sequence[str],
                  generators: int) -> list[int]:
    """Of a weight-sync call made on every learner, the generators to restart (their
    indices), or `ActorFailure` for the one to blame, by `culprits`' rule. Learner rank 0
    drives the generators (actors/weight_sync.py): when its call failed because theirs did
    (`GeneratorsFailed`), their outcomes stand in for its own."""
    learners, members = list(outcomes), [Outcome() for _ in range(generators)]
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome.cause, GeneratorsFailed):
            learners[k], members = Outcome(), outcome.cause.outcomes
    names = [*learner_names, *(f"generator {i}" for i in range(generators))]
    return [k - len(learners) for k in culprits(learners + members, names)]


def restartable(outcome: Outcome) -> bool:
    """A failed call worth a restart: its actor died or hung. One that raised would raise
    again on the same prompts with the same seeds."""
    return outcome.failure in ("died", "late")


def restart_generator(cluster, i: int, reason: str, then: str = "",
                      send_weights: bool = True) -> None:
    """Replace generator i (see the module's docstring). `send_weights`: give it the last
    weights sent now (else the caller's weight sync, redone, does); `then` says what the
    caller does next, for the log line."""
    name = f"generator {i}"
    started = cluster.faults.begin(name, reason)
    cluster.replace(i)
    if send_weights:
        cluster.resend_weights()
    cluster.faults.record(name, reason, f"restarted on bundle {i}{then}", started)
